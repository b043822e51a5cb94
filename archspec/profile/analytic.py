"""Analytic counts derived from the Spec alone, pycls-style: no torch, no module.

They are an independent cross-check of the traced counts (tests hold the two equal) and
fast enough for design-space search.
"""
from __future__ import annotations

from archspec.spec.schema import RESIDUAL_KINDS, BlockGroup, Spec
from archspec.spec.validate import infer_shapes


def conv_bn_params(cin: int, conv_kernel: int, cout: int, groups: int = 1) -> int:
    """A bias-free conv followed by an affine batch norm (weight and bias per channel)."""
    return conv_kernel * conv_kernel * (cin // groups) * cout + 2 * cout


def block_params(group: BlockGroup, cin: int, first: bool) -> int:
    """One block of ``group``; ``first`` is the group's first block (where strides act)."""
    total, c = 0, cin
    for conv in group.convs:
        total += conv_bn_params(c, conv.kernel, conv.channels, conv.groups)
        c = conv.channels
    if group.kind in RESIDUAL_KINDS and (cin != c or (first and group.stride > 1)):
        total += conv_bn_params(cin, 1, c)  # 1x1 projection shortcut
    return total


def stage_params(spec: Spec) -> dict[str, int]:
    """Parameters per stage, the head last (its fc weight and bias)."""
    shapes = infer_shapes(spec)
    out: dict[str, int] = {}
    for stage, shape in zip(spec.stages, shapes):
        c = shape.in_shape[0]
        total = 0
        for group in stage.blocks:
            for rep in range(group.repeat):
                total += block_params(group, c, rep == 0)
                c = group.out_channels
        out[stage.name] = total
    fc = spec.head.fc
    out["head"] = spec.features * fc + fc if fc else 0
    return out
