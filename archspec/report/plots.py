"""Plots of balance: per-local-stage shares of FLOPs, memory and params for several specs side by
side, the band drawn in. PNG plus PDF, written atomically, with no timestamps in the files.

Figures are sized for a paper: a column figure is ``COLUMN_IN`` (3.3 in) wide, a text-width one
``TEXT_IN`` (6.9 in), every font at ``FONT_PT`` (8 pt) or more at that size, and the files keep
that size (no tight cropping), so ``\\includegraphics`` at the column or text width prints the
fonts at their size. The conventions go into the caption (``shares_caption``), not the image.
The helpers here (``paper_style``, ``new_figure``, ``fit_legend``, ``figure_width``) are shared
with the training figures (archspec.train.figures)."""
from __future__ import annotations

import io
import math
from contextlib import contextmanager
from pathlib import Path

PANELS = (("flops", "FLOPs"), ("memory", "activation memory"), ("params", "parameters"))
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
COLUMN_IN = 3.3
TEXT_IN = 6.9
FONT_PT = 8
STYLE = {"font.size": FONT_PT, "axes.titlesize": FONT_PT, "axes.labelsize": FONT_PT,
         "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT,
         "legend.title_fontsize": FONT_PT, "figure.titlesize": FONT_PT + 1, "axes.linewidth": 0.6,
         "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
         "grid.linewidth": 0.5, "hatch.linewidth": 0.6, "legend.handlelength": 1.6, "legend.columnspacing": 1.2,
         "pdf.fonttype": 42, "ps.fonttype": 42}  # TrueType in the PDF: editable, no Type 3 fonts
_WIDTHS = {"column": COLUMN_IN, "text": TEXT_IN}


def figure_width(width, wide: bool = False) -> float:
    """``width``: "column" (3.3 in), "text" (6.9 in), inches (a number) or None (text when
    ``wide``, else column). Returns inches."""
    if width is None:
        return TEXT_IN if wide else COLUMN_IN
    if isinstance(width, str):
        if width not in _WIDTHS:
            raise ValueError(f"width must be 'column', 'text' or inches, got {width!r}")
        return _WIDTHS[width]
    inches = float(width)
    if not (math.isfinite(inches) and inches > 0):
        raise ValueError(f"width must be positive inches, got {width!r}")
    return inches


@contextmanager
def paper_style():
    """matplotlib settings of every figure (8 pt fonts, thin lines, TrueType in PDFs). Build,
    lay out and save a figure inside it: tick labels read their size when they are drawn."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float):
    """A ``Figure`` on an Agg canvas (no pyplot, no global backend) with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def fit_legend(fig, handles, labels, loc: str, most: int | None = None):
    """A figure legend in as many columns (at most ``most``) as fit the figure's width."""
    renderer = fig.canvas.get_renderer()
    ncol = max(1, min(len(labels), most or len(labels)))
    while True:
        legend = fig.legend(handles, labels, loc=loc, ncol=ncol, frameon=False, fontsize=FONT_PT)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return legend
        legend.remove()
        ncol -= 1


def freeze_layout(fig) -> None:
    """Run the layout once and keep it: saving then draws exactly what was measured."""
    fig.draw_without_rendering()
    fig.set_layout_engine("none")


def save_figure(fig, stem, formats=("png", "pdf")) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically, at the figure's size; returns the paths."""
    from archspec.io import write_bytes_atomic

    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        meta = PDF_METADATA if fmt == "pdf" else {"Software": None}
        with paper_style():
            fig.savefig(buf, format=fmt, dpi=150, metadata=meta)
        path = Path(f"{stem}.{fmt}")
        write_bytes_atomic(path, buf.getvalue())
        paths.append(path)
    return paths


def _finite(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else 0.0


def shares_figure(docs: list[dict], width=None):
    """The share panels as a ``Figure`` (see ``plot_shares``). ``width``: see ``figure_width``;
    by default a column figure for up to 9 bars and gaps, else text width."""
    units = sum(len(d["stages"]) for d in docs) + len(docs) - 1
    inches = figure_width(width, wide=units > 9)
    with paper_style():
        fig = new_figure(inches, 4.6 if inches < 5 else 4.4)
        axes = fig.subplots(len(PANELS), 1, sharex=True)
        colours = [f"C{k % 10}" for k in range(len(docs))]
        groups = []  # per axes: (label texts, [(x0, x1, [reference ys])] per doc)
        for ax, (metric, label) in zip(axes, PANELS):
            x0, ticks, ticklabels, top, texts, refs = 0, [], [], 0.0, [], []
            for k, doc in enumerate(docs):
                n = len(doc["stages"])
                lo, hi = doc["settings"]["band"]
                xs = [x0 + i for i in range(n)]
                shares = [_finite(r[f"{metric}_share"]) for r in doc["stages"]]
                first = metric == "flops"
                bars = ax.bar(xs, shares, width=0.8, color=colours[k], zorder=2, linewidth=0,
                              label=(doc["title"] or doc["spec"]) if first else None)
                span = (x0 - 0.45, x0 + n - 0.55)
                ax.fill_between(span, lo, hi, color="green", alpha=0.15, linewidth=0, zorder=1,
                                label=("band (per network)" if k == 0 and first else None))
                ax.hlines(100 / n, *span, colors="black", linestyles="dashed", linewidth=0.8, zorder=3,
                          label=("equal share 100/N" if k == 0 and first else None))
                for bar, row, share in zip(bars, doc["stages"], shares):
                    if metric in ("flops", "memory") and not row[f"{metric}_in_band"]:
                        bar.set_hatch("//")
                        bar.set_edgecolor("red")
                        bar.set_linewidth(0.8)
                    text = ax.text(bar.get_x() + bar.get_width() / 2, share, f"{share:.1f}", ha="center",
                                   va="bottom", fontsize=FONT_PT, zorder=4)
                    text.set_in_layout(False)
                    texts.append((text, share, k))
                refs.append((span, sorted({lo, hi, 100 / n})))
                ticks += xs
                ticklabels += [r["name"] for r in doc["stages"]]
                top = max(top, max(shares, default=0.0), hi, 100 / n)
                x0 += n + 1
            ax.set_ylabel(f"{label} (%)")
            ax.set_ylim(0, top * 1.12 or 1.0)
            ax.set_xlim(-0.6, x0 - 1.4)
            ax.tick_params(labelsize=FONT_PT)
            ax.set_xticks(ticks)
            ax.set_xticklabels(ticklabels, rotation=30, ha="right", rotation_mode="anchor", fontsize=FONT_PT)
            groups.append((ax, texts, refs))
        handles, labels = axes[0].get_legend_handles_labels()
        fit_legend(fig, handles, labels, "outside upper center")
        for _ in range(6):  # place the labels, grow the axes' tops to hold them, until it settles
            fig.draw_without_rendering()
            if not any([_place_labels(ax, texts, refs) for ax, texts, refs in groups]):
                break
        freeze_layout(fig)
    return fig


def _place_labels(ax, texts, refs) -> bool:
    """Each value label just above its bar, or just above the reference line (band edge or
    equal share) it would otherwise cross; rotated upright when a label is wider than its bar. Returns True when the y-axis had to grow (then place again)."""
    renderer = ax.figure.canvas.get_renderer()
    y0, y1 = ax.get_ylim()
    per_px = (y1 - y0) / max(ax.bbox.height, 1.0)
    pitch = abs(ax.transData.transform((1, 0))[0] - ax.transData.transform((0, 0))[0])
    for text, _, _ in texts:
        text.set_rotation(0)
    upright = any(t.get_window_extent(renderer).width > 0.8 * pitch for t, _, _ in texts)  # wider than a bar
    pad = 1.5 * ax.figure.dpi / 72 * per_px  # 1.5 pt above the bar or the line
    highest = 0.0
    for text, share, k in texts:
        text.set_rotation(90 if upright else 0)
        height = text.get_window_extent(renderer).height * per_px
        bottom = max(share, 0.0) + pad
        for y in refs[k][1]:
            if bottom - pad <= y <= bottom + height + pad:
                bottom = y + pad
        text.set_y(bottom)
        highest = max(highest, bottom + height)
    if highest > y1 - pad:
        ax.set_ylim(y0, highest + 2 * pad)
        return True
    return False


def plot_shares(docs: list[dict], stem, *, width=None) -> list[Path]:
    """``docs``: balance documents (archspec.report.balance). One panel per metric; in each, one
    group of bars per spec (its local stages), the spec's band shaded and its equal share
    dashed, each bar labelled with its share (never crossed by those lines); bars outside the
    band are hatched and outlined in red. ``width``: "column", "text", inches or None (column
    up to 9 bars and gaps, else text). Returns [png, pdf]; the caption is ``shares_caption(docs)``."""
    return save_figure(shares_figure(docs, width=width), stem)


def _each(docs: list[dict], values: list[str]) -> str:
    """One value when every network has it, else 'value (network); ...'."""
    if len(set(values)) == 1:
        return values[0]
    return "; ".join(f"{v} ({d['title'] or d['spec']})" for v, d in zip(values, docs))


def shares_caption(docs: list[dict], fmt: str = "md") -> str:
    """The caption of ``plot_shares(docs, ...)``: what the panels, bars, shading, dashes and
    hatching mean, and every convention behind the numbers. ``fmt``: "md" (markup characters
    escaped), "tex" (LaTeX-escaped, for ``\\caption{...}``) or "text"."""
    names = [d["title"] or d["spec"] for d in docs]
    s = [d["settings"] for d in docs]
    c = [d["conventions"] for d in docs]
    bands = [f"{x['band'][0]:g}:{x['band'][1]:g}%" for x in s]
    bands = (f"the band ({bands[0]})" if len(set(bands)) == 1 else
             "the band of each network (" + ", ".join(f"{b} for {n}" for b, n in zip(bands, names)) + ")")
    inputs = _each(docs, [f"input {x['input_size'][0]}x{x['input_size'][1]}, {x['dtype']}" for x in s])
    text = (f"Share of each local stage in forward FLOPs (top), activation memory (middle) and parameters "
            f"(bottom), in percent of the network's total; one group of bars per network ({', '.join(names)}), "
            f"{inputs}. Local stages: {_each(docs, [x['local_stages'] for x in c])}. "
            f"FLOPs: {_each(docs, [x['flops'] for x in c])}. Memory: {_each(docs, [x['memory'] for x in c])}. "
            f"Parameters: {_each(docs, [x['params'] for x in c])}. Shaded green: {bands}; dashed: the equal "
            f"share 100/N of its N local stages; hatched and outlined in red: a FLOPs or memory share outside "
            f"the band. Each bar is labelled with its share, lifted above a band edge or dashed line it would "
            f"otherwise cross.")
    return _escape(text, fmt)


def _escape(text: str, fmt: str) -> str:
    if fmt == "md":
        from archspec.report.arch_table import md_escape

        return md_escape(text)
    if fmt == "tex":
        from archspec.report.latex import escape

        return escape(text)
    if fmt == "text":
        return " ".join(text.split())
    raise ValueError(f"fmt must be 'md', 'tex' or 'text', got {fmt!r}")
