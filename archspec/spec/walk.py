"""The one walk over a spec's layers, in the order the compiled module runs them (no torch).

``walk(spec)`` yields :class:`Unit` s: each stage's entry downsampling (a pool or a bilinear
resize, where it has one), then every block (each repeat of a block group is its own block,
``number`` counting from 1 in its stage, as the module's ``blockN``), and last the head. A unit
holds its :class:`Layer` s, each an op of the cost table (archspec.profiling.costs) with the
shapes it reads and writes; the analytic profile, the split chain, the design evaluator and the
compiler all read the network from here, and what a block kind does comes from its registry
entry (archspec.spec.kinds).

``block_layers`` is pure arithmetic on the sizes: the design evaluator passes numpy arrays (one
entry per candidate network) for channels, groups, sizes and strides, and a layer that only
some candidates have (a projection shortcut) carries those as a 0/1 ``times`` mask.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from archspec.spec.kinds import KINDS, se_channels
from archspec.spec.schema import POOL_DOWNSAMPLES, BlockGroup, Conv, Downsample, Spec
from archspec.spec.validate import conv_out, infer_shapes, pool_out


@dataclass(frozen=True)
class Layer:
    """One op. ``op``: conv, bn, act, add, mul, pool (a window: ``kernel``), gpool (global or
    adaptive), interp, fc, dropout. Shapes are per image, (channels, height, width); an fc's
    are (features, 1, 1). ``times``: how many times it runs (1, or a 0/1 mask)."""

    op: str
    shape_in: tuple
    shape_out: tuple
    kernel: int = 1
    groups: int = 1
    bias: bool = False
    activation: str | None = None  # act layers: which one
    times: object = 1


@dataclass(frozen=True)
class Unit:
    """``part``: 'entry' (a stage's downsampling), 'block' or 'head'. ``residual``: a block whose
    output the block-output memory measure counts (a residual block's; in a network without
    residual blocks every conv block's)."""

    part: str
    stage: int  # index into spec.stages; the head: len(spec.stages)
    name: str  # the stage's name, or 'head'
    layers: tuple[Layer, ...]
    shape_in: tuple
    shape_out: tuple
    group: int = 0  # blocks: which group of the stage, which repeat, block number in the stage
    repeat: int = 0
    number: int = 0
    residual: bool = False


def _mask(condition):
    """A layer's ``times`` from a condition: a bool, or (numpy) a 0/1 array."""
    return condition if isinstance(condition, bool) else condition.astype("int64")


def _differs(a, b):
    diff = a != b
    return bool(diff) if isinstance(diff, bool) or getattr(diff, "ndim", 1) == 0 else diff


def conv_bn(shape_in: tuple, conv: Conv, stride, activation: str | None, times=1) -> list[Layer]:
    """A 'same'-padded conv, its batch norm and (``activation`` not None) the activation."""
    c, h, w = shape_in
    out = (conv.channels, conv_out(h, conv.kernel, stride), conv_out(w, conv.kernel, stride))
    layers = [Layer("conv", shape_in, out, conv.kernel, conv.groups, conv.bias, times=times),
              Layer("bn", out, out, times=times)]
    if activation is not None:
        layers.append(Layer("act", out, out, activation=activation, times=times))
    return layers


def se_layers(shape: tuple, ratio: float) -> list[Layer]:
    """Squeeze-excitation on a (c, h, w) map: global pool, 1x1 conv + bias, ReLU, 1x1 conv + bias,
    sigmoid, product (archspec.nn.blocks.SqueezeExcite)."""
    c = shape[0]
    s = se_channels(c, ratio)
    return [Layer("gpool", shape, (c, 1, 1)), Layer("conv", (c, 1, 1), (s, 1, 1), bias=True),
            Layer("act", (s, 1, 1), (s, 1, 1), activation="relu"), Layer("conv", (s, 1, 1), (c, 1, 1), bias=True),
            Layer("act", (c, 1, 1), (c, 1, 1), activation="sigmoid"), Layer("mul", shape, shape)]


def block_layers(group: BlockGroup, shape_in: tuple, first: bool) -> tuple[list[Layer], tuple]:
    """The layers of one block of ``group`` entered with ``shape_in``; strides act in the first
    block of a group only. Returns the layers and the shape the block produces."""
    kind = KINDS[group.kind]
    layers: list[Layer] = []
    shape, last = shape_in, len(group.convs) - 1
    se_after = None if group.se is None else kind.se_after(len(group.convs))
    for i, conv in enumerate(group.convs):
        act = group.activation if kind.act_after_last or i < last else None
        layers += conv_bn(shape, conv, conv.stride if first else 1, act)
        shape = layers[-1].shape_out
        if i == se_after:
            layers += se_layers(shape, group.se)
    reshaped = _differs(shape_in[0], shape[0]) | _differs(shape_in[1], shape[1]) | _differs(shape_in[2], shape[2])
    if kind.shortcut == "always":
        if group.shortcut == "projection" and reshaped is not False:  # 1x1 conv + BN where the shape changes
            times = _mask(reshaped)  # (strided as the main path: it produces the block's shape)
            layers += [Layer("conv", shape_in, shape, times=times), Layer("bn", shape, shape, times=times)]
        layers += [Layer("add", shape, shape), Layer("act", shape, shape, activation=group.activation)]
    elif kind.shortcut == "same_shape" and reshaped is not True:  # identity only where the shape stays
        layers.append(Layer("add", shape, shape, times=_mask(not reshaped if isinstance(reshaped, bool) else ~reshaped)))
    return layers, shape


def entry_layers(ds: Downsample, shape_in: tuple, output_size=None) -> list[Layer]:
    """What enters a stage before its first block: a max or average pool, a bilinear resize (to
    the stage's ``output_size``), or nothing (a strided conv is part of the first block)."""
    c, h, w = shape_in
    if ds.kind in POOL_DOWNSAMPLES:
        out = (c, pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride))
        return [Layer("pool", shape_in, out, kernel=ds.kernel)]
    if ds.kind == "bilinear":
        return [Layer("interp", shape_in, (c, *output_size))]
    return []


def head_layers(spec: Spec, shape_in: tuple) -> list[Layer]:
    """[A pool;] pooling to pool_size x pool_size, then every fc layer: its dropout, the fc (with a
    bias) and, for hidden layers, the activation."""
    head = spec.head
    layers = entry_layers(head.downsample, shape_in) if head.downsample.kind in POOL_DOWNSAMPLES else []
    if layers:
        shape_in = layers[-1].shape_out
    c = shape_in[0]
    width = c * head.pool_size ** 2
    layers.append(Layer("gpool", shape_in, (c, head.pool_size, head.pool_size)))
    for i, out in enumerate(head.fc_layers):
        if head.dropout_before(i):
            layers.append(Layer("dropout", (width, 1, 1), (width, 1, 1)))
        layers.append(Layer("fc", (width, 1, 1), (out, 1, 1), bias=True))
        if i < len(head.hidden):
            layers.append(Layer("act", (out, 1, 1), (out, 1, 1), activation=head.activation))
        width = out
    return layers


def walk(spec: Spec) -> Iterator[Unit]:
    """Every unit of ``spec`` in execution order (the spec is validated first)."""
    shapes = infer_shapes(spec)
    plain = not spec.has_residual_blocks
    for si, (stage, stage_shape) in enumerate(zip(spec.stages, shapes)):
        shape = stage_shape.in_shape
        entry = entry_layers(stage.downsample, shape, stage.output_size)
        if entry:
            yield Unit("entry", si, stage.name, tuple(entry), shape, entry[-1].shape_out)
            shape = entry[-1].shape_out
        number = 0
        for gi, group in enumerate(stage.blocks):
            for rep in range(group.repeat):
                number += 1
                layers, out = block_layers(group, shape, first=rep == 0)
                yield Unit("block", si, stage.name, tuple(layers), shape, out, gi, rep, number,
                           residual=KINDS[group.kind].residual or plain)
                shape = out
    head = head_layers(spec, shapes[-1].out_shape)
    yield Unit("head", len(spec.stages), "head", tuple(head), shapes[-1].out_shape, head[-1].shape_out)
