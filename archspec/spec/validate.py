"""Semantic checks of a Spec, and the shapes it implies (no torch needed).

``infer_shapes`` walks the network the way the compiled module will run it and raises a
SpecError, carrying the spec path of the culprit, for anything that cannot be built or
that contradicts what the spec declares.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from archspec.errors import SpecError
from archspec.spec.kinds import KINDS
from archspec.spec.notation import format_size
from archspec.spec.schema import (ACTIVATIONS, DOWNSAMPLE_KINDS, POOL_DOWNSAMPLES,
                                  POOL_KINDS, SHORTCUT_KINDS, BlockGroup, Spec)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_NAMES = ("head",)


# Attributes of the compiled StagedNet (an nn.Module): a stage of that name would shadow them.
# Kept here so that loading a spec needs no torch; tests/test_specs.py checks it against torch.
MODULE_ATTRIBUTES = frozenset("""
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
    dump_patches eval expected_shapes extra_repr float forward get_buffer get_extra_state
    get_parameter get_submodule half ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook representation requires_grad_
    set_extra_state set_submodule share_memory spec stage_names stages state_dict to to_empty train
    training type xpu zero_grad
""".split())


def _clashes_with_module(name: str) -> bool:
    return name.startswith("_") or name in MODULE_ATTRIBUTES


@dataclass(frozen=True)
class StageShape:
    name: str
    in_shape: tuple[int, int, int]  # (channels, height, width) entering the stage
    out_shape: tuple[int, int, int]


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output length of a 'same'-padded conv or pool (padding kernel // 2)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def pool_out(size: int, kernel: int, stride: int) -> int:
    """Output length of a pool with padding (kernel - 1) // 2 (odd kernels: 'same' as a conv;
    2x2 stride 2 halves an even size)."""
    return (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


def _positive(value, what: str, path: tuple, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{label} must be a positive integer, got {value!r}", what=what, path=path)


def infer_shapes(spec: Spec) -> list[StageShape]:
    """Validate ``spec`` and return each stage's input and output shape."""
    if not spec.stages:
        raise SpecError("the network has no stages", path=("stages",),
                        hint="list at least one stage under 'stages:'")
    _positive(spec.input_channels, "input", ("input", "channels"), "input channels")
    for i, side in enumerate(("height", "width")):
        _positive(spec.input_size[i], "input", ("input", "size"), f"input {side}")

    seen: dict[str, int] = {}
    shapes: list[StageShape] = []
    c, h, w = spec.input_channels, *spec.input_size
    for si, stage in enumerate(spec.stages):
        spath = ("stages", si)
        what = f"stage '{stage.name}'"
        if not isinstance(stage.name, str) or not _NAME.fullmatch(stage.name):
            raise SpecError(f"stage name {stage.name!r} is not a plain identifier", what=f"stage {si + 1}",
                            path=spath + ("name",), hint="use letters, digits and '_', e.g. res2")
        if stage.name in RESERVED_NAMES:
            raise SpecError(f"'{stage.name}' is reserved for the head", what=what, path=spath + ("name",),
                            hint="give the stage another name")
        if _clashes_with_module(stage.name):
            problem = "starts with '_'" if stage.name.startswith("_") else "clashes with an attribute of the compiled module"
            raise SpecError(f"stage name '{stage.name}' {problem}",
                            what=what, path=spath + ("name",), hint="give the stage another name, e.g. res2")
        if stage.name in seen:
            raise SpecError(f"stage name '{stage.name}' is used twice (also stage {seen[stage.name] + 1})",
                            what=what, path=spath + ("name",), hint="stage names must be unique")
        seen[stage.name] = si
        if stage.local_stage is not None:
            if not isinstance(stage.local_stage, str) or not _NAME.fullmatch(stage.local_stage):
                raise SpecError(f"local_stage {stage.local_stage!r} is not a plain identifier", what=what,
                                path=spath + ("local_stage",), hint="use letters, digits and '_', e.g. stage1")
            earlier = [s for s in spec.stages[:si] if s.local_stage == stage.local_stage]
            if earlier and spec.stages[si - 1].local_stage != stage.local_stage:
                raise SpecError(f"local_stage '{stage.local_stage}' is split: stage '{earlier[0].name}' has it too, "
                                "with other stages between", what=what, path=spath + ("local_stage",),
                                hint="the stages of one local stage must be consecutive")
        if not stage.blocks:
            raise SpecError("the stage has no blocks", what=what, path=spath + ("blocks",),
                            hint="give it at least one block, e.g. 'basic [3x3, 64; 3x3, 64] x2'")
        for i, side in enumerate(("height", "width")):
            _positive(stage.output_size[i], what, spath + ("output_size",), f"output {side}")
        in_shape = (c, h, w)

        ds = stage.downsample
        if ds.kind not in DOWNSAMPLE_KINDS:
            raise SpecError(f"unknown downsample '{ds.kind}'", what=what, path=spath + ("downsample",),
                            hint=f"use one of: {', '.join(DOWNSAMPLE_KINDS)}")
        strided = any(conv.stride > 1 for g in stage.blocks for conv in g.convs)
        if ds.kind in POOL_DOWNSAMPLES:
            h, w = _pool(ds, h, w, what, spath + ("downsample",))
        elif ds.kind == "bilinear":
            th, tw = stage.output_size
            if th > h or tw > w:
                raise SpecError(f"bilinear downsampling to {format_size(stage.output_size)} would enlarge "
                                f"its {h}x{w} input", what=what, path=spath + ("output_size",),
                                hint="a stage's output size must not exceed what enters it")
            h, w = th, tw
        if strided and ds.kind != "strided_conv":
            raise SpecError(f"a conv has a stride but the stage's downsample is '{ds.kind}'", what=what,
                            path=spath + ("downsample",),
                            hint="write 'downsample: strided_conv', or remove the conv's stride")
        if ds.kind == "strided_conv" and not strided:
            raise SpecError("downsample is 'strided_conv' but no conv has a stride", what=what,
                            path=spath + ("downsample",), hint="add 'stride 2' to a conv of the first block")

        for bi, group in enumerate(stage.blocks):
            bpath = spath + ("blocks", bi)
            bwhat = f"{what} block {bi + 1}"
            if group.kind not in KINDS:
                raise SpecError(f"unknown block kind '{group.kind}'", what=bwhat, path=bpath,
                                hint=f"use one of: {', '.join(KINDS)}")
            _positive(group.repeat, bwhat, bpath + ("repeat",), "repeat count")
            kind = KINDS[group.kind]
            need = kind.convs
            if not group.convs or (need is not None and len(group.convs) not in need):
                count = " or ".join(map(str, need)) if need else "at least 1"
                raise SpecError(f"a {group.kind} block has {count} convs, this one has "
                                f"{len(group.convs)}", what=bwhat, path=bpath + ("convs",),
                                hint=", ".join(k.conv_hint for k in KINDS.values() if k.conv_hint))
            _check_options(group, bwhat, bpath)
            for rep in range(group.repeat if group.repeat <= 2 else 2):  # repeats >1 all look alike
                cin = c
                for ki, conv in enumerate(group.convs):
                    cpath = bpath + ("convs", ki)
                    cwhat = f"{bwhat} conv {ki + 1}"
                    for label in ("kernel", "channels", "groups", "stride"):
                        _positive(getattr(conv, label), cwhat, cpath, label)
                    if kind.check_conv is not None:
                        kind.check_conv(group, ki, cin, cwhat, cpath)
                    if conv.kernel % 2 == 0:
                        raise SpecError(f"kernel {conv.kernel}x{conv.kernel} has an even size", what=cwhat,
                                        path=cpath, hint="use an odd kernel (1x1, 3x3, 5x5, 7x7)")
                    for chans, side in ((cin, "input"), (conv.channels, "output")):
                        if chans % conv.groups:
                            raise SpecError(f"{conv.groups} groups do not divide the conv's {chans} {side} "
                                            f"channels", what=cwhat, path=cpath,
                                            hint=f"use a group count that divides {chans}, "
                                                 f"e.g. {_divisors_hint(chans)}")
                    stride = conv.stride if rep == 0 else 1
                    h, w = conv_out(h, conv.kernel, stride), conv_out(w, conv.kernel, stride)
                    if h < 1 or w < 1:
                        raise SpecError("the feature map shrinks to nothing", what=cwhat, path=cpath,
                                        hint="use fewer strides or a larger input")
                    cin = conv.channels
                if kind.chooses_shortcut and group.shortcut == "pad" and cin < c:
                    raise SpecError(f"a zero-pad shortcut cannot shrink {c} channels to {cin}", what=bwhat,
                                    path=bpath, hint="use the default projection shortcut, or widen the block")
                c = cin

        if (h, w) != tuple(stage.output_size):
            if ds.kind == "none":
                hint = (f"the stage has no downsampling and receives {h}x{w}; declare output_size: {h}x{w}, "
                        f"or add 'downsample: bilinear' to resize to {format_size(stage.output_size)}")
            else:
                hint = f"its layers produce {h}x{w}; declare output_size: {h}x{w} or change the strides"
            raise SpecError(f"declared output size {format_size(stage.output_size)} is not what the stage "
                            f"produces ({h}x{w})", what=what, path=spath + ("output_size",), hint=hint)
        if stage.channels is not None and stage.channels != c:
            raise SpecError(f"declared channels {stage.channels} but the last block gives {c}", what=what,
                            path=spath + ("channels",), hint=f"declare channels: {c} or change the last conv")
        shapes.append(StageShape(stage.name, in_shape, (c, h, w)))

    head = spec.head
    if head.pool not in POOL_KINDS:
        raise SpecError(f"unknown head pool '{head.pool}'", what="head", path=("head", "pool"),
                        hint=f"use one of: {', '.join(POOL_KINDS)}")
    if head.downsample.kind in POOL_DOWNSAMPLES:
        h, w = _pool(head.downsample, h, w, "head", ("head", "downsample"))
    elif head.downsample.kind != "none":
        raise SpecError(f"the head's downsample must be a pool or none, got '{head.downsample.kind}'", what="head",
                        path=("head", "downsample"), hint="e.g. downsample: maxpool 2x2, stride 2")
    _positive(head.pool_size, "head", ("head", "pool_size"), "pool size")
    for size in head.fc_layers:
        _positive(size, "head", ("head", "fc"), "fc size")
    if head.activation not in ACTIVATIONS:
        raise SpecError(f"unknown activation '{head.activation}'", what="head", path=("head", "activation"),
                        hint=f"use one of: {', '.join(ACTIVATIONS)}")
    features = c * head.pool_size ** 2
    if head.features is not None and head.features != features:
        pooled = f" pooled to {head.pool_size}x{head.pool_size}" if head.pool_size != 1 else ""
        raise SpecError(f"declared features {head.features} but the last stage '{spec.stages[-1].name}'{pooled} "
                        f"gives {features}", what="head", path=("head", "features"),
                        hint=f"declare features: {features}, or change the last stage's width")
    return shapes


def _pool(ds, h: int, w: int, what: str, path: tuple) -> tuple[int, int]:
    name = "max pool" if ds.kind == "maxpool" else "average pool"
    _positive(ds.kernel, what, path, f"{name} kernel")
    _positive(ds.stride, what, path, f"{name} stride")
    h, w = pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride)
    if h < 1 or w < 1:
        raise SpecError(f"the {name} shrinks the feature map to nothing", what=what, path=path,
                        hint="use a smaller pool kernel or a larger input")
    return h, w


def _check_options(group: BlockGroup, what: str, path: tuple) -> None:
    if group.activation not in ACTIVATIONS:
        raise SpecError(f"unknown activation '{group.activation}'", what=what, path=path,
                        hint=f"use one of: {', '.join(ACTIVATIONS)}")
    if group.shortcut not in SHORTCUT_KINDS:
        raise SpecError(f"unknown shortcut '{group.shortcut}'", what=what, path=path,
                        hint=f"use one of: {', '.join(SHORTCUT_KINDS)}")
    if group.shortcut != "projection" and not KINDS[group.kind].chooses_shortcut:
        raise SpecError(f"{group.kind} blocks have no shortcut to choose", what=what, path=path,
                        hint="'shortcut: pad' is for basic and bottleneck blocks")
    if group.se is not None and not (isinstance(group.se, (int, float)) and 0 < group.se <= 1):
        raise SpecError(f"se must be a ratio in (0, 1], got {group.se!r}", what=what, path=path, hint="e.g. se: 0.25")


def _divisors_hint(n: int) -> str:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(str(d) for d in divs[:6]) + (" ..." if len(divs) > 6 else "")
