"""The block kinds, registered in one place (timm's byobnet keeps a block registry the same way).

A kind says what the spec format, the validator, the layer walk (archspec.spec.walk, hence
every analytic count, the split chain and the design evaluator) and the compiler
(archspec.nn.blocks) need to know about a block; nothing else in the code names a kind. A new
kind is one ``register(BlockKind(...))`` call (here for the built-in ones, whose modules are in
archspec.nn.blocks; a user's module can pass its own nn.Module class).

Every kind runs its convs in order, each conv followed by batch norm and (``act_after_last``:
every conv; else every conv but the last) the activation; squeeze-excitation, if the block has
``se``, gates the output of conv ``se_after(n)`` (n convs). The shortcut:

- ``always``: ``act(main(x) + shortcut(x))``, the shortcut a 1x1 conv + BN projection (or,
  ``shortcut: pad``, option A's zero-pad) where channels or size change, else identity;
- ``same_shape``: ``x + main(x)`` only where the block keeps its shape, no activation after;
- ``none``: no shortcut (a plain conv chain: a stem, VGG).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from archspec.errors import SpecError


@dataclass(frozen=True)
class BlockKind:
    name: str
    convs: tuple[int, ...] | None  # how many convs a block may have; None: any positive number
    shortcut: str  # 'always', 'same_shape' or 'none' (see the module)
    module: object  # its nn.Module class, or the name of one in archspec.nn.blocks
    conv_hint: str = ""  # how its convs are written, for the error on a wrong count
    act_after_last: bool = False
    se_from_end: int = 1  # SE after conv n - se_from_end
    check_conv: Callable | None = None  # (group, conv index, channels in, what, path): raise SpecError
    table_word: str = ""  # the architecture table names the kind in its bracket (ResNet's kinds need none)
    table_note: str = ""  # and explains it under the table

    @property
    def residual(self) -> bool:
        """Its output counts as a residual block's (the block-output memory measure, Table 6)."""
        return self.shortcut != "none"

    @property
    def chooses_shortcut(self) -> bool:
        """Takes ``shortcut: projection | pad``."""
        return self.shortcut == "always"

    def se_after(self, n_convs: int) -> int:
        return n_convs - self.se_from_end

    def module_class(self):
        """The class, called as ``cls(channels_in, group, first, size)`` (archspec.nn.blocks.block_module)."""
        if not isinstance(self.module, str):
            return self.module
        from archspec.nn import blocks

        return getattr(blocks, self.module)


def _check_inverted(group, index: int, cin: int, what: str, path: tuple) -> None:
    """[expand 1x1;] depthwise kxk (groups = channels = what enters it); linear 1x1."""
    conv, n = group.convs[index], len(group.convs)
    if index == n - 2 and not (conv.groups == conv.channels == cin):
        raise SpecError("the second-last conv of an inverted block must be depthwise, with as many channels "
                        f"as enter it ({cin})", what=what, path=path, hint=f"write it as 'KxK, {cin}, dw'")
    if index != n - 2 and conv.kernel != 1:
        raise SpecError(f"an inverted block's expansion and projection convs are 1x1, this one is "
                        f"{conv.kernel}x{conv.kernel}", what=what, path=path, hint="make it 1x1")


KINDS: dict[str, BlockKind] = {}


def register(kind: BlockKind) -> BlockKind:
    if kind.name in KINDS:
        raise ValueError(f"block kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


register(BlockKind("conv", None, "none", "ConvChain", act_after_last=True, se_from_end=1))
register(BlockKind("basic", (2,), "always", "ResidualBlock", conv_hint="basic: [3x3; 3x3]"))
register(BlockKind("bottleneck", (3,), "always", "ResidualBlock", conv_hint="bottleneck: [1x1; 3x3; 1x1]"))
register(BlockKind("inverted", (2, 3), "same_shape", "InvertedResidual", se_from_end=2,
                   conv_hint="inverted: [1x1; 3x3, dw; 1x1] or [3x3, dw; 1x1]", check_conv=_check_inverted,
                   table_word="inverted",
                   table_note="'inverted': MobileNetV2's inverted residual (expansion 1x1, depthwise, linear 1x1 "
                              "projection; the input is added only where the block keeps its shape, with no "
                              "activation after it)."))


def kind_of(group) -> BlockKind:
    return KINDS[group.kind]


def se_channels(channels: int, ratio: float) -> int:
    """Squeeze-excitation's bottleneck width: max(1, int(channels x ratio))."""
    return max(1, int(channels * ratio))
