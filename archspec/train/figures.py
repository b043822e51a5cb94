"""Figures of training runs: loss curves per local decoder, and t-SNE maps of features.

Both write a PNG and a PDF next to each other (``out`` with its .png/.pdf suffix replaced, or
those suffixes appended) and return the two paths. Files are written atomically (a temporary
file in the same folder, then renamed), the folder is created if missing. matplotlib is used
through ``matplotlib.figure.Figure`` only (the Agg canvas, no pyplot): no global backend state,
safe in tests and worker threads. PDFs carry no creation date, so reruns give the same bytes.

Sizes are a paper's (archspec.report.plots): a column (3.3 in) or the text width (6.9 in), 8 pt
fonts, saved at that size. What the lines, smoothing and t-SNE settings mean is in the captions
(``loss_caption``, ``tsne_caption``), not in the images; ``loss_figure`` and ``tsne_figure``
give the ``Figure`` itself.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

LOSS_PREFIX = "loss/"


def _outputs(out) -> tuple[Path, Path]:
    out = Path(out)
    base = out.with_suffix("") if out.suffix.lower() in (".png", ".pdf") else out
    return base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")


def _save(fig, out) -> list[Path]:
    """``out``.png and ``out``.pdf, by the one figure writer (archspec.report.plots.save_figure)."""
    from archspec.io import make_dir
    from archspec.report.plots import save_figure

    png, _ = _outputs(out)
    make_dir(png.parent)
    return save_figure(fig, png.with_suffix(""))


def ema(values, smoothing: float) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing); 0: unchanged."""
    values = np.asarray(values, dtype=float)
    if smoothing <= 0 or len(values) == 0:
        return values
    out = np.empty_like(values)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = smoothing * acc + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out[i] = acc / weight
    return out


def loss_keys(runs: dict[str, list[dict]]) -> list[str]:
    """The ``loss/<stage>`` keys of all runs (``loss`` if none), in order of first appearance,
    runs with more losses first (so GIM's res2 ... res5 order wins over SimCLR's lone res5)."""
    keys: list[str] = []
    def count(records):
        return len({k for rec in records for k in rec if k.startswith(LOSS_PREFIX)})
    for records in sorted(runs.values(), key=count, reverse=True):
        for rec in records:
            for key in rec:
                if key.startswith(LOSS_PREFIX) and key not in keys:
                    keys.append(key)
    if not keys and any("loss" in rec for records in runs.values() for rec in records):
        keys = ["loss"]
    return keys


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = [], []
    for i, rec in enumerate(records):
        value = rec.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            steps.append(float(rec.get("step", i)))
            values.append(value)
    return np.asarray(steps), np.asarray(values)


def _loss_layout(n: int, width, columns: int | None) -> tuple[float, int, int, float]:
    """(width in, columns, rows, height in): a column figure (2 panels a row) up to 4 panels,
    else text width (4 a row)."""
    from archspec.report.plots import figure_width

    inches = figure_width(width, wide=n > 4)
    cols = max(1, min(columns or (2 if inches < 5 else 4), n))
    rows = math.ceil(n / cols)
    row = min(2.4, max(1.4, 0.75 * inches / cols + 0.3))
    return inches, cols, rows, row * rows + 0.3


def loss_figure(runs: dict[str, list[dict]], smoothing: float = 0.6, title: str | None = None,
                columns: int | None = None, width=None):
    """The loss curves as a ``Figure`` (see ``plot_loss_curves``)."""
    from matplotlib.ticker import MaxNLocator

    from archspec.report.plots import FONT_PT, fit_legend, freeze_layout, new_figure, paper_style

    keys = loss_keys(runs)
    if not keys:
        raise ValueError("no loss/<stage> values in the runs' records")
    n = len(keys)
    inches, cols, rows, height = _loss_layout(n, width, columns)
    colours = {name: f"C{i % 10}" for i, name in enumerate(runs)}
    with paper_style():
        fig = new_figure(inches, height + (0.25 if title else 0.0))
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, key in enumerate(keys):
            ax = axes[i // cols][i % cols]
            for name, records in runs.items():
                steps, values = _series(records, key)
                if len(values) == 0:
                    continue
                if smoothing > 0 and len(values) > 1:
                    ax.plot(steps, values, color=colours[name], alpha=0.25, linewidth=0.6)
                    ax.plot(steps, ema(values, smoothing), color=colours[name], linewidth=1.2, label=name)
                else:
                    ax.plot(steps, values, color=colours[name], linewidth=1.2, label=name,
                            marker="o" if len(values) == 1 else None, markersize=3)
            ax.set_title(key[len(LOSS_PREFIX):] if key.startswith(LOSS_PREFIX) else key, fontsize=FONT_PT)
            if i + cols >= n:  # nothing drawn below this panel
                ax.set_xlabel("step", fontsize=FONT_PT)
            if i % cols == 0:
                ax.set_ylabel("contrastive loss", fontsize=FONT_PT)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=FONT_PT)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        for j in range(n, rows * cols):
            axes[j // cols][j % cols].set_visible(False)
        handles, labels = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fit_legend(fig, handles, labels, "outside lower center", most=6)
        if title:
            fig.suptitle(title, fontsize=FONT_PT + 1)
        freeze_layout(fig)
    return fig


def plot_loss_curves(runs: dict[str, list[dict]], out, smoothing: float = 0.6, title: str | None = None,
                     columns: int | None = None, *, width=None) -> list[Path]:
    """One panel per local decoder (``loss/<stage>`` key, titled with the stage's name), one line
    per run (labelled with the run's key in ``runs``, the same colour in every panel), loss
    against step.

    ``smoothing`` > 0 draws the EMA-smoothed curve over the raw one (faint). A run without a
    stage's loss (SimCLR has only the last stage's) is absent from that panel. ``width``:
    "column", "text", inches or None (a column figure up to 4 panels, else text width);
    ``columns``: panels a row (None: 2 in a column figure, 4 at text width). Returns [png, pdf];
    the caption is ``loss_caption(runs, smoothing)``.
    """
    return _save(loss_figure(runs, smoothing, title, columns, width), out)


def loss_caption(runs: dict[str, list[dict]], smoothing: float = 0.6, sources: dict[str, str] | None = None,
                 fmt: str = "md") -> str:
    """The caption of ``plot_loss_curves(runs, ..., smoothing)``: what the panels, lines and
    smoothing are. ``sources``: where each run (key of ``runs``) came from, named in the caption
    where it differs from the key (e.g. a run folder under a ``--labels`` name). ``fmt``: "md",
    "tex" or "text" (as ``archspec.report.plots.shares_caption``)."""
    from archspec.report.plots import _escape

    keys = loss_keys(runs)
    stages = {name: [k for k in keys if len(_series(records, k)[1])] for name, records in runs.items()}
    sources = sources or {}
    named = ", ".join(name if sources.get(name, name) == name else f"{name}: {sources[name]}" for name in runs)
    if keys == ["loss"]:
        what = f"The training loss against the step, one line per run ({named})."
    else:
        what = (f"The contrastive loss of each local decoder against the training step, one panel per decoder "
                f"(titled with its stage), one line per run ({named}), in the same colour in every panel.")
    if smoothing > 0:
        lines = (f" Thick lines: the logged loss smoothed by an exponential moving average (smoothing {smoothing:g}, "
                 f"bias-corrected as in TensorBoard); faint lines: the logged values.")
    else:
        lines = " Lines: the logged values, not smoothed."
    partial = [f"{name} logs only {', '.join(k[len(LOSS_PREFIX):] if k.startswith(LOSS_PREFIX) else k for k in ks)}"
               for name, ks in stages.items() if len(ks) < len(keys)]
    absent = f" A run is absent from the panels of decoders it does not train: {'; '.join(partial)}." if partial else ""
    return _escape(what + lines + absent, fmt)


def tsne_settings(n_points: int, dims: int, max_points: int = 5000, perplexity: float = 30.0) -> dict:
    """What ``plot_tsne`` does to ``n_points`` features of ``dims`` dimensions: the points kept,
    the perplexity used (at most (points - 1) / 3) and whether PCA to 50 dimensions runs first."""
    n = min(n_points, max_points)
    return {"points": n, "subset": n < n_points, "perplexity": min(perplexity, max(1.0, (n - 1) / 3)),
            "pca": dims > 50 and n > 50}


def plot_tsne(features, labels, out, classes=None, seed: int = 0, title: str | None = None,
              max_points: int = 5000, perplexity: float = 30.0, threads: int | None = 1, *,
              width=None) -> list[Path]:
    """A 2-d t-SNE map of ``features`` [N, D] coloured by ``labels`` [N], with a legend of class
    names (``classes[label]``, or the label). More than ``max_points`` points: a seeded random
    subset. More than 50 dimensions: PCA to 50 first (the usual practice). ``threads`` limits
    OpenMP/BLAS threads during the fit (None: no limit); 1 by default, because scikit-learn's
    t-SNE slows down many times over when its threads compete with other work for the cores.
    ``width``: "column", "text", inches or None (column; text width for 16 to 30 classes).
    Returns [png, pdf]; the caption is ``tsne_caption(N, D, subject, ...)``."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float32)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(int).reshape(-1)
    x = x.reshape(len(x), -1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    if len(x) < 3:
        raise ValueError("t-SNE needs at least 3 points")
    how = tsne_settings(len(x), x.shape[1], max_points, perplexity)
    rng = np.random.default_rng(seed)
    if how["subset"]:
        keep = np.sort(rng.choice(len(x), size=max_points, replace=False))
        x, y = x[keep], y[keep]
    with threadpool_limits(limits=threads):
        if how["pca"]:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        emb = TSNE(n_components=2, perplexity=how["perplexity"], init="pca", random_state=seed).fit_transform(x)
    return _save(tsne_figure(emb, y, classes, title, width), out)


def tsne_figure(emb, y, classes=None, title: str | None = None, width=None):
    """A t-SNE map (``emb`` [N, 2], class ``y`` [N]) as a ``Figure`` (see ``plot_tsne``)."""
    from archspec.report.plots import FONT_PT, figure_width, freeze_layout, new_figure, paper_style

    emb, y = np.asarray(emb), np.asarray(y).astype(int).reshape(-1)
    present = sorted(set(y.tolist()))
    inches = figure_width(width, wide=15 < len(present) <= 30)
    with paper_style():
        fig = new_figure(inches, 2.6 if inches < 5 else 4.2)
        ax = fig.subplots()
        if len(present) <= 10:
            colour = {c: f"C{i}" for i, c in enumerate(present)}
        else:
            from matplotlib import colormaps

            cmap = colormaps["tab20" if len(present) <= 20 else "turbo"]
            many = len(present) > 20
            colour = {c: cmap(i / (len(present) - 1)) if many else cmap(i) for i, c in enumerate(present)}
        marker_size = max(1.0, min(8.0, 2500.0 / len(emb)))
        for c in present:
            mask = y == c
            name = str(classes[c]) if classes is not None and 0 <= c < len(classes) else str(c)
            ax.scatter(emb[mask, 0], emb[mask, 1], s=marker_size, color=colour[c], label=name, linewidths=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
        if title:
            ax.set_title(title, fontsize=FONT_PT)
        if len(present) <= 30:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=FONT_PT,
                      markerscale=max(1.0, 16 / marker_size) ** 0.5, ncol=1 if len(present) <= 15 else 2,
                      handletextpad=0.2, borderaxespad=0.2, labelspacing=0.3)
        freeze_layout(fig)
    return fig


def tsne_caption(n_points: int, dims: int, subject: str = "the features", *, classes: int | None = None,
                 max_points: int = 5000, perplexity: float = 30.0, seed: int = 0, fmt: str = "md") -> str:
    """The caption of ``plot_tsne`` on ``n_points`` features of ``dims`` dimensions (the same
    ``max_points``, ``perplexity`` and ``seed``); ``subject`` says what the features are, e.g.
    "the final representation of run X at step S on the test split"; ``classes``: how many."""
    from archspec.report.plots import _escape

    how = tsne_settings(n_points, dims, max_points, perplexity)
    points = (f"a seeded random subset of {how['points']} of {n_points} images" if how["subset"]
              else f"{n_points} images")
    pca = f"PCA from {dims} to 50 dimensions first, then " if how["pca"] else ""
    kinds = (" (named in the legend)" if not classes else f" ({classes} classes, named in the legend)"
             if classes <= 30 else f" ({classes} classes, too many for a legend)")
    text = (f"t-SNE map of {subject}: {points}, one point each, coloured by class{kinds}. {pca}scikit-learn's "
            f"t-SNE with PCA initialisation, perplexity {how['perplexity']:.3g}, seed {seed}. The axes carry no "
            f"units; distances between clusters far apart mean little.")
    return _escape(text, fmt)
