"""The design evaluator: exact counts of a whole population of ``archspec.design.space`` rows at once.

It prices the layers of the one walk (archspec.spec.walk.block_layers) with the one cost table
(archspec.profiling.costs), as the analytic profile prices a written spec, but with numpy
arrays for the sizes: one entry per candidate. A stage's two block kinds are both walked and
kept by a 0/1 mask, its repeated blocks are walked once and counted ``depth - 1`` times, and a
projection shortcut that only some candidates have carries its own mask. ``check_counts``
holds a written design equal to ``archspec.profiling.analytic.stage_counts`` of its spec.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from archspec.design import space as S
from archspec.profiling.costs import layer_cost
from archspec.spec.schema import BlockGroup, Conv, Downsample
from archspec.spec.walk import block_layers, entry_layers
from archspec.vocabulary import DEFAULT_OPS

DESIGN_OPS = ("conv", "fc", "bn", "pool")  # the op classes the evaluator counts


def stage_convs(kind: str, m, c, g, stride) -> tuple[tuple[Conv, ...], tuple[Conv, ...]]:
    """The convs of a stage's first block and of its other blocks (ints, or numpy arrays):
    bottleneck [1x1, m, g; 3x3, m, g, stride; 1x1, c] then [1x1, m, g; 3x3, m, g; 1x1, c, g];
    basic [3x3, c, g, stride; 3x3, c] then [3x3, c, g; 3x3, c, g]."""
    if kind == "bottleneck":
        return (Conv(1, m, g), Conv(3, m, g, stride), Conv(1, c)), (Conv(1, m, g), Conv(3, m, g), Conv(1, c, g))
    return (Conv(3, c, g, stride), Conv(3, c)), (Conv(3, c, g), Conv(3, c, g))


@dataclass
class Counts:
    """Per local stage (columns; the stem is in the first) and per candidate (rows), exact."""

    conv: np.ndarray
    bn: np.ndarray
    pool: np.ndarray
    params: np.ndarray
    memory: np.ndarray  # residual block output elements
    head_pool: np.ndarray
    head_fc: np.ndarray
    head_params: np.ndarray
    ops: tuple = DEFAULT_OPS

    @property
    def flops(self) -> np.ndarray:
        """MACs of the counted op classes per local stage (no fc outside the head)."""
        return self.conv * ("conv" in self.ops) + self.bn * ("bn" in self.ops) + self.pool * ("pool" in self.ops)

    @property
    def total_macs(self) -> np.ndarray:
        return (self.flops.sum(axis=1) + self.head_pool * ("pool" in self.ops)
                + self.head_fc * ("fc" in self.ops))

    @property
    def total_params(self) -> np.ndarray:
        return self.params.sum(axis=1) + self.head_params


class _Stage:
    """One column of the counts: adds layers, each times a weight (an int or an array)."""

    def __init__(self, counts: dict, i: int):
        self.counts, self.i = counts, i

    def add(self, layers, weight=1) -> None:
        sums = dict.fromkeys(("params", "conv", "bn", "pool"), 0)
        for layer in layers:
            if layer.op not in _PRICED:  # activations, additions: neither parameters nor counted FLOPs
                continue
            params, macs = layer_cost(layer)
            sums["params"] = sums["params"] + params
            for op in ("conv", "bn", "pool"):
                if op in macs:
                    sums[op] = sums[op] + macs[op]
        for key, value in sums.items():
            self.counts[key][:, self.i] += value * weight


_PRICED = ("conv", "bn", "pool", "gpool")  # the ops with parameters or MACs of DESIGN_OPS inside a stage


def evaluate(genes: np.ndarray, n_stages: int, ops=DEFAULT_OPS) -> Counts:
    """Counts of every (repaired) row, as ``analytic.stage_counts`` counts its spec; FLOPs of
    the op classes ``ops`` (some of DESIGN_OPS)."""
    p = len(genes)
    counts = {k: np.zeros((p, n_stages), dtype=np.int64) for k in ("conv", "bn", "pool", "params", "memory")}
    stem = _Stage(counts, 0)  # the stem conv 7x7, stride 2 and res2's max pool fold into the first column
    c0 = S.STEM_WIDTHS[genes[:, 0]]
    layers, shape = block_layers(BlockGroup("conv", (Conv(7, c0, 1, 2),)), (3, S.INPUT_SIZE, S.INPUT_SIZE), True)
    stem.add(layers)
    stem.add(entry_layers(Downsample("maxpool", 3, 2), shape))
    cin, prev = c0, np.full(p, S.FIRST_SIZE, dtype=np.int64)
    for i in range(n_stages):
        v = genes[:, S.col(i, 0): S.col(i, 0) + S.NGENES]
        s, d, strided = v[:, S.SIZE], v[:, S.DEPTH], v[:, S.DS] == S.DS_STRIDED
        m = S.WIDTHS[v[:, S.WIDTH]]
        c, g = m << v[:, S.RATIO], 1 << v[:, S.GROUPS]
        size_in = np.where(strided, prev, s)  # a resize (not counted: interp) or the first block's stride
        stage = _Stage(counts, i)
        for code, kind in S.KIND_NAMES.items():
            mask = (v[:, S.KIND] == code).astype(np.int64)
            first, rest = stage_convs(kind, m, c, g, np.where(strided, 2, 1))
            layers, shape = block_layers(BlockGroup(kind, first), (cin, size_in, size_in), first=True)
            stage.add(layers, mask)
            layers, shape = block_layers(BlockGroup(kind, rest), shape, first=False)
            stage.add(layers, mask * (d - 1))
            counts["memory"][:, i] += mask * d * shape[0] * shape[1] * shape[2]  # every block's output
        cin, prev = c, s
    return Counts(**counts, head_pool=cin * prev * prev, head_fc=cin * S.FC, head_params=cin * S.FC + S.FC,
                  ops=tuple(ops))


def check_counts(spec, row: np.ndarray, n_stages: int, ops=DEFAULT_OPS) -> None:
    """The written spec counts exactly what the evaluator counted (an internal check)."""
    from archspec.profiling.analytic import stage_counts

    counts = evaluate(row[None, :], n_stages, ops)
    analytic = stage_counts(spec)
    groups = [ls.stages for ls in spec.local_stages]
    got = [[sum(analytic[n].macs[o] for n in g for o in ops) for g in groups],
           [sum(analytic[n].block_output_elems for n in g) for g in groups],
           [sum(analytic[n].params for n in g) for g in groups], sum(c.params for c in analytic.values())]
    want = [counts.flops[0].tolist(), counts.memory[0].tolist(), counts.params[0].tolist(),
            int(counts.total_params[0])]
    if got != want:  # pragma: no cover - a bug in evaluate or to_spec
        raise RuntimeError(f"design evaluator and analytic counts disagree for {spec.name}: {got} != {want}")
