"""Benchmark: the exact split of a 1,000-block random chain into 16 stages must take < 1 s.

Compared in the same run, on the same chain (time and the objective each reaches, i.e. the
largest stage cost; lower is better):

- ``archspec.design.split.optimal_split``: exact (Nicol's probe search + the least-squares
  tie-break DP), the default of ``archspec split``;
- the textbook O(K n^2) min-max DP (``dp_split``): exact, the baseline for the speed ratio;
- DeepSpeed-style ``partition_balanced``: bisection on a float bound down to eps = 1e-3, then a
  greedy probe (re-implemented here from its description);
- torchgpipe-style ``balance_by_size``/``balance_by_time`` partitioner, the block-partition
  heuristic of Barany and Grinberg ("Block partitions of sequences", 2015) on values
  normalised to [0, 1] (re-implemented here from the paper: start uniform, move one element at a
  time from the neighbour of the lightest block towards it until heaviest <= lightest + 1);
- a uniform split by block count.

    .venv/bin/python benchmarks/bench_split.py            # n = 1000, K = 16
    .venv/bin/python benchmarks/bench_split.py --n 300    # quicker (the O(K n^2) DP dominates)

Exit code 1 if the exact split takes 1 s or more.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from bisect import bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from archspec.design.split import Costs, dp_split, evaluate, min_limit, optimal_split, uniform_cuts  # noqa: E402


def timed(fn, repeat: int = 1):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def deepspeed_style(values: list[int], k: int, eps: float = 1e-3) -> tuple[int, ...]:
    """Bisection on a float bound, then the greedy probe at the bound found; stages may be empty
    at the end (as in DeepSpeed), which evaluate() would refuse, so empty ones are dropped."""
    prefix = [0]
    for v in values:
        prefix.append(prefix[-1] + v)
    n = len(values)

    def probe(bound: float):
        cuts, i = [0], 0
        while i < n and len(cuts) <= k:
            j = bisect_right(prefix, prefix[i] + bound, i, n + 1) - 1
            if j == i:
                return None
            cuts.append(j)
            i = j
        return cuts if i == n else None

    lower, upper = prefix[-1] / k, float(prefix[-1])
    while upper > lower + eps:
        mid = lower + (upper - lower) / 2
        if probe(mid) is not None:
            upper = mid
        else:
            lower = mid + eps
    return tuple(probe(upper))


def block_partition(values: list[int], k: int) -> tuple[int, ...]:
    """Barany-Grinberg block partition on values normalised to [0, 1] (torchgpipe's balancer)."""
    n = len(values)
    low, span = min(values), max(values) - min(values)
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + ((v - low) / span if span else 0.0))
    ends = [n // k * (s + 1) for s in range(k - 1)] + [n]  # end of each block

    def size(s: int) -> float:
        return prefix[ends[s]] - prefix[ends[s - 1] if s else 0]

    while True:
        heaviest = max(range(k), key=lambda s: (size(s), s))
        while True:
            lightest = min(range(k), key=lambda s: (size(s), s))
            if size(heaviest) <= size(lightest) + 1:
                return (0, *ends)
            if heaviest < lightest:  # the block before the lightest gives it its last element
                h = lightest - 1
                if ends[h] - (ends[h - 1] if h else 0) <= 1:
                    return (0, *ends)
                ends[h] -= 1
            else:  # the block after the lightest gives it its first element
                h = lightest + 1
                if ends[h] - ends[lightest] <= 1:
                    return (0, *ends)
                ends[lightest] += 1
            if h == heaviest:
                break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n, k = args.n, args.k
    rng = random.Random(args.seed)
    # block costs spread like a CNN's: a few heavy blocks among many light ones
    values = [int(rng.lognormvariate(0, 1) * 1e6) + 1 for _ in range(n)]
    costs = Costs(values)
    total = sum(values)

    best, t_exact = timed(lambda: optimal_split(costs, k), repeat=5)
    print(f"chain: {n} random blocks (log-normal costs, seed {args.seed}), K = {k}; "
          f"lower bound total/K = {total / k:,.0f}")
    rows = [("archspec optimal_split (exact)", t_exact, best.bottleneck)]
    naive, t_naive = timed(lambda: dp_split(costs, k))
    rows.append(("O(K n^2) min-max DP (exact)", t_naive, naive.bottleneck))
    ds, t_ds = timed(lambda: deepspeed_style(values, k), repeat=3)
    rows.append((f"DeepSpeed-style bisection ({len(ds) - 1} stages)", t_ds, evaluate(costs, ds).bottleneck))
    bg, t_bg = timed(lambda: block_partition(values, k), repeat=3)
    rows.append(("torchgpipe-style block partition", t_bg, evaluate(costs, bg).bottleneck))
    rows.append(("uniform by block count", 0.0, evaluate(costs, uniform_cuts(n, k)).bottleneck))

    print(f"{'method':<42} {'time':>10} {'vs exact':>9} {'max stage':>14} {'/ optimum':>10}")
    for name, t, obj in rows:
        ratio = f"{t / t_exact:8.1f}x" if t else "        -"
        print(f"{name:<42} {t * 1e3:>7.1f} ms {ratio} {obj:>14,} {obj / best.bottleneck:>10.4f}")
    assert naive.bottleneck == best.bottleneck, "the two exact methods disagree"

    # the other objectives of archspec split, on the same machinery
    memory = [int(rng.lognormvariate(0, 1) * 1e8) + 1 for _ in range(n)]
    _, t_mix = timed(lambda: optimal_split(Costs.normalised(values, memory), k), repeat=3)
    cap = min_limit(memory, k) * 21 // 20  # 5% above the least cap any split meets
    _, t_cap = timed(lambda: optimal_split(costs, k, limit_values=memory, limit=cap), repeat=3)
    heavy = list(values)
    heavy[n // 2] = total // 3  # one block is a third of the chain: loose bound, wide tie-break windows
    _, t_heavy = timed(lambda: optimal_split(heavy, k), repeat=3)
    print(f"exact, other objectives: mix (max of normalised shares) {t_mix * 1e3:.1f} ms; with a memory cap "
          f"{t_cap * 1e3:.1f} ms; one block a third of the total {t_heavy * 1e3:.1f} ms")
    ok = max(t_exact, t_mix, t_cap, t_heavy) < 1.0
    print(f"requirement: exact split of {n} blocks into {k} stages < 1 s: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
