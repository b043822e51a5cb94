"""The modules a spec compiles to: conv-BN(-act), residual and inverted residual blocks,
squeeze-excitation, resizing, the head."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from archspec.spec.kinds import kind_of, se_channels
from archspec.spec.schema import BlockGroup, Conv, Downsample, Head
from archspec.spec.validate import conv_out

ACTIVATION_MODULES = {"relu": lambda: nn.ReLU(inplace=True), "relu6": lambda: nn.ReLU6(inplace=True),
                      "silu": lambda: nn.SiLU(inplace=True), "gelu": nn.GELU,
                      "hardswish": lambda: nn.Hardswish(inplace=True)}


def activation(name: str) -> nn.Module:
    return ACTIVATION_MODULES[name]()


class ConvBN(nn.Sequential):
    """A 'same'-padded conv (bias only where the spec asks), batch norm, and optionally an
    activation (``act``: its name, or None)."""

    def __init__(self, cin: int, conv: Conv, stride: int, act: str | None):
        layers = [("conv", nn.Conv2d(cin, conv.channels, conv.kernel, stride=stride, padding=conv.kernel // 2,
                                     groups=conv.groups, bias=conv.bias)),
                  ("bn", nn.BatchNorm2d(conv.channels))]
        if act is not None:
            layers.append(("relu" if act == "relu" else "act", activation(act)))
        super().__init__(OrderedDict(layers))


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(avgpool(x))))), the fcs as 1x1 convs with bias."""

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        squeeze = se_channels(channels, ratio)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class PadShortcut(nn.Module):
    """Option A (He et al. 2016, CIFAR ResNets): subsample by the stride, append zero channels."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra = stride, extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.extra}"


def _main_path(cin: int, group: BlockGroup, first: bool, size, se_after: int | None):
    """The convs of one block (activation after all but the last), SE after conv ``se_after``;
    returns (module, channels out, total stride, size out or None)."""
    layers, c, stride = {}, cin, 1
    hw = None if size is None else tuple(size)
    last = len(group.convs) - 1
    for i, conv in enumerate(group.convs):
        s = conv.stride if first else 1
        layers[f"conv{i + 1}"] = ConvBN(c, conv, s, act=group.activation if i < last else None)
        if i == se_after:
            layers["se"] = SqueezeExcite(conv.channels, group.se)
        c, stride = conv.channels, stride * s
        if hw is not None:
            hw = tuple(conv_out(n, conv.kernel, s) for n in hw)
    return nn.Sequential(OrderedDict(layers)), c, stride, hw


class ConvChain(nn.Sequential):
    """A ``conv`` block: conv-BN-act for every conv, no shortcut (e.g. the stem); SE after the last."""

    def __init__(self, cin: int, group: BlockGroup, first: bool, size: tuple[int, int] | None = None):
        layers = {}  # ``size`` is unused: a chain has no shortcut to decide
        for i, conv in enumerate(group.convs):
            layers[f"conv{i + 1}"] = ConvBN(cin, conv, conv.stride if first else 1, act=group.activation)
            cin = conv.channels
        if group.se is not None:
            layers["se"] = SqueezeExcite(cin, group.se)
        super().__init__(OrderedDict(layers))


class ResidualBlock(nn.Module):
    """act(main(x) + shortcut(x)): the activation after every conv of ``main`` but the last (SE,
    if any, after the last); the shortcut is, where channels or size change, a 1x1 conv + BN
    projection or (``shortcut: pad``) option A's zero-pad, else identity.

    ``size`` is the (height, width) entering the block. A stride changes the size of any map
    but a 1x1 one (which it leaves 1x1); without ``size`` a stride counts as a change."""

    def __init__(self, cin: int, group: BlockGroup, first: bool, size: tuple[int, int] | None = None):
        super().__init__()
        se_after = kind_of(group).se_after(len(group.convs)) if group.se is not None else None
        self.main, c, stride, hw = _main_path(cin, group, first, size, se_after)
        resized = stride != 1 if size is None else hw != tuple(size)
        if cin != c or resized:
            self.shortcut = PadShortcut(stride, c - cin) if group.shortcut == "pad" else \
                ConvBN(cin, Conv(kernel=1, channels=c), stride, act=None)
        else:
            self.shortcut = nn.Identity()
        self.act = activation(group.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.main(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: [expand 1x1 - act;] depthwise kxk - act; [SE;] linear 1x1. The input
    is added only where the block keeps its shape; no activation after the sum."""

    def __init__(self, cin: int, group: BlockGroup, first: bool, size: tuple[int, int] | None = None):
        super().__init__()
        se_after = kind_of(group).se_after(len(group.convs)) if group.se is not None else None
        self.main, c, stride, hw = _main_path(cin, group, first, size, se_after)
        self.residual = cin == c and (stride == 1 if size is None else hw == tuple(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x) if self.residual else self.main(x)


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
        return nn.MaxPool2d(ds.kernel, stride=ds.stride, padding=(ds.kernel - 1) // 2)
    if ds.kind == "avgpool":
        return nn.AvgPool2d(ds.kernel, stride=ds.stride, padding=(ds.kernel - 1) // 2)
    if ds.kind == "bilinear":
        return Resize(output_size)
    return None  # 'none', or a strided conv that lives inside the first block


def block_module(group: BlockGroup, cin: int, first: bool, size: tuple[int, int] | None = None) -> nn.Module:
    """The module of one block of ``group``, its class as the block kind registers it (archspec.spec.kinds)."""
    return kind_of(group).module_class()(cin, group, first, size)


class PoolHead(nn.Module):
    """[A pool;] pooling to pool_size x pool_size and flattening (the representation), then the
    hidden fc layers (dropout, fc, activation) and the classifier (dropout, fc), if any."""

    def __init__(self, head: Head, features: int):
        super().__init__()
        pre = downsample_module(head.downsample, None)
        if pre is not None:
            self.prepool = pre
        size = head.pool_size
        self.pool = nn.AdaptiveAvgPool2d(size) if head.pool == "avg" else nn.AdaptiveMaxPool2d(size)
        layers: dict[str, nn.Module] = {}
        width = features
        for i, out in enumerate(head.hidden):
            if head.dropout_before(i):
                layers[f"drop{i + 1}"] = nn.Dropout(head.dropout_before(i))
            layers[f"fc{i + 1}"] = nn.Linear(width, out)
            layers[f"act{i + 1}"] = activation(head.activation)
            width = out
        if layers:
            self.hidden = nn.Sequential(OrderedDict(layers))
        last = len(head.hidden)
        if head.fc and head.dropout_before(last):
            self.dropout = nn.Dropout(head.dropout_before(last))
        self.fc = nn.Linear(width, head.fc) if head.fc else nn.Identity()

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "prepool"):
            x = self.prepool(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.representation(x)
        if hasattr(self, "hidden"):
            x = self.hidden(x)
        if hasattr(self, "dropout"):
            x = self.dropout(x)
        return self.fc(x)
