"""Write a Spec back to YAML in the table notation; loading the text gives an equal Spec."""
from __future__ import annotations

import yaml

from archspec.spec.notation import format_block, format_downsample, format_size
from archspec.spec.schema import Spec


def to_data(spec: Spec) -> dict:
    data: dict = {"name": spec.name}
    if spec.title:
        data["title"] = spec.title
    if spec.notes:
        data["notes"] = spec.notes
    data["input"] = {"channels": spec.input_channels, "size": format_size(spec.input_size)}
    stages = []
    for stage in spec.stages:
        entry = {"name": stage.name, "output_size": format_size(stage.output_size),
                 "downsample": format_downsample(stage.downsample),
                 "blocks": [format_block(g) for g in stage.blocks]}
        if stage.channels is not None:
            entry["channels"] = stage.channels
        if stage.local_stage is not None:
            entry["local_stage"] = stage.local_stage
        stages.append(entry)
    data["stages"] = stages
    head = {"pool": spec.head.pool, "fc": spec.head.fc}
    if spec.head.features is not None:
        head["features"] = spec.head.features
    data["head"] = head
    return data


def dumps(spec: Spec) -> str:
    return yaml.safe_dump(to_data(spec), sort_keys=False, width=120, allow_unicode=True)
