"""One vocabulary for every number archspec prints (docs/profile.md, "Conventions").

Every command counts compute as **FLOPs = 2 x MACs** of the same default op classes and shares
memory by the same default measure; every output states both in one short line
(:func:`conventions_line`), and numbers carry their unit (GFLOPs, MiB) in the column name.
"""
from __future__ import annotations

import math
import re

# The defaults, chosen once for profile, compare, balance, split, table, report and the API:
# conv + fc is what torchvision, fvcore and ptflops publish (ResNet-50: 4.089 G MACs = 8.18
# GFLOPs), so a number pasted from archspec compares with theirs; 'saved' is the exact memory a
# stage keeps for backward (what local learning frees), defined for any nn.Module, not only specs.
DEFAULT_OPS = ("conv", "fc")
DEFAULT_MEASURE = "saved"
MEASURES = ("output", "conv_outputs", "block_outputs", "saved")
TABLE6_OPS = ("conv", "fc", "bn", "pool")  # the LoCo paper's Table 6 FLOPs (profile --paper)

MEASURE_SHORT = {
    "output": "the stage's output",
    "conv_outputs": "sum of conv outputs",
    "block_outputs": "sum of residual block outputs",
    "saved": "bytes autograd saves for backward",
}

_PREFIXES = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def ops_text(ops) -> str:
    return ", ".join(ops)


def measure_phrase(measure: str) -> str:
    return f"{measure} ({MEASURE_SHORT.get(measure, measure)})"


def conventions_line(ops=None, measure: str | None = None, *, batch: int | None = None,
                     dtype: str | None = None, extra: str | None = None) -> str:
    """'Conventions: FLOPs = 2 x MACs of conv, fc, forward, per image; memory = saved (bytes
    autograd saves for backward), batch 256, float32, MiB = 2^20 bytes.' (the parts given)."""
    parts = []
    if ops is not None:
        parts.append(f"FLOPs = 2 x MACs of {ops_text(ops)}, forward, per image")
    if measure is not None:
        mem = f"memory = {measure_phrase(measure)}"
        if batch is not None:
            mem += f", batch {batch}"
        if dtype is not None:
            mem += f", {dtype}"
        parts.append(mem + (", MiB = 2^20 bytes" if batch is not None else ""))
    if extra:
        parts.append(extra)
    return "Conventions: " + "; ".join(parts) + "."


def flops_prefix(total: float) -> tuple[str, float]:
    """The SI prefix that writes ``total`` FLOPs with a leading digit: ('G', 1e9) for a ResNet,
    ('M', 1e6) for a small module, so that a table never prints 0.000 GFLOPs."""
    for prefix, scale in _PREFIXES:
        if abs(total) >= scale:
            return prefix, scale
    return "", 1.0


def si(value: float, digits: int = 3) -> str:
    """Compact SI form for narrow terminals: 25029592 -> '25.0M', 1.18e8 -> '118M'."""
    for prefix, scale in _PREFIXES:
        if abs(value) >= scale:
            v = value / scale
            return f"{v:.{max(0, digits - len(str(int(abs(v)))))}f}{prefix}"
    return f"{value:g}"


def format_bytes(n: float) -> str:
    """Bytes with a binary unit (2^10 steps): '1.25 GiB', '512.00 MiB', '96 B'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def bytes_unit(total: float) -> tuple[str, int]:
    """MiB for anything a network holds; KiB (or B) for tiny modules, so no column reads 0.00."""
    if abs(total) >= 2**20:
        return "MiB", 2**20
    if abs(total) >= 2**10:
        return "KiB", 2**10
    return "B", 1


# -- reading sizes and bands (every command and config: one parser each) --------------------------
_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text, what: str = "size") -> int:
    """'2GiB', '500MB', '1.5 GB', '1073741824' -> bytes (KB/MB/GB: powers of 1000, KiB/MiB/GiB: of
    1024); ``what`` names the option or key in the one-line error."""
    from archspec.errors import UserError

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _BYTE_UNITS:
        raise UserError(f"{what} '{text}' is not a size (hint: write e.g. 16GiB, 500MB or a number of bytes; "
                        f"KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)")
    value = round(float(m.group(1)) * _BYTE_UNITS[unit])
    if value <= 0:
        raise UserError(f"{what} must be positive, got '{text}'")
    return value


def default_band(n_stages: int) -> tuple[float, float]:
    """0.9 x 100/N : 1.2 x 100/N percent, to 2 decimals (15:20 for six stages)."""
    ideal = 100.0 / n_stages
    return round(0.9 * ideal, 2), round(1.2 * ideal, 2)


def parse_band(text, what: str = "--band") -> tuple[float, float]:
    """``"15:20"`` -> (15.0, 20.0), percent, with one-line errors for anything else."""
    from archspec.errors import UserError

    try:
        lo, hi = (float(p) for p in str(text).split(":"))
    except ValueError:
        raise UserError(f"{what} '{text}' is not LO:HI (hint: e.g. {what} 15:20, in percent)") from None
    if math.isnan(lo) or math.isnan(hi) or not 0 <= lo < hi <= 100:
        raise UserError(f"{what} '{text}' is empty or outside 0..100 (hint: LO < HI, e.g. {what} 15:20)")
    return lo, hi
