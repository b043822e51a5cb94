"""Load a spec from YAML into a validated Spec, with file:line in every error."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from archspec import limits
from archspec.errors import SpecError, did_you_mean
from archspec.spec import notation
from archspec.spec.schema import (ACTIVATIONS, POOL_DOWNSAMPLES, SHORTCUT_KINDS, BlockGroup, Conv, Downsample,
                                  Head, Spec, Stage)
from archspec.spec.validate import infer_shapes

TOP_KEYS = ("name", "title", "notes", "input", "stages", "head")
INPUT_KEYS = ("channels", "size")
STAGE_KEYS = ("name", "output_size", "downsample", "blocks", "channels", "local_stage")
BLOCK_KEYS = ("kind", "convs", "repeat", "activation", "se", "shortcut")
CONV_KEYS = ("kernel", "channels", "groups", "stride", "bias")
DOWNSAMPLE_KEYS = ("kind", "kernel", "stride")
HEAD_KEYS = ("pool", "pool_size", "fc", "dropout", "activation", "downsample", "features")


def _compose(text: str, source: str):
    """YAML text -> (plain Python data, {path: line}). Rejects duplicate keys, and YAML beyond
    archspec.limits (depth, aliases, expanded size) before a node is built."""
    try:
        limits.check_yaml(text)
    except limits.LimitError as err:
        raise _located(err, source) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (ValueError, OverflowError) as exc:  # PyYAML lets these through for a \\U escape above U+10FFFF
        line = next((i + 1 for i, t in enumerate(text.splitlines()) if "\\U" in t), None)
        raise SpecError(f"malformed YAML: {exc}", where=f"{source}:{line}" if line else source,
                        hint="a \\UXXXXXXXX escape must be at most \\U0010FFFF") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"malformed YAML: {problem}", where=f"{source}{line}",
                        hint="check indentation, colons and brackets on this line") from None
    if node is None:
        raise SpecError("the file is empty", where=f"{source}:1", hint="see docs/spec-format.md for the format")
    constructor = yaml.SafeLoader("")
    lines: dict[tuple, int] = {}

    def build(n, path):
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out = {}
            for key_node, value_node in n.value:
                key = build(key_node, path + ("<key>",))
                if not isinstance(key, str):
                    raise SpecError(f"keys must be names, got {key!r}", where=f"{source}:{key_node.start_mark.line + 1}")
                if key in out:
                    raise SpecError(f"key '{key}' appears twice", where=f"{source}:{key_node.start_mark.line + 1}",
                                    hint="remove one of them")
                out[key] = build(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(n.value)]
        try:
            return constructor.construct_object(n, deep=True)
        except ValueError as exc:
            if "integer string conversion" in str(exc):  # Python refuses int() of more than 4,300 digits
                raise SpecError(f"a number of {len(n.value.strip()):,} digits is far too large",
                                where=f"{source}:{n.start_mark.line + 1}",
                                hint="archspec's counts are at most 1,048,576") from None
            raise SpecError(f"cannot read value: {exc}", where=f"{source}:{n.start_mark.line + 1}",
                            hint="quote it to make it text") from None
        except (yaml.YAMLError, OverflowError) as exc:  # e.g. a date 2020-13-45
            raise SpecError(f"cannot read value: {getattr(exc, 'problem', exc)}",
                            where=f"{source}:{n.start_mark.line + 1}", hint="quote it to make it text") from None

    return build(node, ()), lines


def _located(err: limits.LimitError, source: str) -> SpecError:
    return SpecError(err.message, where=f"{source}:{err.line}" if err.line else source, hint=err.hint)


def compose(text: str, source: str):
    """YAML text -> (plain Python data, {path: line}) with ``source:line`` in every error, for
    other YAML files that want the spec loader's located errors (training configs)."""
    return _compose(text, source)


class _Builder:
    """Turns the plain data of a spec file into a Spec, failing at the right line."""

    def __init__(self, lines: dict, source: str):
        self.lines = lines
        self.source = source
        self.stage_names: dict[int, str] = {}

    def label(self, path: tuple) -> str | None:
        """'stage 'res3' block 2 conv 1' for a spec path, to name the culprit."""
        if path[:1] in (("head",), ("input",)):
            return path[0]
        if len(path) < 2 or path[0] != "stages":
            return None
        name = self.stage_names.get(path[1])
        text = f"stage '{name}'" if name else f"stage {path[1] + 1}"
        for key, word in (("blocks", "block"), ("convs", "conv")):
            if key in path and path.index(key) + 1 < len(path):
                text += f" {word} {path[path.index(key) + 1] + 1}"
        return text

    def where(self, path: tuple) -> str:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return f"{self.source}:{self.lines[path[:cut]]}"
        return self.source

    def mapping(self, data, path: tuple, allowed, required, what: str) -> dict:
        if not isinstance(data, dict):
            raise SpecError(f"{what} must be a mapping of keys ({', '.join(allowed)}), got {_kind(data)}",
                            path=path)
        for key in data:
            if key not in allowed:
                hint = did_you_mean(key, allowed, f"allowed keys: {', '.join(allowed)}")
                raise SpecError(f"unknown key '{key}' in {what}", path=path + (key,), hint=hint)
        for key in required:
            if key not in data:
                raise SpecError(f"{what} is missing '{key}'", path=path, hint=f"add '{key}:'")
        return data

    def at(self, path, fn, *args):
        """Run a notation parser, tagging its error with ``path``."""
        try:
            return fn(*args)
        except SpecError as err:
            if err.path:
                raise
            raise SpecError(err.message, what=err.what, hint=err.hint, path=path) from None

    # -- pieces ------------------------------------------------------------------
    def conv(self, data, path) -> Conv:
        if isinstance(data, dict):
            self.mapping(data, path, CONV_KEYS, ("kernel", "channels"), "conv")
            kernel = data["kernel"]
            kernel = self.at(path + ("kernel",), notation.parse_kernel, str(kernel)) if not isinstance(kernel, bool) \
                else self.at(path + ("kernel",), notation.positive_int, kernel, "kernel")
            channels = self.at(path + ("channels",), notation.positive_int, data["channels"], "channels")
            groups = data.get("groups", 1)
            groups = channels if groups in ("dw", "depthwise") else \
                self.at(path + ("groups",), notation.positive_int, groups, "groups")
            bias = data.get("bias", False)
            if not isinstance(bias, bool):
                raise SpecError(f"'bias' must be true or false, got {bias!r}", path=path + ("bias",))
            return Conv(kernel=kernel, channels=channels, groups=groups,
                        stride=self.at(path + ("stride",), notation.positive_int, data.get("stride", 1), "stride"),
                        bias=bias)
        return self.at(path, notation.parse_conv, data)

    def block(self, data, path) -> BlockGroup:
        if isinstance(data, dict):
            self.mapping(data, path, BLOCK_KEYS, ("kind", "convs"), "block")
            kind = self.at(path + ("kind",), notation.check_kind, data["kind"])
            convs = data["convs"]
            if not isinstance(convs, list) or not convs:
                raise SpecError("a block's 'convs' must be a non-empty list", path=path + ("convs",),
                                hint="e.g. convs: ['3x3, 64', '3x3, 64']")
            repeat = self.at(path + ("repeat",), notation.positive_int, data.get("repeat", 1), "repeat count")
            conv_items = [(item, path + ("convs", i)) for i, item in enumerate(convs)]
            options = {k: (data[k], path + (k,)) for k in ("activation", "se", "shortcut") if k in data}
        else:
            kind, texts, repeat, opts = self.at(path, notation.parse_block_text, data)
            conv_items = [(t, path) for t in texts]
            options = {k: (v, path) for k, v in opts.items()}
        extra = {}
        if "activation" in options:
            value, at = options["activation"]
            extra["activation"] = self.at(at, notation.check_kind, value, ACTIVATIONS, "activation")
        if "se" in options:
            value, at = options["se"]
            extra["se"] = self.at(at, notation.check_se, value)
        if "shortcut" in options:
            value, at = options["shortcut"]
            extra["shortcut"] = self.at(at, notation.check_kind, value, SHORTCUT_KINDS, "shortcut")
        return BlockGroup(kind=kind, convs=tuple(self.conv(item, p) for item, p in conv_items), repeat=repeat,
                          **extra)

    def downsample(self, data, path) -> Downsample:
        if isinstance(data, dict):
            self.mapping(data, path, DOWNSAMPLE_KEYS, ("kind",), "downsample")
            kind = self.at(path + ("kind",), notation.check_kind, data["kind"], notation.DOWNSAMPLE_KINDS,
                           "downsample")
            if kind not in POOL_DOWNSAMPLES and ("kernel" in data or "stride" in data) and kind != "strided_conv":
                raise SpecError(f"'{kind}' takes no kernel or stride", path=path, hint="remove them")
            if kind == "strided_conv" and "kernel" in data:
                raise SpecError("a strided conv's kernel is the conv's own", path=path + ("kernel",),
                                hint="remove 'kernel'")
            kernel = data.get("kernel", 3)
            kernel = self.at(path + ("kernel",), notation.parse_kernel, str(kernel), True) \
                if not isinstance(kernel, bool) else self.at(path + ("kernel",), notation.positive_int, kernel, "kernel")
            stride = self.at(path + ("stride",), notation.positive_int, data.get("stride", 2), "stride")
            return Downsample(kind=kind, kernel=kernel, stride=stride)
        return self.at(path, notation.parse_downsample_text, data)

    def stage(self, data, path) -> Stage:
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            self.stage_names[path[1]] = data["name"]  # to name the stage in errors below
        self.mapping(data, path, STAGE_KEYS, ("name", "output_size", "blocks"), "stage")
        name = data["name"]
        if not isinstance(name, str):
            raise SpecError(f"stage name must be text, got {name!r}", path=path + ("name",))
        blocks = data["blocks"]
        if blocks is None:
            blocks = []
        if not isinstance(blocks, list):
            raise SpecError(f"'blocks' must be a list, got {_kind(blocks)}",
                            path=path + ("blocks",), hint="write one '- kind [convs] xN' line per block group")
        if not blocks:
            raise SpecError("the stage has no blocks", path=path + ("blocks",),
                            hint="give it at least one block, e.g. 'basic [3x3, 64; 3x3, 64] x2'")
        groups = [self.block(b, path + ("blocks", i)) for i, b in enumerate(blocks)]
        if "downsample" in data:
            ds = self.downsample(data["downsample"], path + ("downsample",))
        else:  # the table shorthand: a strided conv is the stage's downsampling
            strided = any(c.stride > 1 for g in groups for c in g.convs)
            ds = Downsample("strided_conv" if strided else "none")
        if ds.kind == "strided_conv":
            groups = _place_stride(groups, ds.stride)
            ds = Downsample("strided_conv")
        elif ds.kind not in POOL_DOWNSAMPLES:
            ds = Downsample(ds.kind)
        channels = data.get("channels")
        if channels is not None:
            channels = self.at(path + ("channels",), notation.positive_int, channels, "channels")
        size = self.at(path + ("output_size",), notation.parse_size, data["output_size"], "output size")
        local = data.get("local_stage")
        if local is not None and not isinstance(local, str):
            raise SpecError(f"'local_stage' must be a name, got {local!r}", path=path + ("local_stage",),
                            hint="e.g. local_stage: stage1")
        return Stage(name=name, output_size=size, blocks=tuple(groups), downsample=ds, channels=channels,
                     local_stage=local)

    def head(self, data, path) -> Head:
        if data is None:
            return Head()
        self.mapping(data, path, HEAD_KEYS, (), "head")
        pool = self.at(path + ("pool",), notation.check_kind, data.get("pool", "avg"), ("avg", "max"), "head pool")
        fc = data.get("fc", 1000)
        hidden: tuple = ()
        if isinstance(fc, list):  # [hidden, ..., classifier]
            if not fc:
                raise SpecError("'fc' is an empty list", path=path + ("fc",),
                                hint="give the fc layers' sizes, e.g. fc: [4096, 4096, 1000], or fc: false")
            sizes = tuple(self.at(path + ("fc",), notation.positive_int, v, "fc size") for v in fc)
            hidden, fc = sizes[:-1], sizes[-1]
        elif fc is not None and fc is not False:
            fc = self.at(path + ("fc",), notation.positive_int, fc, "fc size")
        layers = len(hidden) + (1 if fc else 0)
        dropout = data.get("dropout", 0)
        probs = dropout if isinstance(dropout, list) else [dropout] * layers
        if isinstance(dropout, list) and len(probs) != layers:
            raise SpecError(f"'dropout' has {len(probs)} values for {layers} fc layers", path=path + ("dropout",),
                            hint="give one probability per fc layer (0: none), or one number for all")
        for p in probs:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise SpecError(f"dropout must be a probability in [0, 1), got {p!r}", path=path + ("dropout",),
                                hint="e.g. dropout: 0.5")
        activation = self.at(path + ("activation",), notation.check_kind, data.get("activation", "relu"),
                             ACTIVATIONS, "activation")
        pool_size = self.at(path + ("pool_size",), notation.positive_int, data.get("pool_size", 1), "pool size")
        ds = self.downsample(data["downsample"], path + ("downsample",)) if "downsample" in data else Downsample()
        if ds.kind not in ("none",) + POOL_DOWNSAMPLES:
            raise SpecError(f"the head's downsample must be a pool or none, got '{ds.kind}'",
                            path=path + ("downsample",), hint="e.g. downsample: maxpool 2x2, stride 2")
        features = data.get("features")
        if features is not None:
            features = self.at(path + ("features",), notation.positive_int, features, "features")
        return Head(pool=pool, fc=None if fc is False else fc, features=features, pool_size=pool_size,
                    hidden=hidden, dropout=tuple(float(p) for p in probs) if any(probs) else (),
                    activation=activation, downsample=ds)

    def spec(self, data, default_name: str) -> Spec:
        self.mapping(data, (), TOP_KEYS, ("stages",), "the spec")
        inp = self.mapping(data.get("input", {}), ("input",), INPUT_KEYS, (), "input")
        stages = data["stages"]
        if not isinstance(stages, list) or not stages:
            raise SpecError("'stages' must be a non-empty list of stages", path=("stages",),
                            hint="see docs/spec-format.md")
        for key in ("name", "title", "notes"):
            if key in data and not isinstance(data[key], str):
                raise SpecError(f"'{key}' must be text, got {data[key]!r}", path=(key,))
        if len(stages) > limits.MAX_STAGES:
            raise SpecError(f"the spec has {len(stages):,} stages, over the limit of {limits.MAX_STAGES:,}",
                            path=("stages", limits.MAX_STAGES), hint="a network has a handful of stages")
        built = []
        blocks = 0
        for i, s in enumerate(stages):
            built.append(self.stage(s, ("stages", i)))
            for j, group in enumerate(built[-1].blocks):  # the expanded count every command is linear in
                blocks += group.repeat
                if blocks > limits.MAX_BLOCKS:
                    raise SpecError(f"the spec expands to more than {limits.MAX_BLOCKS:,} blocks (repeats "
                                    f"included), the limit (archspec.limits.MAX_BLOCKS)",
                                    path=("stages", i, "blocks", j), hint="lower the repeat counts (xN)")
        return Spec(
            name=data.get("name", default_name),
            title=data.get("title", ""),
            notes=data.get("notes", ""),
            input_channels=self.at(("input", "channels"), notation.positive_int, inp.get("channels", 3),
                                   "input channels"),
            input_size=self.at(("input", "size"), notation.parse_size, inp.get("size", 224), "input size"),
            stages=tuple(built),
            head=self.head(data.get("head"), ("head",)),
        )


def _place_stride(groups: list[BlockGroup], stride: int) -> list[BlockGroup]:
    """``downsample: strided_conv`` with no stride written: stride the first block's first
    spatial conv (the torchvision 'v1.5' place; the only conv if all are 1x1)."""
    if any(c.stride > 1 for g in groups for c in g.convs):
        return groups
    first = groups[0]
    at = next((i for i, c in enumerate(first.convs) if c.kernel > 1), 0)
    convs = list(first.convs)
    convs[at] = dataclasses.replace(convs[at], stride=stride)
    return [dataclasses.replace(first, convs=tuple(convs))] + groups[1:]


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: f"'{value}'"}.get(type(value), repr(value))


def loads(text: str, source: str = "<spec>", default_name: str = "spec") -> Spec:
    """Parse and validate spec YAML text; every error names ``source:line``."""
    data, lines = _compose(text, source)
    builder = _Builder(lines, source)
    try:
        spec = builder.spec(data, default_name)
        infer_shapes(spec)
    except SpecError as err:
        if err.where:
            raise
        located = err.located(builder.where(err.path))
        located.what = located.what or builder.label(err.path)
        raise located from None
    return spec


def load(path) -> Spec:
    path = Path(path)
    text = limits.read_file(path, "spec", SpecError, "give a path to a .yaml spec or a name from specs/")
    return loads(text, source=str(path), default_name=path.stem)
