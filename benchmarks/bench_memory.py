"""Measured peak tensor memory of real training steps against the profiler's prediction.

Run from the repository root::

    python benchmarks/bench_memory.py                          # resnet18, resnet50 at 64x64; batch 16, 32; sgd, adam
    python benchmarks/bench_memory.py --specs resnet18 --batches 8 --optimizers lars --size 96

For every spec, batch, optimizer and method (SimCLR, GIM, LoCo) it trains ``--steps`` steps of
the config with the project's own single-process runner (synthetic images, CPU) and measures each
step's peak of tensor memory with archspec.train.measure (a dispatch-mode allocation tracker:
every storage an operator creates, until it is freed; weights and optimizer state held before
the step included), and puts the last (steady-state) step beside the prediction of
``archspec profile SPEC --batch B --size S --optimizer O`` (training_memory.methods.*.total), which
runs the same step on meta tensors (docs/profile.md). Then, with ``--ranks SPEC``, the same for
every rank of ``--processes stage`` (sync and pipelined; each rank tracks its own tensors when
$ARCHSPEC_MEASURE_MEMORY=1) against archspec.profiling.rank_memory. Its last line: ``memory prediction error max X.X% (simclr a.a%, gim b.b%, loco c.c%)``, the
largest |predicted / measured - 1| over the configurations and ranks, per method.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("simclr", "gim", "loco")


def config(spec: str, method: str, size: int, batch: int, optimizer: str, threads: int):
    from archspec.train.config import loads_config
    import yaml

    data = {"spec": spec, "method": method,
            "data": {"kind": "synthetic", "size": size, "channels": 3, "num_samples": 4 * batch + 8},
            "batch": batch, "epochs": 1, "optimizer": {"name": optimizer, "lr": 1e-3, "lr_scaling": "none"},
            "device": "cpu", "threads": threads, "checkpoint_every": 10**6, "tensorboard": False}
    return loads_config(yaml.safe_dump(data), "<bench_memory>")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="resnet18,resnet50")
    parser.add_argument("--size", type=int, default=64, help="input side (the decoders need 2x2 at the last stage)")
    parser.add_argument("--batches", default="16,32")
    parser.add_argument("--optimizers", default="sgd,adam")
    parser.add_argument("--steps", type=int, default=3, help="steps per run; the last is compared")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ranks", default="resnet18", help="also one process per local stage on this spec, "
                        "every rank measured ('' to skip)")
    args = parser.parse_args(argv)

    from archspec.profiling.profiler import profile
    from archspec.train.config import load_training_spec
    from archspec.train.measure import measure_step_peaks

    errors = {m: 0.0 for m in METHODS}
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    print(f"{'spec':<10} {'batch':>5} {'opt':<5} {'method':<7} {'measured MiB':>12} {'predicted':>10} {'ratio':>7}"
          f" {'peak at':<22}")
    for spec in args.specs.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for optimizer in args.optimizers.split(","):
                for method in METHODS:
                    cfg = config(spec, method, args.size, batch, optimizer, args.threads)
                    out = tmp / f"{spec}_{batch}_{optimizer}_{method}"
                    measured = measure_step_peaks(cfg, out, steps=args.steps)[-1]
                    o = cfg.optimizer
                    prof = profile(load_training_spec(cfg), batch=batch, optimizer=optimizer,
                                   decoder=cfg.decoders.decoder_config(), weight_decay=o.weight_decay,
                                   exclude_bn_bias=o.exclude_bn_bias).to_dict()
                    plan = prof["training_memory"]["methods"][method]
                    ratio = plan["total"] / measured
                    errors[method] = max(errors[method], abs(ratio - 1))
                    print(f"{spec:<10} {batch:>5} {optimizer:<5} {method:<7} {measured / 2**20:>12.1f} "
                          f"{plan['total'] / 2**20:>10.1f} {ratio:>7.3f} {plan['peak_at']:<22}", flush=True)
    if args.ranks:  # one process per local stage: every rank's measured peak against rank_peaks
        import os

        from archspec.profiling.rank_memory import rank_peaks
        from archspec.train.distributed import train_distributed

        os.environ["ARCHSPEC_MEASURE_MEMORY"] = "1"  # the ranks track their own tensors
        batch, optimizer = int(args.batches.split(",")[0]), args.optimizers.split(",")[0]
        print(f"\n--processes stage, {args.ranks}, batch {batch}, {optimizer}, 1 thread per rank: peak per rank")
        print(f"{'method':<7} {'schedule':<9} {'rank':<12} {'measured MiB':>12} {'predicted':>10} {'ratio':>7}")
        for method in METHODS:
            for schedule in ("sync", "pipelined") if method != "simclr" else ("sync",):
                cfg = dataclasses.replace(config(args.ranks, method, args.size, batch, optimizer, 1), pipeline=schedule)
                result = train_distributed(cfg, tmp / f"ranks_{method}_{schedule}", max_steps=args.steps,
                                           progress=False)
                o = cfg.optimizer
                predicted = rank_peaks(load_training_spec(cfg), method, batch, optimizer=optimizer,
                                       decoder=cfg.decoders.decoder_config(), weight_decay=o.weight_decay,
                                       exclude_bn_bias=o.exclude_bn_bias, schedule=schedule)
                for label, measured in result.summary["tensor_peak_bytes"].items():
                    ratio = predicted[label].total / measured
                    errors[method] = max(errors[method], abs(ratio - 1))
                    print(f"{method:<7} {schedule:<9} {label:<12} {measured / 2**20:>12.1f} "
                          f"{predicted[label].total / 2**20:>10.1f} {ratio:>7.3f}", flush=True)
    worst = max(errors.values())
    print(f"memory prediction error max {100 * worst:.1f}% (simclr {100 * errors['simclr']:.1f}%, "
          f"gim {100 * errors['gim']:.1f}%, loco {100 * errors['loco']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
