"""The Spec: plain, frozen dataclasses that mirror an architecture table.

A Spec is what a YAML file in specs/ describes once loaded (see docs/spec-format.md):
an input, an ordered list of stages (each with its output size, the downsampling that
enters it and its block groups) and a head. Strides are always explicit here: the loader
resolves the table shorthand (``downsample: strided_conv``) into a stride on a conv.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BLOCK_KINDS = ("conv", "basic", "bottleneck")
# How many convs a block of each kind has (None: any positive number).
CONVS_PER_BLOCK = {"conv": None, "basic": 2, "bottleneck": 3}
RESIDUAL_KINDS = ("basic", "bottleneck")
DOWNSAMPLE_KINDS = ("none", "maxpool", "strided_conv", "bilinear")
POOL_KINDS = ("avg", "max")

Size = tuple  # (height, width)


@dataclass(frozen=True)
class Conv:
    """One convolution, followed by batch norm: ``[k x k, channels, g groups, stride s]``."""

    kernel: int
    channels: int  # output channels
    groups: int = 1
    stride: int = 1  # applied in the first block of its group only


@dataclass(frozen=True)
class BlockGroup:
    """``kind [conv; conv; ...] x repeat``: ``repeat`` identical blocks in a row.

    ``conv`` blocks are plain conv-BN-ReLU chains; ``basic`` (2 convs) and ``bottleneck``
    (3 convs) are residual: ReLU after every conv but the last, then the shortcut is added
    (a 1x1 conv + BN projection where channels or size change) and ReLU follows.
    """

    kind: str
    convs: tuple[Conv, ...]
    repeat: int = 1

    @property
    def out_channels(self) -> int:
        return self.convs[-1].channels

    @property
    def stride(self) -> int:
        """Total stride of the first block of the group."""
        s = 1
        for c in self.convs:
            s *= c.stride
        return s


@dataclass(frozen=True)
class Downsample:
    """What enters a stage: nothing, a max pool, a strided conv, or bilinear resizing."""

    kind: str = "none"
    kernel: int = 3  # max pool only
    stride: int = 2  # max pool only


@dataclass(frozen=True)
class Stage:
    name: str
    output_size: Size
    blocks: tuple[BlockGroup, ...]
    downsample: Downsample = field(default_factory=Downsample)
    channels: int | None = None  # optional declared output channels, checked
    # The local stage (one local loss, one pipeline worker) this stage belongs to: consecutive
    # stages with the same label form one. None: the default grouping (memory.local_stages).
    local_stage: str | None = None

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels


@dataclass(frozen=True)
class Head:
    """Global pooling, then an optional fully connected classifier."""

    pool: str = "avg"
    fc: int | None = 1000
    features: int | None = None  # optional declared representation size, checked


@dataclass(frozen=True)
class Spec:
    name: str
    stages: tuple[Stage, ...]
    head: Head = field(default_factory=Head)
    input_channels: int = 3
    input_size: Size = (224, 224)
    title: str = ""
    notes: str = ""

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def features(self) -> int:
        """Size of the representation: the last stage's channels, after global pooling."""
        return self.stages[-1].out_channels

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)
