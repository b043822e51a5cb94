"""Several specs side by side, stage by stage: params, forward FLOPs and activation memory,
absolute and as shares of each network, with totals. Built from profile documents, so the
numbers are the profiler's (same settings for every spec)."""
from __future__ import annotations

import json

from archspec.vocabulary import DEFAULT_MEASURE, bytes_unit, conventions_line, flops_prefix

SCHEMA = "archspec.compare/1"


def merge_stage_names(name_lists) -> list[str]:
    """The union of several networks' stage names, each network's order kept (conv1, res2 ... res7,
    head): a name not yet placed goes right after the latest earlier stage of its own network already
    placed, else right before the earliest later one, else at the end. So the first network's order
    comes first wherever the order is free (conv1 before a second network's stem). The one merge
    for every side-by-side table (compare, table)."""
    order: list[str] = []
    for names in name_lists:
        names = list(names)
        for i, name in enumerate(names):
            if name in order:
                continue
            before = [order.index(n) for n in names[:i] if n in order]
            after = [order.index(n) for n in names[i + 1:] if n in order]
            pos = max(before) + 1 if before else (min(after) if after else len(order))
            order.insert(pos, name)
    return order


def stage_order(docs: list[dict]) -> list[str]:
    """The merged stage names of several profile documents (see merge_stage_names)."""
    return merge_stage_names([r["name"] for r in doc["stages"]] for doc in docs)


def compare_docs(docs: list[dict], measure: str = DEFAULT_MEASURE) -> dict:
    """The comparison document: one record per (stage, spec) that exists, plus totals."""
    first = docs[0]["settings"]
    rows = []
    for name in stage_order(docs) + ["total"]:
        row = {"stage": name, "specs": {}}
        for doc in docs:
            rec = doc["total"] if name == "total" else next((r for r in doc["stages"] if r["name"] == name), None)
            if rec is None:
                continue
            row["specs"][doc["spec"]] = {
                "params": rec["params"], "params_share": rec["params_share"],
                "flops": rec["forward"]["flops"], "flops_share": rec["forward"]["share"],
                "memory_bytes": rec["activation_bytes"][measure], "memory_share": rec["activation_share"][measure]}
        rows.append(row)
    return {
        "schema": SCHEMA,
        "specs": [d["spec"] for d in docs],
        "titles": {d["spec"]: d["title"] for d in docs},
        "settings": {"batch": first["batch"], "dtype": first["dtype"], "bytes_per_element": first["bytes_per_element"],
                     "ops": first["ops"], "measure": measure,
                     "input_sizes": {d["spec"]: d["settings"]["input_size"] for d in docs}},
        "conventions": {"flops": f"forward FLOPs per image = 2 x MACs of {', '.join(first['ops'])}",
                        "memory": docs[0]["conventions"]["activation_measures"][measure]
                        + f"; bytes at batch {first['batch']}, {first['dtype']}",
                        "shares": "percent of the network's own total (head included)"},
        "rows": rows,
    }


def caption(doc: dict) -> str:
    s, c = doc["settings"], doc["conventions"]
    sizes = {tuple(v) for v in s["input_sizes"].values()}
    size = "x".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else "per spec"
    return (f"{' vs '.join(doc['titles'][n] or n for n in doc['specs'])}, per stage; input {size}. "
            f"{conventions_line(s['ops'], s['measure'], batch=s['batch'], dtype=s['dtype'])} "
            f"Params: exact counts. '{s['measure']}' = {c['memory']}. Shares: {c['shares']}.")


def _units(doc: dict) -> tuple[str, float, str, int]:
    totals = [v for row in doc["rows"] if row["stage"] == "total" for v in row["specs"].values()]
    prefix, scale = flops_prefix(max(t["flops"] for t in totals))
    unit, size = bytes_unit(max(t["memory_bytes"] for t in totals))
    return prefix, scale, unit, size


def columns(doc: dict) -> list[tuple[str, str]]:
    """(spec, column) pairs in display order."""
    prefix, _, unit, _ = _units(doc)
    return [(spec, col) for spec in doc["specs"]
            for col in ("params", "params %", f"{prefix}FLOPs", "FLOPs %", f"memory {unit}", "memory %")]


def display_rows(doc: dict) -> list[list[str]]:
    _, scale, _, size = _units(doc)
    out = []
    for row in doc["rows"]:
        cells = [row["stage"]]
        for spec in doc["specs"]:
            v = row["specs"].get(spec)
            if v is None:
                cells += ["-"] * 6
                continue
            cells += [f"{v['params']:,}", f"{100 * v['params_share']:.2f}", f"{v['flops'] / scale:.3f}",
                      f"{100 * v['flops_share']:.2f}", f"{v['memory_bytes'] / size:.1f}",
                      f"{100 * v['memory_share']:.2f}"]
        out.append(cells)
    return out


def csv_frame(doc: dict):
    """Tidy: one line per (stage, spec) with raw numbers."""
    import pandas as pd

    records = [{"stage": row["stage"], "spec": spec, **values, "measure": doc["settings"]["measure"]}
               for row in doc["rows"] for spec, values in row["specs"].items()]
    return pd.DataFrame.from_records(records)


def render(doc: dict, fmt: str, standalone: bool = False) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "csv":
        return csv_frame(doc).to_csv(index=False)
    import pandas as pd

    if fmt == "md":
        header = ["stage"] + [f"{spec} {col}" for spec, col in columns(doc)]
        frame = pd.DataFrame(display_rows(doc), columns=header)
        return f"{caption(doc)}\n\n{frame.to_markdown(index=False, disable_numparse=True)}\n"
    if fmt == "tex":
        from archspec.report.latex import booktabs_table, document, escape

        header = ["stage"] + [col for _, col in columns(doc)]
        frame = pd.DataFrame(display_rows(doc), columns=header)
        groups = " & ".join([""] + [rf"\multicolumn{{6}}{{c}}{{{escape(doc['titles'][s] or s)}}}" for s in doc["specs"]])
        rules = " ".join(rf"\cmidrule(lr){{{2 + 6 * i}-{7 + 6 * i}}}" for i in range(len(doc["specs"])))
        text = booktabs_table(frame, caption(doc), "tab:compare-" + "-".join(doc["specs"]),
                              header_rows=[groups + r" \\", rules])
        return document(text) if standalone else text
    raise ValueError(fmt)


def print_terminal(doc: dict) -> None:
    """One table when it fits the terminal; else one table per spec (each fitted in turn)."""
    from archspec.report.terminal import console, fits, print_fitted

    headers = ["stage"] + [f"{spec} {col}" for spec, col in columns(doc)]
    rows = display_rows(doc)
    if fits(headers, rows, console().width):
        print_fitted("Per-stage comparison", headers, rows, lines=[caption(doc)])
        return
    cols = [col for _, col in columns(doc)][:6]
    for i, spec in enumerate(doc["specs"]):
        mine = [[r[0]] + r[1 + 6 * i: 7 + 6 * i] for r in rows]
        last = i == len(doc["specs"]) - 1
        print_fitted(f"Per-stage comparison: {spec} ({doc['titles'][spec] or spec})", ["stage"] + cols, mine,
                     lines=[caption(doc), f"(one table per spec to fit {console().width} columns; a wider "
                                          "terminal shows them side by side)"] if last else [])
