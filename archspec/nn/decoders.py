"""Local decoders: what sits on a stage's output to give a contrastive embedding.

The LoCo paper's final choice: one residual conv block with downsampling, global average
pooling, then a 2-layer MLP to a 128-d embedding. Here the block is a bottleneck
``[1x1, C/4; 3x3, C/4, stride 2; 1x1, C]`` on a stage with C output channels (projection
shortcut, as in ResNet), and the MLP is ``C -> hidden -> 128`` with ReLU (hidden = C unless
configured), as SimCLR's projection head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from archspec.nn.blocks import ResidualBlock
from archspec.spec.schema import BlockGroup, Conv


@dataclass(frozen=True)
class DecoderConfig:
    block: bool = True  # the residual block with downsampling; False: pool + MLP only
    width_ratio: float = 0.25  # bottleneck width relative to the stage's channels
    hidden: int | None = None  # MLP hidden size; None: the stage's channels
    out: int = 128  # embedding size


class Decoder(nn.Module):
    def __init__(self, channels: int, config: DecoderConfig = DecoderConfig()):
        super().__init__()
        if config.block:
            width = max(1, int(channels * config.width_ratio))
            convs = (Conv(1, width), Conv(3, width, stride=2), Conv(1, channels))
            self.block = ResidualBlock(channels, BlockGroup("bottleneck", convs), first=True)
        else:
            self.block = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = config.hidden or channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, config.out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(self.block(x)), 1))
