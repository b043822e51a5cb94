"""``archspec profile --paper``: the LoCo paper's Table 6 view of a spec (shares of memory and
FLOPs per local stage, the paper's figures and the differences), in every output format."""
from __future__ import annotations

import json

from archspec.vocabulary import conventions_line


def caption(doc: dict) -> str:
    return (f"Table 6 view of {doc['spec']}: shares (%) per local stage, the stem folded into the first, the head "
            f"left out. {conventions_line(doc['ops'], 'block_outputs')} Shares do not depend on the batch or the "
            f"element type. d = ours - the paper's, in points.")


def rows(doc: dict) -> list[dict]:
    """Display rows: ours, the paper's where known, the differences."""
    out = []
    for r in doc["rows"]:
        row = {"local stage": r["stage"], "memory %": f"{r['memory']:.2f}", "FLOPs %": f"{r['flops']:.2f}"}
        if "paper_memory" in r:
            row.update({"paper memory %": f"{r['paper_memory']:.2f}", "paper FLOPs %": f"{r['paper_flops']:.2f}",
                        "d memory": f"{r['memory'] - r['paper_memory']:+.2f}",
                        "d FLOPs": f"{r['flops'] - r['paper_flops']:+.2f}"})
        out.append(row)
    return out


def total_line(doc: dict) -> str:
    line = f"Total: {2 * doc['total_macs'] / 1e9:.2f} GFLOPs ({doc['total_macs'] / 1e9:.2f} G MACs) of " \
           f"{', '.join(doc['ops'])} per image"
    if doc["paper_total"]:
        line += f"; the paper prints {doc['paper_total']} (MACs)"
    return line + "."


def csv_frame(doc: dict):
    import pandas as pd

    return pd.DataFrame.from_records([{"local_stage": r["stage"], "memory_share": r["memory"],
                                       "flops_share": r["flops"], "paper_memory_share": r.get("paper_memory"),
                                       "paper_flops_share": r.get("paper_flops")} for r in doc["rows"]])


def render(doc: dict, fmt: str, standalone: bool = False) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "csv":
        return csv_frame(doc).to_csv(index=False)
    import pandas as pd

    frame = pd.DataFrame(rows(doc))
    if fmt in ("md", "table"):
        return f"{caption(doc)}\n\n{frame.to_markdown(index=False, disable_numparse=True)}\n\n{total_line(doc)}\n"
    if fmt == "tex":
        from archspec.report import latex

        text = latex.booktabs_table(frame, f"{caption(doc)} {total_line(doc)}", f"tab:{doc['spec']}-table6")
        return latex.document(text) if standalone else text
    raise ValueError(fmt)


def print_terminal(doc: dict) -> None:
    from archspec.report.terminal import print_fitted

    table = rows(doc)
    print_fitted(f"{doc['spec']}: the LoCo paper's Table 6 view", list(table[0]), [list(r.values()) for r in table],
                 total_row=False, lines=[caption(doc), total_line(doc)])
