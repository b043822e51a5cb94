"""Write a Spec back to YAML in the table notation; loading the text gives an equal Spec."""
from __future__ import annotations

import yaml

from archspec.spec.notation import format_block, format_downsample, format_size
from archspec.spec.schema import Spec

# Characters YAML reads as line breaks besides "\n" (and "\r", which PyYAML already writes as an
# escape). PyYAML writes them raw inside a plain or single-quoted scalar, where they are line
# folding: NEL comes back as a space (or vanishes before a "\n"), and U+2028/U+2029 split the
# line for other readers and for str.splitlines. A string holding one is written double-quoted,
# where PyYAML escapes them as \N, \L and \P; every other string is written as before.
_YAML_LINE_BREAKS = frozenset("\x85\u2028\u2029")


class _Dumper(yaml.SafeDumper):
    """safe_dump's dumper, but text that YAML would fold is written double-quoted with escapes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if not _YAML_LINE_BREAKS.isdisjoint(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


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
    h = spec.head
    head: dict = {}
    if h.downsample.kind != "none":
        head["downsample"] = format_downsample(h.downsample)
    head["pool"] = h.pool
    if h.pool_size != 1:
        head["pool_size"] = h.pool_size
    head["fc"] = list(h.fc_layers) if h.hidden else h.fc
    if h.dropout:
        head["dropout"] = list(h.dropout)
    if h.activation != "relu":
        head["activation"] = h.activation
    if h.features is not None:
        head["features"] = h.features
    data["head"] = head
    return data


def dumps(spec: Spec) -> str:
    return yaml.dump(to_data(spec), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
