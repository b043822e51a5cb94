"""Local stages: the spec's stages as local learning groups them, one local loss, one decoder and
one pipeline worker each, and the one label every table, log, checkpoint and command uses for
them (``Spec.local_stages``). Torch-free.

Grouping: consecutive stages with the same ``local_stage`` label form one; otherwise leading
all-``conv`` stages (the stem) join the next stage, and every other stage is its own. A network
without residual blocks (VGG) has no stem to fold: every stage is its own.

Label: the stages' ``local_stage`` label when they carry one (a split written by ``archspec split -o``
keeps ``stage2`` for stage2a + stage2b), else the stage names joined by '+' (``conv1+res2``).
"""
from __future__ import annotations

from dataclasses import dataclass

from archspec.spec.kinds import KINDS


@dataclass(frozen=True)
class LocalStage:
    label: str  # "conv1+res2", or the spec's local_stage label
    stages: tuple[str, ...]  # its spec stages, in order

    @property
    def last(self) -> str:
        """The stage whose output the local stage's decoder reads."""
        return self.stages[-1]


def group(spec) -> list[list[str]]:
    """The stage names of each local stage (see the module)."""
    default: list[list[str]] = []
    pending: list[str] = []
    plain = not spec.has_residual_blocks
    for stage in spec.stages:
        pending.append(stage.name)
        stem = not plain and all(not KINDS[g.kind].residual for g in stage.blocks) and not default
        if not stem or stage is spec.stages[-1]:
            default.append(pending)
            pending = []
    key = {name: ("default", i) for i, names in enumerate(default) for name in names}
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


def label(spec, names) -> str:
    """The label of a run of stages ``names`` (see the module); ``spec`` None: joined by '+'."""
    if spec is not None:
        labels = {s.local_stage for s in spec.stages if s.name in names}
        if len(labels) == 1 and None not in labels:
            return labels.pop()
    return "+".join(names)


def local_stages(spec) -> tuple[LocalStage, ...]:
    return tuple(LocalStage(label(spec, names), tuple(names)) for names in group(spec))
