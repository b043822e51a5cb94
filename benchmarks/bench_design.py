"""How fast `archspec design` evaluates and finds designs.

1. Candidates per second: the vectorised evaluator (``archspec.design.evaluate.evaluate`` and
   ``score``, numpy, a whole population at once) against evaluating the same candidates one at a
   time with ``archspec.profiling.analytic.stage_counts`` on their specs (both exact, and equal).
2. Time to find a 6-stage design with every local stage inside 15:20% (FLOPs and memory) under
   the default budgets (4.1 G MACs, 30 M params), for a few seeds; asserted under 60 s.

    .venv/bin/python benchmarks/bench_design.py [--quick]
"""
from __future__ import annotations

import sys
import time

import numpy as np

from archspec.design import search as D
from archspec.design import space as S
from archspec.design.evaluate import evaluate
from archspec.profiling.analytic import stage_counts
from archspec.profiling.memory import local_stages
from archspec.profiling.table6 import TABLE6_OPS


def vectorised_rate(genes: np.ndarray, n: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        D.score(evaluate(genes, n), (15, 20), D.DEFAULT_BUDGET_FLOPS, D.DEFAULT_BUDGET_PARAMS)
        best = min(best, time.perf_counter() - t)
    return len(genes) / best


def analytic_rate(genes: np.ndarray, n: int) -> tuple[float, list]:
    out = []
    t = time.perf_counter()
    for row in genes:
        spec = S.to_spec(row, n)
        counts = stage_counts(spec)
        out.append([sum(counts[x].macs[o] for x in g for o in TABLE6_OPS) for g in local_stages(spec)])
    return len(genes) / (time.perf_counter() - t), out


def main(quick: bool = False) -> None:
    n = 6
    rng = np.random.default_rng(0)
    genes = S.random_designs(rng, 20_000, n)
    fast = vectorised_rate(genes, n)
    sample = genes[: 200 if quick else 1000]
    slow, flops = analytic_rate(sample, n)
    assert np.array_equal(np.array(flops), evaluate(sample, n, TABLE6_OPS).flops), "evaluator and analytic counts differ"
    print(f"vectorised evaluator: {fast:12,.0f} candidates/s  ({len(genes):,} at once, evaluate + score)")
    print(f"analytic stage_counts:{slow:12,.0f} candidates/s  (one at a time, spec built per candidate)")
    print(f"ratio: {fast / slow:,.0f}x")
    assert fast >= 10_000, fast

    seeds = [0] if quick else [0, 1, 2]
    for seed in seeds:
        r = D.search(n, seed=seed, time_limit=60)
        assert r.designs, f"seed {seed}: no design found"
        d = r.designs[0]
        print(f"seed {seed}: first 15:20 design after {r.first_found:.2f} s, search done in {r.seconds:.1f} s "
              f"({r.generations} generations, {r.evaluated:,} designs, {r.rate:,.0f}/s); best: max deviation "
              f"{d.max_deviation:.2f} points, {d.total_macs / 1e9:.2f} G MACs, {d.total_params / 1e6:.1f} M params")
        print("   FLOPs %: " + " ".join(f"{x:.2f}" for x in d.flops_share))
        print("   mem %:   " + " ".join(f"{x:.2f}" for x in d.memory_share))
        assert r.first_found < 60 and min(d.flops_share + d.memory_share) >= 15 and max(d.flops_share + d.memory_share) <= 20


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
