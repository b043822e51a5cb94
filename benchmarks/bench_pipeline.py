"""Images/s of GIM and LoCo with one process against one process per local stage, sync and pipelined.

Run from the repository root::

    python benchmarks/bench_pipeline.py                     # resnet18 in 2 local stages, 64x64, batch 16
    python benchmarks/bench_pipeline.py --quick             # a smoke test: few steps, one repeat
    python benchmarks/bench_pipeline.py --methods gim --steps 40 --repeat 5

What it does: it trains the same config (the spec at ``--size``, synthetic images, SGD,
``--steps`` steps) in these ways, each in a fresh subprocess, every mode once per repeat in an
order that alternates between repeats (all methods and both splits inside one repeat, so a
change in the machine's load hits every mode alike):

- (r) reference: one process, 1 thread (``archspec.train.loop.train``, ``threads: 1``): the
  one worker that the model-parallel bound 1/max_share is taken against;
- (a) one process, 2 threads (``train``, ``threads: 2``): one process given both cores;
- (b) 2 ranks x 1 thread, ``pipeline: sync`` (``archspec.train.distributed.train_distributed``):
  one batch in flight; under GIM and LoCo only a rank's decoder and backward overlap the next
  rank's forward;
- (c) 2 ranks x 1 thread, ``pipeline: pipelined``: rank 0 works on batch t while rank 1 works on
  batch t-1 (GIM: exactly the sync arithmetic; LoCo: rank 0's update uses rank 1's gradient of
  the previous batch, docs/training.md).

for two splits of the same network: the balanced split (``--spec``, close to 50/50 in FLOPs)
with (r), (a), (b), (c), and a deliberately unbalanced one (``--unbalanced``, ~77% of the FLOPs
in the first local stage) with (r), (a), (c).

Throughput: images/s = batch / median ``step_s`` of the run's log.jsonl over the steps after
``--warmup`` (pooled over the repeats): ``step_s`` leaves data loading out (the augmentations
are in) and, pipelined, is the time between rank 0's batches, which in steady state is the
pipeline's period. Also printed, as a check on it: the wall-clock throughput, from the times
at which each step's record appears in log.jsonl (this script polls the file): batch x steps /
seconds between the record after the warm-up and the last record before the cool-down (the
last ``COOLDOWN`` records, which a pipelined run writes in one burst as it drains); it includes
data loading and logging. Median over the repeats.

What the numbers can show on a 2-core CPU machine: with one worker per local stage and one
core per worker, a pipeline runs no faster than its slowest stage, so (c)/(r) is at most the
whole step's time over the slowest stage's. 1/max_share is that bound with FLOPs for time
(``archspec balance``: forward FLOPs of conv, fc, bn and pool per local stage, ``max_share`` the
largest stage's fraction). The FLOP share leaves out the decoders (the second stage's is the
larger), the optimizer step (the second stage holds most of ResNet-18's parameters: 94% balanced, 75%
unbalanced), the
augmentations (rank 0) and the messages, and small maps run at a lower FLOP rate on a CPU, so
the measured (c)/(r) can land on either side of 1/max_share; the unbalanced split's should sit
near its much smaller bound (1.29x against 1.83x). (c)/(a) is the question a user of two cores
asks, "one process on both cores, or a pipeline?": (a) gains from intra-op threads what the
pipeline gains from the split, so (c)/(a) is below (c)/(r). A busy machine spoils the ratios,
the 2-thread runs most (a 2-thread process slows down many times when another process holds
a core); the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPECS = ROOT / "benchmarks" / "specs"
COOLDOWN = 3  # last records left out of the wall-clock throughput (a pipelined run drains in a burst)

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
def main():
    mode, config, out, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    from archspec.train.config import load_config
    from archspec.train.distributed import train_distributed
    from archspec.train.loop import train
    cfg = load_config(config)
    t0 = time.perf_counter()
    run = train if mode in ("r", "a") else train_distributed
    result = run(cfg, out, max_steps=steps, progress=False)
    print(json.dumps({"wall": time.perf_counter() - t0, "status": result.summary.get("status")}))
if __name__ == "__main__":
    main()
"""

# mode: (what, runner threads, pipeline key or None)
MODES = {
    "r": ("one process, 1 thread", 1, None),
    "a": ("one process, 2 threads", 2, None),
    "b": ("2 ranks x 1 thread, sync", 1, "sync"),
    "c": ("2 ranks x 1 thread, pipelined", 1, "pipelined"),
}


def flop_shares(spec_path: str, size: int, batch: int) -> tuple[list[str], list[float]]:
    """Labels and FLOP shares (fractions) of the local stages, as ``archspec balance`` computes them."""
    from archspec.profiling.profiler import profile
    from archspec.profiling.table6 import TABLE6_OPS
    from archspec.report.balance import balance_from_profile
    from archspec.spec import load_spec

    doc = balance_from_profile(profile(load_spec(spec_path), batch=batch, size=(size, size), ops=TABLE6_OPS).to_dict())
    return [s["name"] for s in doc["stages"]], [s["flops_share"] / 100 for s in doc["stages"]]


def run_logged(cmd: list[str], log: Path, poll_s: float = 0.01) -> tuple[dict, list[float]]:
    """Run ``cmd``; return its last stdout line (JSON) and, per record of ``log``, the
    perf_counter time at which this process first saw it."""
    seen: list[float] = []
    done = 0  # bytes of complete lines read
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        while True:
            finished = proc.poll() is not None
            try:
                with open(log, "rb") as f:
                    f.seek(done)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            now = time.perf_counter()
            complete = chunk[:chunk.rfind(b"\n") + 1]
            seen += [now] * complete.count(b"\n")
            done += len(complete)
            if finished:
                break
            time.sleep(poll_s)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd[2:])}):\n{stdout}\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1]), seen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(SPECS / "resnet18_split2.yaml"),
                        help="the balanced 2-local-stage spec (name or path)")
    parser.add_argument("--unbalanced", default=str(SPECS / "resnet18_split2_unbalanced.yaml"),
                        help="the unbalanced split of the same network ('' to skip it)")
    parser.add_argument("--size", type=int, default=64, help="input side")
    parser.add_argument("--batch", type=int, default=16, help="images per step (two views each)")
    parser.add_argument("--methods", default="gim,loco")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each mode")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "lars"])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 8 steps, warm-up 3, one repeat")
    parser.add_argument("--raw", metavar="FILE", help="also write every run's step_s and record times (JSON)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeat = 8, 3, 1
    if args.steps - args.warmup < 2:
        parser.error("--steps must exceed --warmup by at least 2")

    import yaml

    from archspec.spec import load_spec

    methods = args.methods.split(",")
    if "simclr" in methods:
        parser.error("simclr cannot be pipelined (its one loss needs every stage's gradient within the step)")
    splits = {"balanced": (args.spec, "rabc")}
    if args.unbalanced:
        splits["unbalanced"] = (args.unbalanced, "rac")
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    worker = tmp / "worker.py"
    worker.write_text(WORKER)

    shares, cfgs = {}, {}
    for split, (spec_name, modes) in splits.items():
        path = Path(spec_name)
        spec_ref = str(path.resolve()) if path.suffix in (".yaml", ".yml") else spec_name  # configs resolve paths
        spec = load_spec(spec_ref)
        labels, share = flop_shares(spec_ref, args.size, args.batch)
        if len(labels) != 2:
            raise SystemExit(f"{spec_name}: {len(labels)} local stages; this benchmark wants 2")
        shares[split] = (spec.name, labels, share)
        for method in methods:
            for mode in modes:
                _, threads, pipeline = MODES[mode]
                data = {"spec": spec_ref, "method": method,
                        "data": {"kind": "synthetic", "size": args.size, "channels": spec.input_channels,
                                 "num_samples": int(args.batch * (args.steps + 1) / 0.8) + 2},
                        "batch": args.batch, "epochs": 1,
                        "optimizer": {"name": args.optimizer, "lr": 0.01 if args.optimizer != "lars" else 0.3,
                                      "lr_scaling": "none"},
                        "schedule": {"warmup_steps": 0}, "device": "cpu", "threads": threads,
                        "checkpoint_every": 10**6, "tensorboard": False}
                if pipeline is not None:
                    data["pipeline"] = pipeline
                cfgs[split, method, mode] = tmp / f"{split}_{method}_{mode}.yaml"
                cfgs[split, method, mode].write_text(yaml.safe_dump(data, sort_keys=False))

    print(f"{args.size}x{args.size}, batch {args.batch} (x2 views), {args.optimizer}, {args.steps} steps "
          f"(median step of steps {args.warmup + 1}-{args.steps}, {args.repeat} alternating runs of each mode)")
    for split, (name, labels, share) in shares.items():
        print(f"{split} split {name}: FLOP shares " + ", ".join(f"{l} {100 * s:.2f}%" for l, s in zip(labels, share))
              + f"; slowest stage {100 * max(share):.2f}%, ideal bound 1/max_share {1 / max(share):.2f}x")

    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f}" + ("  (the machine is busy: 2-thread runs suffer most, the ratios "
                                                 "will not mean much)" if load > 0.5 else ""))
    steps = {key: [] for key in cfgs}
    walls = {key: [] for key in cfgs}
    raw = []
    keys = list(cfgs)
    t_start = time.perf_counter()
    for rep in range(args.repeat):
        for key in (keys if rep % 2 == 0 else keys[::-1]):
            out = tmp / f"{'_'.join(key)}_{rep}"
            cmd = [sys.executable, str(worker), str(ROOT), key[2], str(cfgs[key]), str(out), str(args.steps)]
            _, seen = run_logged(cmd, out / "log.jsonl")
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            if len(log) != args.steps or len(seen) != args.steps:
                raise SystemExit(f"{key}: {len(log)} records in {out / 'log.jsonl'}, {len(seen)} seen, "
                                 f"expected {args.steps}")
            steps[key] += [r["step_s"] for r in log[args.warmup:]]
            shutil.rmtree(out)  # a run's final checkpoint is ~95 MB
            raw.append({"split": key[0], "method": key[1], "mode": key[2], "repeat": rep,
                        "step_s": [r["step_s"] for r in log], "seen_s": [t - seen[0] for t in seen]})
            last = max(args.warmup + 1, args.steps - 1 - COOLDOWN)  # indices of seen: record i = step i + 1
            walls[key].append(args.batch * (last - (args.warmup - 1)) / (seen[last] - seen[args.warmup - 1]))
    elapsed = time.perf_counter() - t_start
    shutil.rmtree(tmp)
    if args.raw:
        Path(args.raw).write_text(json.dumps({"args": vars(args), "runs": raw}, indent=1))

    speed = {key: args.batch / statistics.median(v) for key, v in steps.items()}
    wall = {key: statistics.median(v) for key, v in walls.items()}
    for split, (spec_name, modes) in splits.items():
        name, labels, share = shares[split]
        bound = 1 / max(share)
        print(f"\n{split} split ({name}; slowest local stage {100 * max(share):.2f}% of the FLOPs, "
              f"ideal bound 1/max_share {bound:.2f}x over one worker)")
        print(f"  {'mode':<36} {'method':<6} {'step ms':>8} {'images/s':>9} {'wall img/s':>11} "
              f"{'vs (r)':>7} {'vs (a)':>7}")
        for method in methods:
            for mode in modes:
                key = (split, method, mode)
                print(f"  ({mode}) {MODES[mode][0]:<32} {method:<6} {1e3 * args.batch / speed[key]:>8.1f} "
                      f"{speed[key]:>9.1f} {wall[key]:>11.1f} {speed[key] / speed[split, method, 'r']:>6.2f}x "
                      f"{speed[key] / speed[split, method, 'a']:>6.2f}x")
        for method in methods:
            c, r, a = (speed[split, method, m] for m in "cra")
            print(f"  {method}: pipelined / one process 1 thread {c / r:.2f}x (bound {bound:.2f}x, "
                  f"{100 * (c / r) / bound:.0f}% of it); pipelined / one process 2 threads {c / a:.2f}x")
    print(f"\n{len(cfgs) * args.repeat} runs in {elapsed:.0f} s; load average after: {os.getloadavg()[0]:.2f}")
    ratios = {m: speed["balanced", m, "c"] / speed["balanced", m, "a"] for m in methods}
    print("pipelined speedup " + " ".join(f"{m} {ratios[m]:.2f}x" for m in methods) + " vs one process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
