"""How balanced a network's local stages are: shares of FLOPs, memory and parameters, imbalance,
the stages outside a band, the model-parallel speed bound and the memory saving of local learning.

Definitions (docs/reports.md states them with an example):

- Shares are taken per **local stage** (``local_stages``: a leading all-conv stem folds into the
  first residual stage; the head is left out), as in the LoCo paper's Table 6.
- FLOPs: forward FLOPs (2 x MACs) of the op classes ``ops`` of the profile (default conv, fc);
  memory: the activation measure ``measure`` (default ``saved``; ``block_outputs`` reproduces the
  paper's Table 6); params: every parameter of the stage (archspec.vocabulary: one set of defaults).
- Imbalance: max / mean (1 = perfect) and the coefficient of variation (population std / mean).
- Band LO:HI (percent): a stage is inside when LO <= share <= HI for FLOPs and for memory. The
  default band for N local stages is 0.9 x 100/N : 1.2 x 100/N (15:20 for six stages).
- Model-parallel speed bound: with one worker per local stage, a pipeline runs no faster than its
  slowest stage, so the speed-up over one worker is at most total FLOPs / largest stage FLOPs
  (efficiency = bound / N).
"""
from __future__ import annotations

import math

from archspec.errors import UserError
from archspec.vocabulary import DEFAULT_MEASURE, bytes_unit, conventions_line, default_band, flops_prefix

SCHEMA = "archspec.balance/1"
METRICS = ("flops", "memory", "params")
BANDED = ("flops", "memory")  # the metrics a band constrains


def _imbalance(shares: list[float]) -> dict:
    mean = sum(shares) / len(shares)
    std = math.sqrt(sum((s - mean) ** 2 for s in shares) / len(shares))
    return {"max_over_mean": max(shares) / mean if mean else 0.0, "cv": std / mean if mean else 0.0}


def balance_from_profile(doc: dict, band: tuple[float, float] | None = None,
                         measure: str | None = DEFAULT_MEASURE) -> dict:
    """A balance document from a profile document (``Profile.to_dict()``). A module's profile
    (no spec) has no training-memory section (its local stages are its named stages)."""
    by_name = {rec["name"]: rec for rec in doc["stages"]}
    tm = doc.get("training_memory")
    groups = tm["local_stages"] if tm else doc["local_stages"]
    ops = doc["settings"]["ops"]
    measure = measure or DEFAULT_MEASURE
    names = doc.get("local_stage_names") or ["+".join(g) for g in groups]
    if measure not in doc["total"]["activation_bytes"]:
        raise UserError(f"unknown memory measure '{measure}' (hint: use one of "
                        f"{', '.join(doc['total']['activation_bytes'])})")
    values = {"flops": [], "memory": [], "params": []}
    for group in groups:
        recs = [by_name[n] for n in group]
        values["flops"].append(2 * sum(r["forward"]["macs_by_op"][o] for r in recs for o in ops))
        values["memory"].append(sum(r["activation_bytes"][measure] for r in recs))
        values["params"].append(sum(r["params"] for r in recs))
    totals = {m: sum(v) for m, v in values.items()}
    shares = {m: [100 * v / totals[m] if totals[m] else 0.0 for v in values[m]] for m in METRICS}
    lo, hi = band if band is not None else default_band(len(groups))
    stages, outside = [], []
    for i, group in enumerate(groups):
        name = names[i]
        row = {"name": name, "stages": list(group)}
        for m in METRICS:
            row[m] = values[m][i]
            row[f"{m}_share"] = shares[m][i]
        for m in BANDED:
            inside = lo <= round(shares[m][i], 2) <= hi  # as printed: 2 decimals
            row[f"{m}_in_band"] = inside
            if not inside:
                outside.append({"stage": name, "metric": m, "share": shares[m][i],
                                "side": "below" if shares[m][i] < lo else "above"})
        stages.append(row)
    slowest = max(range(len(groups)), key=lambda i: values["flops"][i])
    bound = totals["flops"] / values["flops"][slowest] if values["flops"][slowest] else 0.0
    methods = tm["methods"] if tm else {}
    s = doc["settings"]
    return {
        "schema": SCHEMA,
        "spec": doc["spec"],
        "title": doc["title"],
        "settings": {"band": [lo, hi], "ops": list(ops), "measure": measure, "batch": s["batch"],
                     "input_size": s["input_size"], "dtype": s["dtype"], "optimizer": s["optimizer"]},
        "conventions": {
            "flops": f"forward FLOPs per image = 2 x MACs of {', '.join(ops)}",
            "memory": doc["conventions"]["activation_measures"][measure] + f", bytes at batch {s['batch']}",
            "params": "parameters of the stage's convs and batch norms",
            "local_stages": doc["conventions"].get("local_stages",
                                                   "a leading all-conv stem folds into the first residual stage; "
                                                   "the head is left out"),
            "band": "a stage is inside when LO <= share <= HI (percent, 2 decimals) for FLOPs and for memory",
            "speedup_bound": "total FLOPs / FLOPs of the largest local stage (one pipeline worker per local stage)",
            "training_memory": f"peak training memory, 2 views x batch {s['batch']} images, optimizer "
                               f"{s['optimizer']} (docs/profile.md)",
        },
        "stages": stages,
        "totals": totals,
        "imbalance": {m: _imbalance(shares[m]) for m in METRICS},
        "outside_band": outside,
        "balanced": not outside,
        "model_parallel": {"workers": len(groups), "slowest_stage": stages[slowest]["name"],
                           "speedup_bound": bound, "efficiency": bound / len(groups)},
        "training_memory": {m: {"peak_bytes": p["total"], "saving_vs_simclr": p["saving_vs_simclr"],
                                "peak_at": p["peak_at"]} for m, p in methods.items()} if tm else None,
    }


# -- rendering ----------------------------------------------------------------------------------
def summary_lines(doc: dict) -> list[str]:
    """The verdict in sentences (used by the terminal, markdown and the report's index)."""
    lo, hi = doc["settings"]["band"]
    mp = doc["model_parallel"]
    imb = doc["imbalance"]
    n = mp["workers"]
    lines = [f"{n} local stages; ideal share {100 / n:.2f}% each; band {lo:g}:{hi:g}%.",
             f"Imbalance (max/mean, CV): FLOPs {imb['flops']['max_over_mean']:.2f}, {imb['flops']['cv']:.3f}; "
             f"memory {imb['memory']['max_over_mean']:.2f}, {imb['memory']['cv']:.3f}; "
             f"params {imb['params']['max_over_mean']:.2f}, {imb['params']['cv']:.3f}."]
    if doc["outside_band"]:
        parts = [f"{o['stage']} {o['metric']} {o['share']:.2f}% ({o['side']})" for o in doc["outside_band"]]
        lines.append(f"Outside the band: {'; '.join(parts)}.")
    else:
        lines.append("Every local stage is inside the band for FLOPs and memory.")
    lines.append(f"Model-parallel speed bound: {mp['speedup_bound']:.2f}x on {n} workers "
                 f"({100 * mp['efficiency']:.0f}% efficiency; slowest stage {mp['slowest_stage']}).")
    tm = doc["training_memory"]
    if tm:
        lines.append(f"Peak training memory saving against end-to-end: GIM {tm['gim']['saving_vs_simclr']:.2f}x, "
                     f"LoCo {tm['loco']['saving_vs_simclr']:.2f}x.")
    else:
        lines.append("Peak training memory: not estimated for a module profile (it needs a spec: the runner's "
                     "step with decoders).")
    return lines


def stage_rows(doc: dict) -> list[dict]:
    prefix, scale = flops_prefix(doc["totals"]["flops"])
    unit, size = bytes_unit(doc["totals"]["memory"])
    measure = doc["settings"]["measure"]
    rows = []
    for r in doc["stages"]:
        mark = {m: "" if r[f"{m}_in_band"] else " *" for m in BANDED}
        rows.append({"local stage": r["name"],
                     f"{prefix}FLOPs": f"{r['flops'] / scale:.3f}", "FLOPs %": f"{r['flops_share']:.2f}{mark['flops']}",
                     f"{measure} {unit}": f"{r['memory'] / size:.1f}",
                     f"{measure} %": f"{r['memory_share']:.2f}{mark['memory']}",
                     "params": f"{r['params']:,}", "params %": f"{r['params_share']:.2f}"})
    return rows


def caption(doc: dict) -> str:
    c, s = doc["conventions"], doc["settings"]
    lo, hi = s["band"]
    return (f"{doc['title'] or doc['spec']}, input {s['input_size'][0]}x{s['input_size'][1]}. "
            f"{conventions_line(s['ops'], s['measure'], batch=s['batch'], dtype=s['dtype'])} "
            f"Shares per local stage ({c['local_stages']}); '{s['measure']}' = {c['memory']}. "
            f"* = outside the band {lo:g}:{hi:g}%.")


def render(doc: dict, fmt: str, standalone: bool = False) -> str:
    import json

    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    import pandas as pd

    frame = pd.DataFrame(stage_rows(doc))
    if fmt == "csv":
        records = [{k: v for k, v in r.items() if k != "stages"} for r in doc["stages"]]
        return pd.DataFrame.from_records(records).to_csv(index=False)
    if fmt == "md":
        text = "\n".join(f"- {line}" for line in summary_lines(doc))
        return f"{caption(doc)}\n\n{frame.to_markdown(index=False, disable_numparse=True)}\n\n{text}\n"
    if fmt == "tex":
        from archspec.report import latex

        text = latex.booktabs_table(frame, caption(doc), f"tab:{doc['spec']}-balance")
        return latex.document(text) if standalone else text
    raise ValueError(fmt)


def print_terminal(doc: dict) -> None:
    from archspec.report.terminal import print_fitted

    lo, hi = doc["settings"]["band"]
    rows = stage_rows(doc)
    cells = [[f"[red]{v}[/red]" if v.endswith("*") else v for v in row.values()] for row in rows]
    print_fitted(f"{doc['title'] or doc['spec']}: balance of local stages (band {lo:g}:{hi:g}%)", list(rows[0]),
                 cells, total_row=False, lines=[caption(doc)] + summary_lines(doc))
