"""Analytic counts derived from the Spec alone, pycls-style: no torch, no module.

They are an independent cross-check of the traced counts (tests hold the two equal) and
fast enough for design-space search. All counts are per image, forward pass: the layers of
the one walk over a spec (archspec.spec.walk) priced by the one cost table
(archspec.profiling.costs, where the convention of every op class is written down).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from archspec.profiling.costs import OP_CLASSES, act_class, layer_cost
from archspec.spec.schema import Spec
from archspec.spec.walk import Unit, walk

__all__ = ["OP_CLASSES", "StageCounts", "act_class", "stage_counts", "stage_params"]


@dataclass
class StageCounts:
    """What one stage (or the head, or one block) costs, per image."""

    name: str
    params: int = 0
    macs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 0))
    output_elems: int = 0  # the output feature map
    conv_output_elems: int = 0  # every conv's output (projection shortcuts and SE's 1x1 convs included)
    block_output_elems: int = 0  # every residual block's output (the paper's Table 6 memory)

    def add(self, unit: Unit) -> None:
        """Count the layers of ``unit``; its output becomes this one's."""
        for layer in unit.layers:
            params, macs = layer_cost(layer)
            self.params += params
            for op, value in macs.items():
                self.macs[op] += value
            if layer.op == "conv":
                c, h, w = layer.shape_out
                self.conv_output_elems += c * h * w * layer.times
        c, h, w = unit.shape_out
        self.output_elems = c * h * w
        if unit.residual:
            self.block_output_elems += c * h * w


def stage_counts(spec: Spec) -> dict[str, StageCounts]:
    """Counts per stage, the head last (pooling and the fc layers)."""
    out = {name: StageCounts(name) for name in spec.stage_names + ["head"]}
    for unit in walk(spec):
        out[unit.name].add(unit)
    return out


def stage_params(spec: Spec) -> dict[str, int]:
    """Parameters per stage, the head last (its fc weight and bias)."""
    return {name: counts.params for name, counts in stage_counts(spec).items()}
