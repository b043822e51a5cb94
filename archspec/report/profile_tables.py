"""Render a profile document (Profile.to_dict()) as a terminal table, markdown, LaTeX, CSV or JSON.

Every renderer reads the same document, so the formats cannot disagree.
"""
from __future__ import annotations

import json

MIB = 2 ** 20
GIGA = 1e9
FORMATS = ("table", "md", "tex", "csv", "json")


def caption(doc: dict, measure: str = "saved") -> str:
    s = doc["settings"]
    return (f"{doc['title'] or doc['spec']}, input {s['input_size'][0]}x{s['input_size'][1]}, {s['dtype']} "
            f"({s['bytes_per_element']} bytes/element). Compute per image: GFLOPs = 2 x GMACs of "
            f"{', '.join(s['ops'])}; backward traced from the autograd graph. Memory in MiB (2^20 bytes) at batch "
            f"{s['batch']}: stage output, and '{measure}' = {doc['conventions']['activation_measures'][measure]}.")


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


def stage_rows(doc: dict, measure: str = "saved") -> list[dict]:
    """Human-readable rows (one per stage, then the total), shared by table, md and tex."""
    rows = []
    for rec in doc["stages"] + [doc["total"]]:
        act = rec["activation_bytes"]
        fwd, bwd = rec["forward"]["flops"], rec["backward"]["flops"]
        rows.append({
            "stage": rec["name"],
            "output": "x".join(str(d) for d in rec["output_shape"]),
            "params": f"{rec['params']:,}",
            "params %": f"{100 * rec['params_share']:.2f}",
            "fwd GFLOPs": f"{fwd / GIGA:.3f}",
            "fwd %": f"{100 * rec['forward']['share']:.2f}",
            "bwd GFLOPs": f"{bwd / GIGA:.3f}",
            "bwd/fwd": f"{bwd / fwd:.2f}" if fwd else "-",
            "output MiB": f"{act['output'] / MIB:.2f}" if rec["name"] not in ("total", "unattributed") else "",
            f"{measure} MiB": f"{act[measure] / MIB:.2f}",
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
    groups = ", ".join("+".join(g) for g in tm["local_stages"])
    return (f"Peak training memory, {tm['images']} images (2 views x batch {s['batch']}), {s['dtype']}, "
            f"optimizer {s['optimizer']}; local stages: {groups}; a decoder (residual block with downsampling, "
            f"global pool, 2-layer MLP to 128-d) per local stage (SimCLR: one, on top). Peak: the most tensor bytes alive in "
            f"one steady-state step, the runner's step run on meta tensors (docs/profile.md). Saving = SimCLR peak / peak.")


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


def render(doc: dict, fmt: str, measure: str = "saved") -> str:
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
        from archspec.report.latex import booktabs_table

        return booktabs_table(stages, caption(doc, measure), f"tab:{doc['spec']}-profile") + (
            "\n" + booktabs_table(memory, memory_caption(doc), f"tab:{doc['spec']}-memory") if len(memory) else "")
    raise ValueError(fmt)


def print_terminal(doc: dict, measure: str = "saved") -> None:
    from rich.table import Table

    from archspec.report.terminal import console

    con = console()
    table = Table(title=f"{doc['title'] or doc['spec']}: per-stage profile", caption=caption(doc, measure),
                  caption_justify="left")
    rows = stage_rows(doc, measure)
    for col in rows[0]:
        table.add_column(col, justify="left" if col == "stage" else "right")
    for row in rows[:-1]:
        table.add_row(*row.values(), end_section=row is rows[-2])
    table.add_row(*rows[-1].values(), style="bold")
    con.print(table)
    for line in notes(doc):
        con.print(line, highlight=False)
    mem = memory_rows(doc)
    if mem:
        t2 = Table(title="Peak training memory", caption=memory_caption(doc), caption_justify="left")
        for col in mem[0]:
            t2.add_column(col, justify="left" if col in ("method", "peak at") else "right")
        for row in mem:
            t2.add_row(*row.values())
        con.print(t2)
