"""LaTeX tables in one style (booktabs rules, numbers right-aligned, a caption with the
conventions), for every report. Needs \\usepackage{booktabs} in the document."""
from __future__ import annotations

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text) -> str:
    """Plain text -> LaTeX text (every special character escaped)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def booktabs_table(frame, caption: str, label: str, header_rows: list[str] | None = None) -> str:
    """A table float from a pandas DataFrame of display strings; the first column left-aligned,
    the others right-aligned so that numbers line up. ``header_rows``: raw LaTeX lines above the
    column names (e.g. \\multicolumn groups)."""
    cols = list(frame.columns)
    lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{escape(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{l{'r' * (len(cols) - 1)}}}", r"\toprule"]
    lines += header_rows or []
    lines.append(" & ".join(escape(c) for c in cols) + r" \\")
    lines.append(r"\midrule")
    records = frame.astype(str).values.tolist()
    for i, row in enumerate(records):
        if i == len(records) - 1 and str(row[0]).lower() == "total" and len(records) > 1:
            lines.append(r"\midrule")
        lines.append(" & ".join(escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
