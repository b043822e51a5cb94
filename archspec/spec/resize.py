"""A spec at another input resolution: every declared output size follows."""
from __future__ import annotations

import dataclasses

from archspec.errors import SpecError
from archspec.spec.notation import format_size
from archspec.spec.schema import POOL_DOWNSAMPLES, Spec
from archspec.spec.validate import conv_out, pool_out


def at_input_size(spec: Spec, size: tuple[int, int]) -> Spec:
    """``spec`` fed ``size`` images: sizes that strides and pools produce are recomputed, and
    bilinear targets scale with the input (rounded), e.g. PResNet-50 at 112: 18, 12, 8, 6, 4."""
    size = tuple(size)
    if size == tuple(spec.input_size):
        return spec
    h, w = size
    stages = []
    for stage in spec.stages:
        ds = stage.downsample
        if ds.kind in POOL_DOWNSAMPLES:
            h, w = pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride)
        elif ds.kind == "bilinear":
            h = max(1, round(stage.output_size[0] * size[0] / spec.input_size[0]))
            w = max(1, round(stage.output_size[1] * size[1] / spec.input_size[1]))
        for group in stage.blocks:
            for rep in range(group.repeat):
                for conv in group.convs:
                    stride = conv.stride if rep == 0 else 1
                    h, w = conv_out(h, conv.kernel, stride), conv_out(w, conv.kernel, stride)
        if h < 1 or w < 1:
            raise SpecError(f"input size {format_size(size)} is too small for {spec.name}: stage "
                            f"'{stage.name}' shrinks it to nothing", hint="use a larger --size")
        stages.append(dataclasses.replace(stage, output_size=(h, w)))
    return dataclasses.replace(spec, input_size=size, stages=tuple(stages))
