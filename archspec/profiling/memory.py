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
    """The stage names of each local stage (``Spec.local_stages``, archspec/spec/local_stages.py)."""
    return [list(ls.stages) for ls in spec.local_stages]


def local_stage_name(spec: Spec | None, group) -> str:
    """A run of stages' name in every table (archspec.spec.local_stages.label)."""
    from archspec.spec.local_stages import label

    return label(spec, group)


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
