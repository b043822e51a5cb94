"""Benchmark: every command's cost is linear in the expanded chain of blocks (issue 15).

A spec of N blocks: tiny_digits with its res2 group repeated N - 4 times. For each N it times,
in one process (wall clock, best of --repeat):

- ``load``: reading and validating the YAML (archspec.spec.loads: shapes of every block);
- ``split``: what ``archspec split SPEC -k 4`` computes (the chain, FLOPs of conv and fc per
  block, the exact 4-stage split);
- ``profile``: ``archspec.profile(spec)`` (traced forward + backward on meta tensors, saved bytes
  and the three methods' memory plans: four passes over the network), and as its peer, fvcore's
  ``FlopCountAnalysis`` of the same compiled module (forward FLOPs only, batch 1, real tensors);
- per block: each time divided by N, which stays flat when the cost is linear.

N above ``archspec.limits.MAX_BLOCKS`` (the loader's bound, 2,000) is measured by raising the
bound in this process only; profile is skipped above --profile-max (default 2,000: at about
5.7 ms a block, 100,000 blocks take about 10 minutes and 10 GB), fvcore above --peer-max.

    .venv/bin/python benchmarks/bench_limits.py                       # N = 10, 1,000, 2,000, 10,000, 100,000
    .venv/bin/python benchmarks/bench_limits.py --sizes 10,1000 --profile-max 1000

Exit code 1 if split's time per block at the largest N is more than 3 x that at 1,000 blocks
(not linear), or split of N = 100,000 blocks takes 30 s or more.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archspec import limits  # noqa: E402
from archspec.spec import notation  # noqa: E402


def spec_text(n: int) -> str:
    base = (ROOT / "specs" / "tiny_digits.yaml").read_text()
    assert "] x1" in base
    return base.replace("] x1", f"] x{n - 4}", 1)  # res2's group: the spec has 4 other blocks


def best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,2000,10000,100000")
    parser.add_argument("--profile-max", type=int, default=2000)
    parser.add_argument("--peer-max", type=int, default=10000, help="fvcore only up to this N (it is 2 x slower)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    limits.MAX_BLOCKS = max(limits.MAX_BLOCKS, *sizes)  # this process only: the benchmark measures past the bound
    notation.MAX_INT = max(notation.MAX_INT, *sizes)

    import torch

    import archspec
    from archspec.design import chain as ch
    from archspec.design.split import Costs, optimal_split
    from archspec.nn.compiler import compile_spec
    from archspec.spec.loader import loads

    torch.set_num_threads(1)

    def split(spec):
        chain = ch.build_chain(spec)
        return optimal_split(Costs([b.flops(("conv", "fc")) for b in chain.blocks]), 4)

    def fvcore_flops(spec):
        from fvcore.nn import FlopCountAnalysis

        net = compile_spec(spec, check=False).eval()
        x = torch.zeros(1, spec.input_channels, *spec.input_size)
        analysis = FlopCountAnalysis(net, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return analysis.total()

    print(f"torch {torch.__version__}, 1 thread; times in seconds (best of {args.repeat}), per block in ms")
    print("| blocks | load | split | split / block | profile | profile / block | fvcore (forward) | profile / fvcore |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_block = {}
    for n in sizes:
        t_load, spec = best(lambda: loads(spec_text(n), f"bench_{n}.yaml"), args.repeat)
        t_split, _ = best(lambda: split(spec), args.repeat)
        per_block[n] = t_split / n
        row = [f"{n:,}", f"{t_load:.3f}", f"{t_split:.3f}", f"{1e3 * t_split / n:.3f}"]
        if n <= args.profile_max:
            t_prof, _ = best(lambda: archspec.profile(spec), args.repeat)
            row += [f"{t_prof:.2f}", f"{1e3 * t_prof / n:.2f}"]
            if n <= args.peer_max:
                t_fv, _ = best(lambda: fvcore_flops(spec), args.repeat)
                row += [f"{t_fv:.2f}", f"{t_prof / t_fv:.2f}"]
            else:
                row += ["-", "-"]
        else:
            row += ["-", "-", "-", "-"]
        print("| " + " | ".join(row) + " |", flush=True)
    largest = max(sizes)
    if 1000 in per_block and largest > 1000:
        ratio = per_block[largest] / per_block[1000]
        print(f"split time per block at {largest:,} blocks / at 1,000 blocks: {ratio:.2f}")
        if ratio > 3:
            return 1
    if 100000 in per_block and per_block[100000] * 100000 >= 30:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
