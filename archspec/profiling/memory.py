"""Local stages and the plan of a training step's peak memory.

The peak itself is computed by running the training runner's step on meta tensors
(:mod:`archspec.profiling.step_memory`); :class:`MemoryPlan` is its breakdown. The stem (leading
``conv`` stages, e.g. conv1) joins the first residual stage as one local stage, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

from archspec.spec.schema import Spec

OPTIMIZER_STATES = {"sgd": 1, "lars": 1, "adam": 2}  # state tensors per parameter (momentum; m and v)
METHODS = ("simclr", "gim", "loco")


def local_stages(spec: Spec) -> list[list[str]]:
    """Stages as local learning groups them (one local loss and one pipeline worker each):
    consecutive stages with the same ``local_stage`` label form one; otherwise leading
    all-``conv`` stages (the stem) join the next stage, and every other stage is its own. A
    network without residual blocks (VGG) has no stem to fold: every stage is its own."""
    default: list[list[str]] = []
    pending: list[str] = []
    plain = not spec.has_residual_blocks
    for stage in spec.stages:
        pending.append(stage.name)
        stem = not plain and all(g.kind == "conv" for g in stage.blocks) and not default
        if not stem or stage is spec.stages[-1]:
            default.append(pending)
            pending = []
    key = {name: ("default", i) for i, group in enumerate(default) for name in group}
    for stage in spec.stages:
        if stage.local_stage is not None:
            key[stage.name] = ("label", stage.local_stage)
    groups: list[list[str]] = []
    for stage in spec.stages:
        if groups and key[groups[-1][-1]] == key[stage.name]:
            groups[-1].append(stage.name)
        else:
            groups.append([stage.name])
    return groups


def local_stage_name(spec: Spec | None, group) -> str:
    """A local stage's name in every table: the spec's ``local_stage`` label when its stages carry
    one (a split written by ``archspec split -o`` keeps ``stage2`` for stage2a + stage2b), else
    its stages joined by '+' (``conv1+res2``)."""
    if spec is not None:
        labels = {s.local_stage for s in spec.stages if s.name in group}
        if len(labels) == 1 and None not in labels:
            return labels.pop()
    return "+".join(group)


@dataclass
class MemoryPlan:
    """Bytes at the peak of a step, by what holds them (archspec.profiling.step_memory.StepPeak)."""

    method: str
    weights: int  # encoder weights (the untrained head's too) and batch-norm buffers
    gradients: int  # encoder gradients that exist at the peak
    optimizer: int  # encoder optimizer state
    decoders: int  # decoder weights, buffers, optimizer state and the gradients that exist at the peak
    activations: int  # saved tensors, gradients in flight, the batch and its views
    peak_unit: str  # the local stage (LoCo: unit) running at the peak, or "optimizer step"

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.decoders + self.activations

    def as_dict(self) -> dict:
        return {"method": self.method, "weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "decoders": self.decoders, "activations": self.activations,
                "total": self.total, "peak_at": self.peak_unit}
