"""Analytic counts derived from the Spec alone, pycls-style: no torch, no module.

They are an independent cross-check of the traced counts (tests hold the two equal) and
fast enough for design-space search. All counts are per image, forward pass.

Cost of each op class, in multiply-accumulates (MACs; FLOPs = 2 x MACs), see docs/profile.md:

    conv     Cout * Hout * Wout * (Cin / groups) * k * k   (depthwise convs too; the bias is 'bias')
    fc       in_features * out_features                    (the bias is 'bias')
    bias     1 per output element of a conv or fc that has a bias
    bn       1 per element (batch norm's per-channel scale and shift)
    norm     1 per element (layer norm, group norm, instance norm)
    relu     1 per element (ReLU)
    act      1 per element (every other activation: ReLU6, LeakyReLU, GELU, SiLU, Hardswish,
             Sigmoid, Tanh, ...)
    add      1 per element (residual additions)
    mul      1 per element (elementwise products: squeeze-excitation's gating)
    pool     k * k per output element (max and average pools with a window); 1 per input element
             (global and adaptive pools)
    interp   4 per output element (bilinear: a weighted sum of 4 neighbours)
    dropout  1 per element (the mask's product; training mode only)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from archspec.spec.schema import RESIDUAL_KINDS, BlockGroup, Spec
from archspec.spec.validate import conv_out, infer_shapes

# The op classes every count is broken down by, in the order tables show them.
OP_CLASSES = ("conv", "fc", "bias", "bn", "norm", "relu", "act", "add", "mul", "pool", "interp", "dropout")


def conv_bn_params(cin: int, kernel: int, cout: int, groups: int = 1) -> int:
    """A bias-free conv followed by an affine batch norm (weight and bias per channel)."""
    return kernel * kernel * (cin // groups) * cout + 2 * cout


@dataclass
class StageCounts:
    """What one stage costs, per image."""

    name: str
    params: int = 0
    macs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 0))
    output_elems: int = 0  # the stage's output feature map
    conv_output_elems: int = 0  # every conv's output (projection shortcuts included)
    block_output_elems: int = 0  # every residual block's output (the paper's Table 6 memory)

    def add_conv(self, cin: int, kernel: int, cout: int, groups: int, h: int, w: int, relu: bool) -> None:
        n = cout * h * w
        self.params += conv_bn_params(cin, kernel, cout, groups)
        self.macs["conv"] += n * (cin // groups) * kernel * kernel
        self.macs["bn"] += n
        self.macs["relu"] += n if relu else 0
        self.conv_output_elems += n


def _block(counts: StageCounts, group: BlockGroup, c: int, h: int, w: int, first: bool):
    """Count one block of ``group`` entered with (c, h, w); returns the shape it produces."""
    cin, hin, win = c, h, w
    last = len(group.convs) - 1
    for i, conv in enumerate(group.convs):
        stride = conv.stride if first else 1
        h, w = conv_out(h, conv.kernel, stride), conv_out(w, conv.kernel, stride)
        residual = group.kind in RESIDUAL_KINDS
        counts.add_conv(c, conv.kernel, conv.channels, conv.groups, h, w, relu=not residual or i < last)
        c = conv.channels
    if group.kind in RESIDUAL_KINDS:
        if cin != c or (hin, win) != (h, w):
            counts.add_conv(cin, 1, c, 1, h, w, relu=False)  # 1x1 projection shortcut
        counts.macs["add"] += c * h * w
        counts.macs["relu"] += c * h * w
        counts.block_output_elems += c * h * w
    return c, h, w


def stage_counts(spec: Spec) -> dict[str, StageCounts]:
    """Counts per stage, the head last (global pool and fc)."""
    out: dict[str, StageCounts] = {}
    for stage, shape in zip(spec.stages, infer_shapes(spec)):
        counts = StageCounts(stage.name)
        c, h, w = shape.in_shape
        ds = stage.downsample
        if ds.kind == "maxpool":
            h, w = conv_out(h, ds.kernel, ds.stride), conv_out(w, ds.kernel, ds.stride)
            counts.macs["pool"] += c * h * w * ds.kernel * ds.kernel
        elif ds.kind == "bilinear":
            h, w = stage.output_size
            counts.macs["interp"] += 4 * c * h * w
        for group in stage.blocks:
            for rep in range(group.repeat):
                c, h, w = _block(counts, group, c, h, w, first=rep == 0)
        counts.output_elems = c * h * w
        out[stage.name] = counts
    head = StageCounts("head")
    c, h, w = infer_shapes(spec)[-1].out_shape
    head.macs["pool"] = c * h * w  # global average (or max) pool: one op per input element
    if spec.head.fc:
        head.params = c * spec.head.fc + spec.head.fc
        head.macs["fc"] = c * spec.head.fc
        head.macs["bias"] = spec.head.fc
    head.output_elems = spec.head.fc or c
    out["head"] = head
    return out


def stage_params(spec: Spec) -> dict[str, int]:
    """Parameters per stage, the head last (its fc weight and bias)."""
    return {name: counts.params for name, counts in stage_counts(spec).items()}
