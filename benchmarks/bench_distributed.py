"""Time a training step with one process and with one process per local stage, and the memory of each process.

Run from the repository root::

    python benchmarks/bench_distributed.py                                  # resnet18, 64x64, batch 32
    python benchmarks/bench_distributed.py --spec tiny_digits --batch 128 --methods loco --steps 30
    python benchmarks/bench_distributed.py --threads 2                     # the single process on 2 threads

What it does: for each method it trains the same config (the spec at ``--size``, synthetic
images, Adam, ``--steps`` steps) with ``archspec.train.loop.train`` (one process) and with
``archspec.train.distributed.train_distributed`` (one process per local stage, spawned), each
in a fresh subprocess, alternating ``--repeat`` times. The step time is the median ``step_s``
of the run's log.jsonl after ``--warmup`` steps: from the batch in memory to the end of the
step (for the distributed runner, to the all-reduce that ends the step on every rank), so
process start-up is not in it (the wall time with start-up is printed too). Memory: the peak
resident set (VmHWM) of the single process and of every rank, beside an idle process that
imported the same modules, and the profiler's estimate (docs/profile.md) of a process's peak of
tensor memory (archspec.profiling.rank_memory: its own step run on meta tensors).

What the ratio can show on this project's 2-core CPU machine, and what it cannot:

- This is the sync schedule (``pipeline: sync``, the default): within a step, rank k+1 needs
  rank k's output, and (SimCLR) rank k needs rank k+1's gradient, so the stages run one after
  another as in one process. The runner sends a stage's output before its local backward, so
  under GIM and LoCo rank k's decoder and backward can overlap rank k+1's forward, and every
  step ends with an all-reduce, so steps never overlap. With 4 ranks on 2 cores, at most 2 run
  at once. The pipelined schedule, where every rank works at once, is measured by
  ``benchmarks/bench_pipeline.py``.
- So the ratio measures the cost of the split (sending activations and gradients through
  gloo on localhost, 4 processes sharing 2 cores, a barrier per step) minus what the GIM/LoCo
  overlap wins with the second core. It is not the speed of a model-parallel pipeline on N
  devices, which needs micro-batches (GPipe-style) to keep every device busy; nor does a
  single-process run on one thread compare with N processes on two cores on equal terms
  (``--threads 2`` gives the single process both cores).
- The point of one process per stage is memory: each rank holds only its stage's weights,
  gradients, optimizer state and activations (and, under LoCo, not the neighbour stage that
  a single LoCo process keeps alive). The peak RSS per rank shows that, on top of the ~0.3 GB
  that importing torch costs every process; rank 0 also briefly holds the whole model (it
  initialises it and assembles the checkpoints).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from archspec.train.distributed import PRELOAD, peak_rss_bytes
def main():
    mode, config, out, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    if mode == "idle":
        import importlib
        for name in PRELOAD:
            importlib.import_module(name)
        print(json.dumps({"peak_rss": peak_rss_bytes()}))
        return
    from archspec.train.config import load_config
    from archspec.train.distributed import train_distributed
    from archspec.train.loop import train
    cfg = load_config(config)
    t0 = time.perf_counter()
    before = []  # the peak after the last step, before the final checkpoint
    if mode == "one":
        result = train(cfg, out, max_steps=steps, progress=False,
                       on_step=lambda step, _: step == steps and before.append(peak_rss_bytes()))
    else:
        result = train_distributed(cfg, out, max_steps=steps, progress=False)
    print(json.dumps({"wall": time.perf_counter() - t0, "peak_rss": peak_rss_bytes(),
                      "peak_rss_training": before[0] if before else None, "summary": result.summary}))
if __name__ == "__main__":
    main()
"""


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def estimate_per_rank(spec, method: str, batch: int, decoder) -> tuple[list[str], list[int], int]:
    """The profiler's peak per rank (archspec.profiling.rank_memory: each rank's own sync step on meta
    tensors, Adam) and its whole-network peak for one process (docs/profile.md)."""
    from archspec.profiling.profiler import profile
    from archspec.profiling.rank_memory import rank_peaks

    ranks = rank_peaks(spec, method, batch, optimizer="adam", decoder=decoder)
    whole = profile(spec, batch=batch, optimizer="adam", decoder=decoder).to_dict()
    return list(ranks), [p.total for p in ranks.values()], whole["training_memory"]["methods"][method]["total"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="input side (0: the spec's)")
    parser.add_argument("--batch", type=int, default=32, help="images per step (two views each)")
    parser.add_argument("--methods", default="simclr,gim,loco")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs of each runner")
    parser.add_argument("--threads", type=int, default=1, help="threads of the single process")
    parser.add_argument("--rank-threads", type=int, default=1, help="threads of each rank")
    args = parser.parse_args(argv)

    import yaml

    from archspec.nn.decoders import DecoderConfig
    from archspec.spec import load_spec
    from archspec.spec.resize import at_input_size

    spec = load_spec(args.spec)
    if args.size:
        spec = at_input_size(spec, (args.size, args.size))
    size = spec.input_size[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    worker = tmp / "worker.py"
    worker.write_text(WORKER)

    def run(mode, config=None, out=None, steps=0):
        done = subprocess.run([sys.executable, str(worker), str(ROOT), mode, str(config), str(out), str(steps)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{mode} run failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    idle = run("idle")["peak_rss"]
    images = args.batch * (args.steps + 1)
    print(f"{spec.name} at {size}x{size}, batch {args.batch} (x2 views), Adam, {args.steps} steps "
          f"(median of steps {args.warmup + 1}-{args.steps}, {args.repeat} alternating runs each); single process "
          f"{args.threads} thread(s), each rank {args.rank_threads}")
    print(f"an idle process that imported torch and archspec's runner: peak RSS {mib(idle)} MiB")
    for method in args.methods.split(","):
        cfgs = {}
        for mode, threads in (("one", args.threads), ("stage", args.rank_threads)):
            data = {"spec": args.spec, "method": method,
                    "data": {"kind": "synthetic", "size": size, "channels": spec.input_channels,
                             "num_samples": int(images / 0.8) + 2},
                    "batch": args.batch, "epochs": 1, "optimizer": {"name": "adam", "lr": 1e-3, "lr_scaling": "none"},
                    "schedule": {"warmup_steps": 0}, "device": "cpu", "threads": threads,
                    "checkpoint_every": 10**6, "tensorboard": False}
            cfgs[mode] = tmp / f"{method}_{mode}.yaml"
            cfgs[mode].write_text(yaml.safe_dump(data, sort_keys=False))
        steps = {"one": [], "stage": []}
        walls = {"one": [], "stage": []}
        rss = {"one": [], "stage": []}
        for rep in range(args.repeat):
            for mode in (("one", "stage") if rep % 2 == 0 else ("stage", "one")):
                out = tmp / f"{method}_{mode}_{rep}"
                result = run(mode, cfgs[mode], out, args.steps)
                log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
                steps[mode] += [r["step_s"] for r in log[args.warmup:]]
                walls[mode].append(result["wall"])
                if mode == "one":
                    rss[mode].append((result["peak_rss_training"], result["peak_rss"]))
                else:
                    summary = result["summary"]
                    rss[mode].append({k: (summary["max_rss_bytes_training"][k], v)
                                      for k, v in summary["max_rss_bytes"].items()})
        one, stage = statistics.median(steps["one"]), statistics.median(steps["stage"])
        labels, estimate, whole = estimate_per_rank(spec, method, args.batch, DecoderConfig())
        print(f"\n{method}: step {1e3 * one:.1f} ms in one process, {1e3 * stage:.1f} ms with {len(labels)} processes: "
              f"ratio {stage / one:.2f} (wall with start-up {statistics.median(walls['one']):.1f} s vs "
              f"{statistics.median(walls['stage']):.1f} s)")
        print(f"  {'peak RSS, MiB':<22} {'training':>9} {'above idle':>11} {'estimate':>9} {'+ final checkpoint':>19}")
        rows = [("one process", rss["one"], whole)]
        rows += [(f"rank {k} {label}", [r[label] for r in rss["stage"]], est)
                 for k, (label, est) in enumerate(zip(labels, estimate))]
        for name, values, est in rows:
            training, total = max(v[0] for v in values), max(v[1] for v in values)
            print(f"  {name:<22} {mib(training):>9} {mib(training - idle):>11} {mib(est):>9} {mib(total):>19}")
    print("\nThe ratio is the price of the split on this machine (messages through gloo, processes sharing the "
          "cores, one all-reduce per step) less what overlapping a rank's backward with the next rank's forward "
          "wins under GIM/LoCo; without micro-batches it cannot show a pipeline's speed-up. The point is the "
          "memory per process (docs/training.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
