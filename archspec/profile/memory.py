"""Peak training memory of end-to-end (SimCLR), GIM and LoCo training, from traced counts.

Model (docs/profile.md states it with the numbers it needs):

    peak = static + activations
    static = (encoder + decoders in use) x (weights + gradients + optimizer state)
    activations = the bytes autograd holds for backward when the peak is reached:
      simclr: every stage, plus the one decoder on top (forward, then one backward);
      gim:    max over local stages k of stage k + decoder k (each stage's input detached, so a
              stage's backward can run, and free its tensors, before the next stage's forward);
      loco:   max over k of stages k-1 and k + decoder k (unit k back-propagates through
              both, so stage k-1's tensors live until unit k is done: one extra stage).

The image batch counts both views of a contrastive batch (2 x batch). The classifier fc of
the spec's head is not trained (a decoder replaces it). The stem (leading ``conv`` stages,
e.g. conv1) joins the first residual stage as one local stage, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

from archspec.spec.schema import Spec

OPTIMIZER_STATES = {"sgd": 1, "lars": 1, "adam": 2}  # state tensors per parameter (momentum; m and v)
METHODS = ("simclr", "gim", "loco")


def local_stages(spec: Spec) -> list[list[str]]:
    """Stages as local learning groups them (one local loss and one pipeline worker each):
    consecutive stages with the same ``local_stage`` label form one; otherwise leading
    all-``conv`` stages (the stem) join the next stage, and every other stage is its own."""
    default: list[list[str]] = []
    pending: list[str] = []
    for stage in spec.stages:
        pending.append(stage.name)
        stem = all(g.kind == "conv" for g in stage.blocks) and not default
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


@dataclass
class MemoryPlan:
    method: str
    weights: int  # encoder
    gradients: int
    optimizer: int
    decoders: int  # decoder weights + gradients + optimizer state
    activations: int
    peak_unit: str  # the local stage (or unit) where the activation peak is reached

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.decoders + self.activations

    def as_dict(self) -> dict:
        return {"method": self.method, "weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "decoders": self.decoders, "activations": self.activations,
                "total": self.total, "peak_at": self.peak_unit}


def memory_plans(groups: list[list[str]], saved: dict[str, int], encoder_params: int,
                 decoder_params: list[int], decoder_saved: list[int], bytes_per_element: int,
                 optimizer: str) -> dict[str, MemoryPlan]:
    """``saved``: activation bytes per stage at the training batch; ``decoder_*``: per local stage."""
    states = OPTIMIZER_STATES[optimizer]
    per_param = bytes_per_element * (2 + states)  # weight + gradient + optimizer state
    group_saved = [sum(saved[name] for name in g) for g in groups]
    labels = ["+".join(g) for g in groups]
    weights = encoder_params * bytes_per_element
    common = dict(weights=weights, gradients=weights, optimizer=weights * states)

    plans = {"simclr": MemoryPlan("simclr", decoders=decoder_params[-1] * per_param,
                                  activations=sum(group_saved) + decoder_saved[-1], peak_unit="all", **common)}
    gim = [(group_saved[k] + decoder_saved[k], labels[k]) for k in range(len(groups))]
    loco = [((group_saved[k - 1] if k else 0) + group_saved[k] + decoder_saved[k],
             f"({labels[k - 1]}, {labels[k]})" if k else labels[k]) for k in range(len(groups))]
    for method, options in (("gim", gim), ("loco", loco)):
        acts, unit = max(options)
        plans[method] = MemoryPlan(method, decoders=sum(decoder_params) * per_param, activations=acts,
                                   peak_unit=unit, **common)
    return plans
