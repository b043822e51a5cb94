"""The modules a spec compiles to: conv-BN(-ReLU), residual blocks, resizing, the head."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from archspec.spec.schema import RESIDUAL_KINDS, Conv, Downsample, Head
from archspec.spec.validate import conv_out


class ConvBN(nn.Sequential):
    """A bias-free 'same'-padded conv, batch norm, and optionally ReLU."""

    def __init__(self, cin: int, conv: Conv, stride: int, relu: bool):
        layers = [("conv", nn.Conv2d(cin, conv.channels, conv.kernel, stride=stride, padding=conv.kernel // 2,
                                     groups=conv.groups, bias=False)),
                  ("bn", nn.BatchNorm2d(conv.channels))]
        if relu:
            layers.append(("relu", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))


class ConvChain(nn.Sequential):
    """A ``conv`` block: conv-BN-ReLU for every conv, no shortcut (e.g. the stem)."""

    def __init__(self, cin: int, convs: tuple[Conv, ...], first: bool):
        layers = {}
        for i, conv in enumerate(convs):
            layers[f"conv{i + 1}"] = ConvBN(cin, conv, conv.stride if first else 1, relu=True)
            cin = conv.channels
        super().__init__(OrderedDict(layers))


class ResidualBlock(nn.Module):
    """ReLU(main(x) + shortcut(x)): ReLU after every conv of ``main`` but the last; the
    shortcut is a 1x1 conv + BN projection where channels or size change, else identity.

    ``size`` is the (height, width) entering the block. A stride changes the size of any map
    but a 1x1 one (which it leaves 1x1); without ``size`` a stride counts as a change."""

    def __init__(self, cin: int, convs: tuple[Conv, ...], first: bool, size: tuple[int, int] | None = None):
        super().__init__()
        layers, c, stride = {}, cin, 1
        hw = None if size is None else tuple(size)
        for i, conv in enumerate(convs):
            s = conv.stride if first else 1
            layers[f"conv{i + 1}"] = ConvBN(c, conv, s, relu=i < len(convs) - 1)
            c, stride = conv.channels, stride * s
            if hw is not None:
                hw = tuple(conv_out(n, conv.kernel, s) for n in hw)
        self.main = nn.Sequential(OrderedDict(layers))
        resized = stride != 1 if size is None else hw != tuple(size)
        if cin != c or resized:
            self.shortcut = ConvBN(cin, Conv(kernel=1, channels=c), stride, relu=False)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.main(x) + self.shortcut(x))


class Resize(nn.Module):
    """Bilinear interpolation to a fixed size (align_corners=False), PResNet's downsampling."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode=bilinear"


def downsample_module(ds: Downsample, output_size) -> nn.Module | None:
    if ds.kind == "maxpool":
        return nn.MaxPool2d(ds.kernel, stride=ds.stride, padding=ds.kernel // 2)
    if ds.kind == "bilinear":
        return Resize(output_size)
    return None  # 'none', or a strided conv that lives inside the first block


def block_module(kind: str, cin: int, convs: tuple[Conv, ...], first: bool,
                 size: tuple[int, int] | None = None) -> nn.Module:
    if kind in RESIDUAL_KINDS:
        return ResidualBlock(cin, convs, first, size)
    return ConvChain(cin, convs, first)


class PoolHead(nn.Module):
    """Global pooling to the representation, then the fc classifier (if any)."""

    def __init__(self, head: Head, features: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if head.pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(features, head.fc) if head.fc else nn.Identity()

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.representation(x))
