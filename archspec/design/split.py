"""Optimal contiguous split of a chain of blocks into K stages (pure Python, no torch).

The problem ("chains-on-chains partitioning"): blocks 0..n-1 in order, a stage is a non-empty
run of consecutive blocks, and a stage's cost is monotone in the run (adding a block never makes
it cheaper). Cut the chain into exactly K stages so that the most expensive stage is as cheap as
possible, optionally with a hard limit on a second additive quantity per stage (memory).

Stage cost, with integer per-block values ``v[c][b]`` for components c and integer weights::

    cost(i, j) = max over c of  w[c] * (v[c][i] + ... + v[c][j - 1])

One component is a plain sum (FLOPs, parameters, bytes, nanoseconds); two components with
weights (M_total, F_total) are ``max(F / F_total, M / M_total)`` scaled by ``F_total * M_total``,
so ``--by mix`` is compared exactly, in integers, with no rounding.

Algorithm (``optimal_split``), exact:

1. The optimal bottleneck B*, by Nicol's probe-based search: a greedy probe (each stage as long
   as the bound and the limit allow, found by bisection on prefix sums, O(K log n)) says whether
   a bound is feasible; the first stage's end is bisected with probes at the candidate bounds
   ``cost(start, j)``, and the recursion goes on from there. B* is always the cost of some
   interval, so the search is exact. O(K^2 log^2 n) after O(n) prefix sums.
2. The canonical optimum among splits of bottleneck B*: the one with the least sum of squared
   stage costs (``--by mix``: the sum over stages of F_share^2 + M_share^2), remaining ties to
   the split whose last cut is earliest, then the one before it, and so on. Computed by a DP over
   exactly K stages where a stage above B* (or over the limit) is charged a penalty larger than any
   sum of squares. Squares and penalties are convex functions of interval sums, so the cost matrix
   is Monge and each level is solved by divide and conquer on monotone leftmost argmins; each level
   only visits the cut positions feasible under B* (greedy from both ends). O(K n log n) at worst,
   much less when B* is tight.

``dp_split`` is the textbook O(K n^2) min-max DP (reference and benchmark), ``uniform_cuts`` cuts
by block count, ``evaluate`` costs any split.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from archspec.errors import UserError


class SplitError(UserError):
    """A split that cannot be made: bad K, or a limit no split can meet."""

    def __init__(self, message: str, hint: str | None = None):
        self.message, self.hint = message, hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


def _prefix(values: Sequence[int]) -> list[int]:
    out, total = [0], 0
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"block costs must be integers, got {v!r}")
        if v < 0:
            raise ValueError(f"block costs must be non-negative, got {v}")
        total += v
        out.append(total)
    return out


class Costs:
    """Interval costs over a chain: ``cost(i, j)`` for blocks i..j-1 is the max over components
    of weight * (sum of the component's values). Values and weights are non-negative integers."""

    def __init__(self, components, weights: Sequence[int] | None = None):
        comps = [list(components)] if components and not isinstance(components[0], (list, tuple)) \
            else [list(c) for c in components]
        if not comps or any(len(c) != len(comps[0]) for c in comps):
            raise ValueError("components must be non-empty and of equal length")
        weights = [1] * len(comps) if weights is None else list(weights)
        if len(weights) != len(comps) or any(not isinstance(w, int) or w < 0 for w in weights):
            raise ValueError("one non-negative integer weight per component")
        self.n = len(comps[0])
        self.components = comps
        self.weights = weights
        # prefix sums already multiplied by the weight: cost(i, j) = max_c Q[c][j] - Q[c][i]
        self.Q = [[w * p for p in _prefix(c)] for c, w in zip(comps, weights)]

    @classmethod
    def normalised(cls, *components: Sequence[int]) -> "Costs":
        """max over components of (interval sum / component total), exactly: the weight of each
        component is the product of the other components' totals (zero totals are dropped)."""
        comps = [list(c) for c in components if sum(c) > 0] or [list(components[0])]
        totals = [sum(c) for c in comps]
        weights = []
        for k in range(len(comps)):
            w = 1
            for m, t in enumerate(totals):
                if m != k:
                    w *= t
            weights.append(w)
        return cls(comps, weights)

    @property
    def scale(self) -> int:
        """The cost of the whole chain in each component is ``scale`` for normalised costs."""
        return max(q[-1] for q in self.Q)

    def cost(self, i: int, j: int) -> int:
        return max(q[j] - q[i] for q in self.Q)

    def parts(self, i: int, j: int) -> list[int]:
        """Each component's weighted sum over blocks i..j-1."""
        return [q[j] - q[i] for q in self.Q]

    def total(self) -> int:
        return self.cost(0, self.n)


@dataclass(frozen=True)
class Split:
    cuts: tuple[int, ...]  # 0 = c0 < c1 < ... < cK = n: stage k holds blocks c[k-1] .. c[k]-1
    stage_costs: tuple[int, ...]

    @property
    def k(self) -> int:
        return len(self.cuts) - 1

    @property
    def bottleneck(self) -> int:
        return max(self.stage_costs)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.cuts, self.cuts[1:]))


def _as_costs(costs) -> Costs:
    return costs if isinstance(costs, Costs) else Costs(costs)


def evaluate(costs, cuts: Sequence[int]) -> Split:
    costs = _as_costs(costs)
    cuts = tuple(cuts)
    if cuts[0] != 0 or cuts[-1] != costs.n or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts {cuts} are not 0 < ... < {costs.n} with non-empty stages")
    return Split(cuts, tuple(costs.cost(a, b) for a, b in zip(cuts, cuts[1:])))


def uniform_cuts(n: int, k: int) -> tuple[int, ...]:
    """K stages of n // K or n // K + 1 blocks (the longer ones last)."""
    _check_k(n, k)
    return tuple(s * n // k for s in range(k + 1))


def _check_k(n: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SplitError(f"the number of stages must be a positive integer, got {k!r}")
    if k > n:
        raise SplitError(f"cannot cut {n} blocks into {k} non-empty stages",
                         hint=f"use at most {n} stages")


class _Limit:
    """An additive per-stage limit (e.g. training memory <= cap), or none."""

    def __init__(self, values: Sequence[int] | None, cap: int | None, n: int):
        self.active = values is not None and cap is not None
        if values is not None and len(values) != n:
            raise ValueError("limit values must have one entry per block")
        self.P = _prefix(values) if self.active else None
        self.cap = cap

    def reach(self, i: int, hi: int) -> int:
        """Largest j <= hi with the run i..j-1 within the cap."""
        if not self.active:
            return hi
        return min(hi, bisect_right(self.P, self.P[i] + self.cap, i, hi + 1) - 1)

    def back(self, j: int) -> int:
        """Smallest i with the run i..j-1 within the cap."""
        if not self.active:
            return 0
        return bisect_left(self.P, self.P[j] - self.cap, 0, j)

    def ok(self, i: int, j: int) -> bool:
        return not self.active or self.P[j] - self.P[i] <= self.cap


class _Solver:
    def __init__(self, costs: Costs, k: int, limit: _Limit):
        self.c, self.n, self.k, self.limit = costs, costs.n, k, limit

    def reach(self, i: int, bound: int) -> int:
        """Largest j with cost(i, j) <= bound and the limit met (i when even one block is over)."""
        j = self.limit.reach(i, self.n)
        for q in self.c.Q:
            j = min(j, bisect_right(q, q[i] + bound, i, j + 1) - 1)
        return j

    def back(self, j: int, bound: int) -> int:
        """Smallest i with cost(i, j) <= bound and the limit met (j when even one block is over)."""
        i = self.limit.back(j)
        for q in self.c.Q:
            i = max(i, bisect_left(q, q[j] - bound, i, j))
        return i

    def feasible(self, start: int, bound: int, stages: int) -> bool:
        """Can blocks start..n-1 be cut into at most ``stages`` runs within ``bound``? (With at
        least ``stages`` blocks left, at most is as good as exactly: runs can be split further.)"""
        i, used = start, 0
        while i < self.n:
            j = self.reach(i, bound)
            used += 1
            if j == i or used > stages:
                return False
            i = j
        return True

    def bottleneck(self) -> int | None:
        """Nicol's search: the least achievable maximum stage cost, or None (limit unmeetable)."""
        n, cost = self.n, self.c.cost
        best = None
        prefix_max = 0  # the largest cost among the stages already fixed
        start = 0
        for s in range(self.k, 1, -1):  # s stages left for blocks start..n-1
            lo, hi = start + 1, self.limit.reach(start, n - (s - 1))
            if hi < lo:
                return best
            a, b = lo, hi + 1  # the smallest first-stage end j whose cost is a feasible bound
            while a < b:
                m = (a + b) // 2
                if self.feasible(start, cost(start, m), s):
                    b = m
                else:
                    a = m + 1
            if a <= hi:
                candidate = max(prefix_max, cost(start, a))
                best = candidate if best is None else min(best, candidate)
                if a == lo:
                    return best  # a shorter first stage would be empty
                end = a - 1  # otherwise the first stage ends just before: bound > its cost
            else:
                end = hi  # no end in range is a feasible bound: the longest allowed is best
            prefix_max = max(prefix_max, cost(start, end))
            start = end
            if best is not None and prefix_max >= best:
                return best
        if self.limit.ok(start, n):
            candidate = max(prefix_max, cost(start, n))
            best = candidate if best is None else min(best, candidate)
        return best

    def windows(self, bound: int) -> list[tuple[int, int]]:
        """For each level s = 0..K, the range of positions the s-th cut can take in a split
        within ``bound``: greedy from the left bounds it above, greedy from the right below."""
        n, k = self.n, self.k
        right = [0] * (k + 1)
        pos = 0
        for s in range(1, k + 1):
            pos = self.reach(pos, bound)
            right[s] = min(pos, n - (k - s))
        left = [n] * (k + 1)
        pos = n
        for s in range(k - 1, -1, -1):
            pos = self.back(pos, bound)
            left[s] = max(pos, s)
        left[0], right[0] = 0, 0
        return [(left[s], right[s]) for s in range(k + 1)]

    def canonical(self, bound: int) -> tuple[int, ...]:
        """Among splits with max stage cost <= bound (and the limit met): least sum of squares,
        then earliest last cut, earliest cut before it, ... (leftmost argmins, backtracked)."""
        Q, limit = self.c.Q, self.limit
        big = sum(q[-1] ** 2 for q in Q) + 1  # more than any split's sum of squares
        cap = limit.cap
        LP = limit.P if limit.active else None

        if len(Q) == 1 and LP is None:
            q0 = Q[0]

            def cost(i, j):
                x = q0[j] - q0[i]
                return x * x + (big * (x - bound) if x > bound else 0)
        else:
            def cost(i, j):
                total = 0
                for q in Q:
                    x = q[j] - q[i]
                    total += x * x
                    if x > bound:
                        total += big * (x - bound)
                if LP is not None:
                    y = LP[j] - LP[i]
                    if y > cap:
                        total += big * (y - cap)
                return total

        win = self.windows(bound)
        prev = {0: 0}
        args: list[dict[int, int]] = [{}]
        for s in range(1, self.k + 1):
            (ilo, ihi), (jlo, jhi) = win[s - 1], win[s]
            cur: dict[int, int] = {}
            arg: dict[int, int] = {}
            stack = [(jlo, jhi, ilo, ihi)]
            while stack:
                lo, hi, olo, ohi = stack.pop()
                if lo > hi:
                    continue
                mid = (lo + hi) // 2
                best, where = None, olo
                for i in range(olo, min(ohi, mid - 1) + 1):
                    v = prev[i] + cost(i, mid)
                    if best is None or v < best:
                        best, where = v, i
                if best is None:  # no stage can end at mid (cannot happen inside the windows)
                    best, where = float("inf"), olo
                cur[mid], arg[mid] = best, where
                stack.append((lo, mid - 1, olo, where))
                stack.append((mid + 1, hi, where, ohi))
            prev = cur
            args.append(arg)
        cuts = [self.n]
        for s in range(self.k, 0, -1):
            cuts.append(args[s][cuts[-1]])
        return tuple(reversed(cuts))


def optimal_split(costs, k: int, *, limit_values: Sequence[int] | None = None,
                  limit: int | None = None) -> Split:
    """The exact min-max split of the chain into ``k`` contiguous non-empty stages, canonical
    among optima (least sum of squared stage costs, then earliest cuts from the last one back).

    ``limit_values``/``limit``: every stage's sum of ``limit_values`` must be <= ``limit``
    (a hard constraint, e.g. training memory). Raises SplitError for a bad ``k`` or an
    unmeetable limit.
    """
    costs = _as_costs(costs)
    _check_k(costs.n, k)
    lim = _Limit(limit_values, limit, costs.n)
    solver = _Solver(costs, k, lim)
    bound = solver.bottleneck()
    if bound is None:
        raise SplitError(f"no split into {k} stages keeps every stage within the limit {limit}")
    result = evaluate(costs, solver.canonical(bound))
    assert result.bottleneck == bound and all(lim.ok(a, b) for a, b in zip(result.cuts, result.cuts[1:])), \
        (result, bound)
    return result


def min_limit(limit_values: Sequence[int], k: int) -> int:
    """The least per-stage limit any split into ``k`` stages can meet (for error messages)."""
    return optimal_split(list(limit_values), k).bottleneck


def dp_split(costs, k: int, *, limit_values: Sequence[int] | None = None, limit: int | None = None) -> Split:
    """The textbook O(K n^2) dynamic programme for the min-max split (no tie-break beyond the
    earliest last cut). Reference for tests and the benchmark baseline."""
    costs = _as_costs(costs)
    n = costs.n
    _check_k(n, k)
    lim = _Limit(limit_values, limit, n)
    inf = float("inf")
    cost = costs.cost
    best = [0] + [inf] * n  # best[j]: blocks 0..j-1 in s stages
    choice = [[0] * (n + 1) for _ in range(k + 1)]
    for s in range(1, k + 1):
        new = [inf] * (n + 1)
        for j in range(s, n - (k - s) + 1):
            bj, arg = inf, -1
            for i in range(s - 1, j):
                if best[i] == inf or not lim.ok(i, j):
                    continue
                v = max(best[i], cost(i, j))
                if v < bj:
                    bj, arg = v, i
            new[j], choice[s][j] = bj, arg
        best = new
    if best[n] == inf:
        raise SplitError(f"no split into {k} stages keeps every stage within the limit {limit}")
    cuts = [n]
    for s in range(k, 0, -1):
        cuts.append(choice[s][cuts[-1]])
    return evaluate(costs, tuple(reversed(cuts)))


__all__ = ["Costs", "Split", "SplitError", "dp_split", "evaluate", "min_limit", "optimal_split", "uniform_cuts"]
