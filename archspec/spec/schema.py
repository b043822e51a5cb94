"""The Spec: plain, frozen dataclasses that mirror an architecture table.

A Spec is what a YAML file in specs/ describes once loaded (see docs/spec-format.md):
an input, an ordered list of stages (each with its output size, the downsampling that
enters it and its block groups) and a head. Strides are always explicit here: the loader
resolves the table shorthand (``downsample: strided_conv``) into a stride on a conv.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from archspec.spec.kinds import KINDS

BLOCK_KINDS = tuple(KINDS)  # the built-in kinds; archspec.spec.kinds.KINDS holds every registered one
ACTIVATIONS = ("relu", "relu6", "silu", "gelu", "hardswish")
SHORTCUT_KINDS = ("projection", "pad")  # where shape changes: 1x1 conv + BN, or option A (subsample, zero-pad)
DOWNSAMPLE_KINDS = ("none", "maxpool", "avgpool", "strided_conv", "bilinear")
POOL_DOWNSAMPLES = ("maxpool", "avgpool")  # the downsampling kinds with a kernel and a stride
POOL_KINDS = ("avg", "max")

Size = tuple  # (height, width)


@dataclass(frozen=True)
class Conv:
    """One convolution, followed by batch norm: ``[k x k, channels, g groups, stride s]``."""

    kernel: int
    channels: int  # output channels
    groups: int = 1
    stride: int = 1  # applied in the first block of its group only
    bias: bool = False  # a conv bias (VGG); the batch norm's shift follows either way

    @property
    def depthwise(self) -> bool:
        return self.groups == self.channels and self.channels > 1


@dataclass(frozen=True)
class BlockGroup:
    """``kind [conv; conv; ...] x repeat``: ``repeat`` identical blocks in a row.

    ``conv`` blocks are plain conv-BN-act chains; ``basic`` (2 convs) and ``bottleneck``
    (3 convs) are residual: the activation after every conv but the last, then the shortcut is
    added (where channels or size change: a 1x1 conv + BN projection, or with ``shortcut: pad``
    option A: subsampling and zero channels) and the activation follows. ``inverted`` is
    MobileNetV2's block: [expand 1x1;] depthwise kxk; linear 1x1, the activation after every conv
    but the last, an identity shortcut only where the block keeps its shape and no activation
    after the sum. ``se`` (a ratio) adds squeeze-excitation: global average pool, 1x1 conv to
    max(1, int(C x se)) channels, ReLU, 1x1 conv back to C, sigmoid, times the map; it gates the
    depthwise conv's output in ``inverted`` blocks and the last conv's output (before the sum)
    in the others.
    """

    kind: str
    convs: tuple[Conv, ...]
    repeat: int = 1
    activation: str = "relu"
    se: float | None = None
    shortcut: str = "projection"

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
    """What enters a stage: nothing, a max or average pool, a strided conv, or bilinear resizing.

    Pools pad (kernel - 1) // 2 on each side: 3x3 stride 2 halves a map (ResNet's stem pool) and
    so does 2x2 stride 2 (VGG's)."""

    kind: str = "none"
    kernel: int = 3  # pools only
    stride: int = 2  # pools only


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
    """An optional pool before it (VGG's pool5), pooling to ``pool_size`` x ``pool_size``
    (1: global pooling) and flattening, then fully connected layers: the ``hidden`` ones (each
    followed by ``activation``), then the classifier ``fc``. ``dropout`` holds one probability
    per fc layer (hidden ones first), applied before that layer; 0 means none."""

    pool: str = "avg"
    fc: int | None = 1000
    features: int | None = None  # optional declared representation size, checked
    pool_size: int = 1
    hidden: tuple[int, ...] = ()
    dropout: tuple[float, ...] = ()
    activation: str = "relu"
    downsample: "Downsample" = field(default_factory=lambda: Downsample())

    @property
    def fc_layers(self) -> tuple[int, ...]:
        """Output sizes of the fc layers in order (hidden, then the classifier)."""
        return self.hidden + ((self.fc,) if self.fc else ())

    def dropout_before(self, layer: int) -> float:
        return self.dropout[layer] if layer < len(self.dropout) else 0.0


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
    def local_stages(self):
        """The local stages (label, stage names), archspec.spec.local_stages: the one grouping and
        the one label of every table, log, checkpoint and command."""
        from archspec.spec.local_stages import local_stages

        cached = self.__dict__.get("_local_stages")
        if cached is None:  # a frozen dataclass: computed once, kept outside the fields
            cached = local_stages(self)
            object.__setattr__(self, "_local_stages", cached)
        return cached

    @property
    def features(self) -> int:
        """Size of the representation: the last stage's channels after the head's pooling
        (times pool_size^2 when it pools to more than 1x1, as VGG's 7x7)."""
        return self.stages[-1].out_channels * self.head.pool_size ** 2

    @property
    def has_residual_blocks(self) -> bool:
        """False for plain CNNs (VGG): then the block-output memory measure and the split chain
        use every conv block instead of residual blocks."""
        return any(KINDS[g.kind].residual for s in self.stages for g in s.blocks)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)
