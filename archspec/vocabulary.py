"""One vocabulary for every number archspec prints (docs/profile.md, "Conventions").

Every command counts compute as **FLOPs = 2 x MACs** of the same default op classes and shares
memory by the same default measure; every output states both in one short line
(:func:`conventions_line`), and numbers carry their unit (GFLOPs, MiB) in the column name.
"""
from __future__ import annotations

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
