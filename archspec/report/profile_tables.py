"""Render a profile document (Profile.to_dict()) as a terminal table, markdown, LaTeX, CSV or JSON.

Every renderer reads the same document, so the formats cannot disagree.
"""
from __future__ import annotations

import json

from archspec.vocabulary import DEFAULT_MEASURE, bytes_unit, conventions_line, flops_prefix

MIB = 2 ** 20
FORMATS = ("table", "md", "tex", "csv", "json")


def caption(doc: dict, measure: str = DEFAULT_MEASURE) -> str:
    """The conventions line, then the definitions behind it."""
    s = doc["settings"]
    return (f"{doc['title'] or doc['spec']}, input {s['input_size'][0]}x{s['input_size'][1]}. "
            f"{conventions_line(s['ops'], measure, batch=s['batch'], dtype=s['dtype'])} "
            f"Backward traced from the autograd graph; {s['bytes_per_element']} bytes/element; "
            f"'{measure}' = {doc['conventions']['activation_measures'][measure]}.")


def notes(doc: dict) -> list[str]:
    """Lines under the table: ops the counter does not know (listed, never dropped silently),
    and what a module profile (no spec) lacks."""
    lines = []
    unknown = doc.get("unknown_ops") or {}
    if unknown:
        parts = [f"{op} x{n} ({stage})" for stage, ops in unknown.items() for op, n in sorted(ops.items())]
        lines.append("Not counted (no rule for these ops; calls forward + backward, at the traced batch): "
                     + ", ".join(parts) + ".")
    if "source" in doc:
        lines.append("A module profile: stages are its named submodules; 'unattributed' (if shown) holds the ops "
                     "that ran outside every stage; no training-memory estimate (that needs a spec).")
    return lines


def units(doc: dict, measure: str) -> tuple[str, float, str, int]:
    """The FLOPs prefix and the bytes unit of the table, from its totals (G and MiB for a
    network; M or KiB for a small module, so that no column reads 0.000)."""
    total = doc["total"]
    prefix, scale = flops_prefix(max(total["forward"]["flops"], total["backward"]["flops"]))
    unit, size = bytes_unit(max(total["activation_bytes"][measure], total["activation_bytes"]["output"]))
    return prefix, scale, unit, size


def stage_rows(doc: dict, measure: str = DEFAULT_MEASURE) -> list[dict]:
    """Human-readable rows (one per stage, then the total), shared by table, md and tex."""
    prefix, scale, unit, size = units(doc, measure)
    rows = []
    for rec in doc["stages"] + [doc["total"]]:
        act = rec["activation_bytes"]
        fwd, bwd = rec["forward"]["flops"], rec["backward"]["flops"]
        rows.append({
            "stage": rec["name"],
            "output": "x".join(str(d) for d in rec["output_shape"]),
            "params": f"{rec['params']:,}",
            "params %": f"{100 * rec['params_share']:.2f}",
            f"fwd {prefix}FLOPs": f"{fwd / scale:.3f}",
            "fwd %": f"{100 * rec['forward']['share']:.2f}",
            f"bwd {prefix}FLOPs": f"{bwd / scale:.3f}",
            "bwd/fwd": f"{bwd / fwd:.2f}" if fwd else "-",
            f"output {unit}": f"{act['output'] / size:.2f}" if rec["name"] not in ("total", "unattributed") else "",
            f"{measure} {unit}": f"{act[measure] / size:.2f}",
            f"{measure} %": f"{100 * rec['activation_share'][measure]:.2f}",
        })
    return rows


def memory_rows(doc: dict) -> list[dict]:
    tm = doc.get("training_memory")
    if not tm:
        return []
    return [{"method": m, "weights": f"{p['weights'] / MIB:.1f}", "gradients": f"{p['gradients'] / MIB:.1f}",
             "optimizer": f"{p['optimizer'] / MIB:.1f}", "decoders": f"{p['decoders'] / MIB:.1f}",
             "activations": f"{p['activations'] / MIB:.1f}", "peak MiB": f"{p['total'] / MIB:.1f}",
             "saving": f"{p['saving_vs_simclr']:.2f}x", "peak at": p["peak_at"]}
            for m, p in tm["methods"].items()]


def memory_caption(doc: dict) -> str:
    tm = doc["training_memory"]
    s = doc["settings"]
    names = ", ".join(doc.get("local_stage_names") or ["+".join(g) for g in tm["local_stages"]])
    return (f"Peak training memory in MiB (2^20 bytes), {tm['images']} images (2 views x batch {s['batch']}), "
            f"{s['dtype']}, optimizer {s['optimizer']}; local stages: {names}; a decoder (residual block with "
            f"downsampling, global pool, 2-layer MLP to 128-d) per local stage (SimCLR: one, on top). Peak: the most "
            f"tensor bytes alive in one steady-state step, the runner's step run on meta tensors (docs/profile.md). "
            f"Saving = SimCLR peak / peak.")


def csv_frame(doc: dict):
    """Raw numbers, one row per stage and the total: what scripts should read."""
    import pandas as pd

    records = []
    for rec in doc["stages"] + [doc["total"]]:
        row = {"stage": rec["name"], "output_shape": "x".join(str(d) for d in rec["output_shape"]),
               "params": rec["params"], "params_share": rec["params_share"],
               "fwd_macs": rec["forward"]["macs"], "fwd_flops": rec["forward"]["flops"],
               "fwd_share": rec["forward"]["share"], "bwd_macs": rec["backward"]["macs"],
               "bwd_flops": rec["backward"]["flops"]}
        for measure, value in rec["activation_bytes"].items():
            row[f"act_{measure}_bytes"] = value
            row[f"act_{measure}_share"] = rec["activation_share"][measure]
        records.append(row)
    return pd.DataFrame.from_records(records)


def render(doc: dict, fmt: str, measure: str = DEFAULT_MEASURE, standalone: bool = False) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "csv":
        return csv_frame(doc).to_csv(index=False)
    import pandas as pd

    stages = pd.DataFrame(stage_rows(doc, measure))
    memory = pd.DataFrame(memory_rows(doc))
    if fmt == "md":
        out = f"{caption(doc, measure)}\n\n{stages.to_markdown(index=False, disable_numparse=True)}\n"
        out += "".join(f"\n{line}\n" for line in notes(doc))
        if len(memory):
            out += f"\n{memory_caption(doc)}\n\n{memory.to_markdown(index=False, disable_numparse=True)}\n"
        return out
    if fmt == "tex":
        from archspec.report import latex

        text = latex.booktabs_table(stages, caption(doc, measure), f"tab:{doc['spec']}-profile") + (
            "\n" + latex.booktabs_table(memory, memory_caption(doc), f"tab:{doc['spec']}-memory") if len(memory) else "")
        return latex.document(text) if standalone else text
    raise ValueError(fmt)


def print_terminal(doc: dict, measure: str = DEFAULT_MEASURE) -> None:
    from archspec.report.terminal import print_fitted

    rows = stage_rows(doc, measure)
    headers = list(rows[0])
    print_fitted(f"{doc['title'] or doc['spec']}: per-stage profile", headers, [list(r.values()) for r in rows],
                 lines=[caption(doc, measure)] + notes(doc))
    mem = memory_rows(doc)
    if mem:
        headers = list(mem[0])
        print_fitted("Peak training memory", headers, [list(r.values()) for r in mem], total_row=False,
                     left=(0, len(headers) - 1), lines=[memory_caption(doc)])
