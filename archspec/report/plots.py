"""Plots of balance: per-local-stage shares of FLOPs, memory and params for several specs side by
side, the band drawn in. PNG plus PDF, written atomically, with no timestamps in the files."""
from __future__ import annotations

import io
from pathlib import Path

PANELS = (("flops", "FLOPs"), ("memory", "activation memory"), ("params", "parameters"))
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}


def save_figure(fig, stem, formats=("png", "pdf")) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically; returns the paths."""
    from archspec.io import write_bytes_atomic

    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        meta = PDF_METADATA if fmt == "pdf" else {"Software": None}
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight", metadata=meta)
        path = Path(f"{stem}.{fmt}")
        write_bytes_atomic(path, buf.getvalue())
        paths.append(path)
    return paths


def plot_shares(docs: list[dict], stem) -> list[Path]:
    """``docs``: balance documents (archspec.report.balance). One panel per metric; in each, one
    group of bars per spec (its local stages), the spec's band shaded and its ideal share dashed;
    bars outside the band are hatched and outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    widths = [len(d["stages"]) for d in docs]
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(max(7.0, 0.55 * (sum(widths) + 2 * len(docs))), 9),
                             sharex=True)
    for ax, (metric, label) in zip(axes, PANELS):
        x0, ticks, ticklabels = 0, [], []
        top = 0.0
        for k, doc in enumerate(docs):
            n = len(doc["stages"])
            lo, hi = doc["settings"]["band"]
            xs = [x0 + i for i in range(n)]
            shares = [r[f"{metric}_share"] for r in doc["stages"]]
            bars = ax.bar(xs, shares, width=0.8, color=colours[k % len(colours)],
                          label=doc["title"] or doc["spec"] if metric == "flops" else None)
            for bar, row, share in zip(bars, doc["stages"], shares):
                if metric in ("flops", "memory") and not row[f"{metric}_in_band"]:
                    bar.set_hatch("//")
                    bar.set_edgecolor("red")
                ax.annotate(f"{share:.1f}", (bar.get_x() + bar.get_width() / 2, share), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
            ax.fill_between([x0 - 0.45, x0 + n - 0.55], lo, hi, color="green", alpha=0.15, linewidth=0,
                            label=("band (per spec)" if k == 0 and metric == "flops" else None))
            ax.hlines(100 / n, x0 - 0.45, x0 + n - 0.55, colors="black", linestyles="dashed", linewidth=0.8,
                      label=("equal share 100/N" if k == 0 and metric == "flops" else None))
            ticks += xs
            ticklabels += [r["name"] for r in doc["stages"]]
            top = max(top, max(shares), hi)
            x0 += n + 1
        ax.set_ylabel(f"{label} share (%)")
        ax.set_ylim(0, top * 1.18)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(ticks)
        ax.set_xticklabels(ticklabels, rotation=30, ha="right", fontsize=8)
    s = docs[0]["settings"]
    fig.suptitle("Share of each local stage (stem folded into the first stage, head left out)\n"
                 f"FLOPs: 2 x MACs of {'+'.join(s['ops'])} per image; memory: '{s['measure']}'; "
                 "hatched red = outside the band", fontsize=9, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=len(labels), fontsize=8,
               frameon=False)
    try:
        return save_figure(fig, stem)
    finally:
        plt.close(fig)
