"""Analytic counts derived from the Spec alone, pycls-style: no torch, no module.

They are an independent cross-check of the traced counts (tests hold the two equal) and
fast enough for design-space search. All counts are per image, forward pass.

Cost of each op class, in multiply-accumulates (MACs; FLOPs = 2 x MACs), see docs/profile.md:

    conv     Cout * Hout * Wout * (Cin / groups) * k * k   (depthwise convs too; the bias is 'bias')
    fc       in_features * out_features                    (the bias is 'bias')
    bias     1 per output element of a conv or fc that has a bias
    bn       1 per element (batch norm's per-channel scale and shift)
    norm     1 per element (layer norm, group norm; instance norm runs as batch norm: 'bn')
    relu     1 per element (ReLU)
    act      1 per element (every other activation: ReLU6/Hardtanh, LeakyReLU, GELU, SiLU,
             Hardswish, Hardsigmoid, Sigmoid, Tanh, ELU, Softplus)
    add      1 per element (residual additions)
    mul      1 per element (elementwise products: squeeze-excitation's gating)
    pool     k * k per output element (max and average pools with a window); 1 per input element
             (global and adaptive pools)
    interp   4 per output element (bilinear: a weighted sum of 4 neighbours)
    dropout  1 per element (the mask's product; training mode only)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from archspec.spec.schema import POOL_DOWNSAMPLES, RESIDUAL_KINDS, BlockGroup, Downsample, Spec
from archspec.spec.validate import conv_out, infer_shapes, pool_out

# The op classes every count is broken down by, in the order tables show them.
OP_CLASSES = ("conv", "fc", "bias", "bn", "norm", "relu", "act", "add", "mul", "pool", "interp", "dropout")


def conv_bn_params(cin: int, kernel: int, cout: int, groups: int = 1, bias: bool = False) -> int:
    """A conv (bias where the spec asks) followed by an affine batch norm (weight and bias per channel)."""
    return kernel * kernel * (cin // groups) * cout + (cout if bias else 0) + 2 * cout


def act_class(activation: str) -> str:
    """The op class an activation's cost goes to."""
    return "relu" if activation == "relu" else "act"


@dataclass
class StageCounts:
    """What one stage costs, per image. ``plain``: the network has no residual blocks, so every
    conv block's output counts as a block output (there are no residual ones to count)."""

    name: str
    params: int = 0
    macs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 0))
    output_elems: int = 0  # the stage's output feature map
    conv_output_elems: int = 0  # every conv's output (projection shortcuts and SE's 1x1 convs included)
    block_output_elems: int = 0  # every residual block's output (the paper's Table 6 memory)
    plain: bool = False

    def add_conv(self, cin: int, kernel: int, cout: int, groups: int, h: int, w: int, act: str | None,
                 bias: bool = False) -> None:
        n = cout * h * w
        self.params += conv_bn_params(cin, kernel, cout, groups, bias)
        self.macs["conv"] += n * (cin // groups) * kernel * kernel
        self.macs["bias"] += n if bias else 0
        self.macs["bn"] += n
        if act is not None:
            self.macs[act_class(act)] += n
        self.conv_output_elems += n

    def add_se(self, c: int, ratio: float, h: int, w: int) -> None:
        """Squeeze-excitation on a (c, h, w) map: pool, 1x1 conv + bias, ReLU, 1x1 conv + bias,
        sigmoid, product (archspec.nn.blocks.SqueezeExcite)."""
        s = max(1, int(c * ratio))
        self.params += c * s + s + s * c + c
        self.macs["pool"] += c * h * w
        self.macs["conv"] += c * s + s * c
        self.macs["bias"] += s + c
        self.macs["relu"] += s
        self.macs["act"] += c
        self.macs["mul"] += c * h * w
        self.conv_output_elems += s + c


def _block(counts: StageCounts, group: BlockGroup, c: int, h: int, w: int, first: bool):
    """Count one block of ``group`` entered with (c, h, w); returns the shape it produces."""
    cin, hin, win = c, h, w
    last = len(group.convs) - 1
    chain = group.kind == "conv"
    se_after = None if group.se is None else (last - 1 if group.kind == "inverted" else last)
    for i, conv in enumerate(group.convs):
        stride = conv.stride if first else 1
        h, w = conv_out(h, conv.kernel, stride), conv_out(w, conv.kernel, stride)
        act = group.activation if chain or i < last else None
        counts.add_conv(c, conv.kernel, conv.channels, conv.groups, h, w, act, conv.bias)
        if i == se_after:
            counts.add_se(conv.channels, group.se, h, w)
        c = conv.channels
    reshaped = cin != c or (hin, win) != (h, w)
    if group.kind in ("basic", "bottleneck"):
        if reshaped and group.shortcut == "projection":
            counts.add_conv(cin, 1, c, 1, h, w, act=None)  # 1x1 projection shortcut
        counts.macs["add"] += c * h * w
        counts.macs[act_class(group.activation)] += c * h * w
    elif group.kind == "inverted" and not reshaped:
        counts.macs["add"] += c * h * w  # identity shortcut, no activation after it
    if group.kind in RESIDUAL_KINDS or counts.plain:
        counts.block_output_elems += c * h * w
    return c, h, w


def pool_macs(ds: Downsample, c: int, h: int, w: int) -> int:
    """A max or average pool producing (c, h, w): kernel^2 per output element."""
    return c * h * w * ds.kernel * ds.kernel


def stage_counts(spec: Spec) -> dict[str, StageCounts]:
    """Counts per stage, the head last (pooling and the fc layers)."""
    out: dict[str, StageCounts] = {}
    shapes = infer_shapes(spec)
    plain = not spec.has_residual_blocks
    for stage, shape in zip(spec.stages, shapes):
        counts = StageCounts(stage.name, plain=plain)
        c, h, w = shape.in_shape
        ds = stage.downsample
        if ds.kind in POOL_DOWNSAMPLES:
            h, w = pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride)
            counts.macs["pool"] += pool_macs(ds, c, h, w)
        elif ds.kind == "bilinear":
            h, w = stage.output_size
            counts.macs["interp"] += 4 * c * h * w
        for group in stage.blocks:
            for rep in range(group.repeat):
                c, h, w = _block(counts, group, c, h, w, first=rep == 0)
        counts.output_elems = c * h * w
        out[stage.name] = counts
    out["head"] = head_counts(spec, shapes[-1].out_shape)
    return out


def head_counts(spec: Spec, in_shape: tuple[int, int, int]) -> StageCounts:
    """[A pool;] pooling (1 per input element: global and adaptive pools), then every fc layer:
    its dropout (1 per input element), weights, bias and (hidden layers) activation."""
    head, counts = spec.head, StageCounts("head")
    c, h, w = in_shape
    if head.downsample.kind in POOL_DOWNSAMPLES:
        ds = head.downsample
        h, w = pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride)
        counts.macs["pool"] += pool_macs(ds, c, h, w)
    counts.macs["pool"] += c * h * w
    width = c * head.pool_size ** 2
    for i, out in enumerate(head.fc_layers):
        counts.macs["dropout"] += width if head.dropout_before(i) else 0
        counts.params += width * out + out
        counts.macs["fc"] += width * out
        counts.macs["bias"] += out
        if i < len(head.hidden):
            counts.macs[act_class(head.activation)] += out
        width = out
    counts.output_elems = width
    return counts


def stage_params(spec: Spec) -> dict[str, int]:
    """Parameters per stage, the head last (its fc weight and bias)."""
    return {name: counts.params for name, counts in stage_counts(spec).items()}
