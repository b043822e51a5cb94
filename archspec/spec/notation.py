"""The table notation: parse and format convs, blocks and downsampling as strings.

    conv        "3x3, 256, 2 grps, stride 2"   (groups also as "g2" / "groups 2"; "dw": depthwise,
                "bias": a conv bias)
    block       "bottleneck [1x1, 256, g2; 3x3, 256, g2; 1x1, 1024] x3"
                 options after the repeat: "inverted [...] x2, relu6, se 0.25", "basic [...] x3, shortcut pad"
    downsample  "none" | "bilinear" | "strided_conv" | "maxpool 3x3, stride 2" | "avgpool 2x2, stride 2"

Parsers raise SpecError with a message and hint; the loader adds file:line.
"""
from __future__ import annotations

import re

from archspec.errors import SpecError, did_you_mean
from archspec.spec.kinds import KINDS
from archspec.spec.schema import (ACTIVATIONS, DOWNSAMPLE_KINDS, POOL_DOWNSAMPLES, SHORTCUT_KINDS,
                                  BlockGroup, Conv, Downsample)

_TIMES = re.compile(r"\s*[x×X*]\s*")
_CONV_FORM = "'KxK, CHANNELS[, G grps | dw][, stride S][, bias]', e.g. '3x3, 256, 2 grps'"
_BLOCK_FORM = ("'KIND [conv; conv; ...] xN', e.g. 'bottleneck [1x1, 64; 3x3, 64; 1x1, 256] x3' "
               "(options may follow: ', relu6', ', se 0.25', ', shortcut pad')")


# Far beyond any real network; keeps tensor sizes inside int64 when a spec is compiled.
MAX_INT = 2**20


def positive_int(text, what: str, hint: str | None = None) -> int:
    """Parse a strictly positive integer from YAML data or a notation token."""
    if isinstance(text, bool):
        raise SpecError(f"{what} must be a positive integer, got {text!r}", hint=hint)
    if isinstance(text, int):
        value = text
    elif isinstance(text, str) and re.fullmatch(r"\s*[+-]?\d+\s*", text):
        if len(text.strip().lstrip("+-").lstrip("0")) > len(str(MAX_INT)):  # int() of 5,000 digits refuses
            raise SpecError(f"{what} is too large: a {len(text.strip()):,}-digit number (at most {MAX_INT:,})",
                            hint=hint)
        value = int(text)
    else:
        shown = text if isinstance(text, str) else repr(text)
        raise SpecError(f"{what} must be a positive integer, got '{shown}'", hint=hint)
    if value <= 0:
        raise SpecError(f"{what} must be a positive integer, got {value}", hint=hint)
    if value > MAX_INT:
        shown = f"{value:,}" if value.bit_length() < 200 else f"about 2^{value.bit_length() - 1}"
        raise SpecError(f"{what} is too large: {shown} (at most {MAX_INT:,})", hint=hint)
    return value


def parse_size(value, what: str = "size") -> tuple[int, int]:
    """``224``, ``"224x224"`` or ``[224, 224]`` -> (224, 224)."""
    hint = "write it as HxW, e.g. 56x56, or as one number for a square"
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise SpecError(f"{what} must have two numbers (height, width), got {len(value)}", hint=hint)
        return (positive_int(value[0], f"{what} height", hint), positive_int(value[1], f"{what} width", hint))
    if isinstance(value, str) and _TIMES.search(value.strip()):
        parts = _TIMES.split(value.strip())
        if len(parts) != 2:
            raise SpecError(f"{what} '{value}' is not HxW", hint=hint)
        return (positive_int(parts[0], f"{what} height", hint), positive_int(parts[1], f"{what} width", hint))
    n = positive_int(value, what, hint)
    return (n, n)


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def parse_kernel(token: str, even: bool = False) -> int:
    """``"3x3"`` -> 3. Conv kernels must be odd ('same' padding); pools (``even``) may be even."""
    hint = "kernels are square and odd, written KxK, e.g. 3x3" if not even else "kernels are square, written KxK, e.g. 2x2"
    parts = _TIMES.split(token.strip())
    if len(parts) == 1:
        k = positive_int(parts[0], "kernel size", hint)
    elif len(parts) == 2:
        kh = positive_int(parts[0], "kernel height", hint)
        kw = positive_int(parts[1], "kernel width", hint)
        if kh != kw:
            raise SpecError(f"kernel {token.strip()} is not square", hint=hint)
        k = kh
    else:
        raise SpecError(f"kernel '{token.strip()}' is not KxK", hint=hint)
    if k % 2 == 0 and not even:
        raise SpecError(f"kernel {k}x{k} has an even size, so 'same' padding is undefined", hint=hint)
    return k


def parse_conv(text) -> Conv:
    if not isinstance(text, str):
        raise SpecError(f"a conv must be written as {_CONV_FORM}, got {text!r}")
    tokens = [t.strip() for t in text.split(",")]
    if len(tokens) < 2 or not all(tokens):
        raise SpecError(f"conv '{text}' is not in the form {_CONV_FORM}")
    kernel = parse_kernel(tokens[0])
    channels = positive_int(tokens[1], f"conv '{text}': channels", "channels is the second item, e.g. '3x3, 256'")
    groups = stride = None
    bias = False
    for tok in tokens[2:]:
        if tok in ("dw", "depthwise"):
            if groups is not None:
                raise SpecError(f"conv '{text}' gives groups twice")
            groups = channels
            continue
        if tok == "bias":
            bias = True
            continue
        m = (re.fullmatch(r"(\S+)\s*(?:grps?|groups?)", tok) or re.fullmatch(r"(?:g|groups?\s+)(\S+)", tok))
        if m:
            if groups is not None:
                raise SpecError(f"conv '{text}' gives groups twice")
            groups = positive_int(m.group(1), f"conv '{text}': groups")
            continue
        m = re.fullmatch(r"(?:stride|s)\s*(\S+)", tok)
        if m:
            if stride is not None:
                raise SpecError(f"conv '{text}' gives stride twice")
            stride = positive_int(m.group(1), f"conv '{text}': stride")
            continue
        raise SpecError(f"conv '{text}': cannot read '{tok}'",
                        hint="after the channels only 'N grps' (or 'gN', or 'dw'), 'stride S' and 'bias' may follow")
    return Conv(kernel=kernel, channels=channels, groups=groups or 1, stride=stride or 1, bias=bias)


def format_conv(conv: Conv, times: str = "x") -> str:
    """``Conv(3, 256, 2, 1)`` -> ``"3x3, 256, 2 grps"`` (``times``: the sign between the kernel sides)."""
    text = f"{conv.kernel}{times}{conv.kernel}, {conv.channels}"
    if conv.depthwise:
        text += ", dw"
    elif conv.groups != 1:
        text += f", {conv.groups} grps"
    if conv.stride != 1:
        text += f", stride {conv.stride}"
    if conv.bias:
        text += ", bias"
    return text


def check_kind(kind, hint_kinds=None, what="block kind") -> str:
    hint_kinds = list(KINDS) if hint_kinds is None else hint_kinds  # the registered kinds, now
    if kind not in hint_kinds:
        raise SpecError(f"unknown {what} '{kind}'", hint=did_you_mean(kind, hint_kinds,
                                                                      f"use one of: {', '.join(hint_kinds)}"))
    return kind


def parse_block_text(text) -> tuple[str, list[str], int, dict]:
    """Split ``'kind [c1; c2] xN, opt, ...'`` into (kind, [conv texts], repeat, {option: value})."""
    if not isinstance(text, str):
        raise SpecError(f"a block must be written as {_BLOCK_FORM} or as a mapping, got {text!r}")
    m = re.fullmatch(r"\s*([A-Za-z_][\w-]*)\s*\[([^\]]*)\]\s*(?:[x×X*]\s*([^\s,]+))?\s*((?:,[^,]*)*)", text)
    if not m:
        raise SpecError(f"block '{text}' is not in the form {_BLOCK_FORM}")
    kind = check_kind(m.group(1))
    convs = [c.strip() for c in m.group(2).split(";")]
    repeat = 1 if m.group(3) is None else positive_int(m.group(3), f"block '{text}': repeat count")
    options: dict = {}
    for tok in (t.strip() for t in m.group(4).split(",")[1:]):
        key, _, value = tok.partition(" ")
        if tok in ACTIVATIONS:
            key, value = "activation", tok
        elif key not in ("se", "shortcut") or not value.strip():
            raise SpecError(f"block '{text}': cannot read option '{tok}'",
                            hint=f"options are an activation ({', '.join(ACTIVATIONS)}), 'se RATIO' "
                                 f"and 'shortcut {'|'.join(SHORTCUT_KINDS)}'")
        if key in options:
            raise SpecError(f"block '{text}' gives {key} twice")
        options[key] = value.strip()
    return kind, convs, repeat, options


def check_se(value, what: str = "se") -> float:
    """A squeeze-excitation ratio in (0, 1], e.g. 0.25 or '1/16'."""
    hint = "a ratio of the gated channels in (0, 1], e.g. se: 0.25 (or 1/16)"
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*/\s*\d+\s*", value):
        num, den = (int(v) for v in value.split("/"))
        ratio = num / den if den else 0.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ratio = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d*\.?\d+\s*", value):
        ratio = float(value)
    else:
        raise SpecError(f"{what} must be a ratio, got {value!r}", hint=hint)
    if not 0 < ratio <= 1:
        raise SpecError(f"{what} must be in (0, 1], got {value}", hint=hint)
    return ratio


def format_block(group: BlockGroup) -> str:
    inner = "; ".join(format_conv(c) for c in group.convs)
    text = f"{group.kind} [{inner}]"
    if group.repeat != 1 or group.kind != "conv" or block_options(group):
        text += f" x{group.repeat}"
    for opt in block_options(group):
        text += f", {opt}"
    return text


def block_options(group: BlockGroup) -> list[str]:
    """The options a block group has beyond the defaults, as the text form writes them."""
    out = []
    if group.activation != "relu":
        out.append(group.activation)
    if group.se is not None:
        out.append(f"se {group.se:g}")
    if group.shortcut != "projection":
        out.append(f"shortcut {group.shortcut}")
    return out


def parse_downsample_text(text) -> Downsample:
    """``none | bilinear | strided_conv | maxpool|avgpool [KxK][, stride S]`` (also '3x3 max pool, stride 2')."""
    if not isinstance(text, str):
        raise SpecError(f"downsample must be one of {', '.join(DOWNSAMPLE_KINDS)}, got {text!r}")
    norm = " ".join(text.strip().lower().replace("max pool", "maxpool").replace("avg pool", "avgpool").split())
    if norm in ("none", "bilinear", "strided_conv"):
        return Downsample(kind=norm)
    m = re.fullmatch(r"(?:(\S+)\s+)?(maxpool|avgpool)(?:\s+(\d+\s*[x×]\s*\d+|\d+))?(?:\s*,\s*stride\s*(\S+))?",
                     norm)
    if m and not (m.group(1) and m.group(3)):
        k = m.group(1) or m.group(3)
        kernel = parse_kernel(k, even=True) if k else 3
        stride = positive_int(m.group(4), "pool stride") if m.group(4) else 2
        return Downsample(kind=m.group(2), kernel=kernel, stride=stride)
    check_kind(norm.split()[0] if norm else norm, DOWNSAMPLE_KINDS, "downsample")
    raise SpecError(f"downsample '{text}' is not readable", hint="write e.g. 'maxpool 3x3, stride 2'")


def format_downsample(ds: Downsample) -> str:
    if ds.kind in POOL_DOWNSAMPLES:
        return f"{ds.kind} {ds.kernel}x{ds.kernel}, stride {ds.stride}"
    return ds.kind
