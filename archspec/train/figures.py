"""Figures of training runs: loss curves per local decoder, and t-SNE maps of features.

Both write a PNG and a PDF next to each other (``out`` with its .png/.pdf suffix replaced, or
those suffixes appended) and return the two paths. Files are written atomically (a temporary
file in the same folder, then renamed), the folder is created if missing. matplotlib is used
through ``matplotlib.figure.Figure`` only (the Agg canvas, no pyplot): no global backend state,
safe in tests and worker threads. PDFs carry no creation date, so reruns give the same bytes.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from archspec.io import write_bytes_atomic

LOSS_PREFIX = "loss/"


def _outputs(out) -> tuple[Path, Path]:
    out = Path(out)
    base = out.with_suffix("") if out.suffix.lower() in (".png", ".pdf") else out
    return base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")


def _save(fig, out) -> list[Path]:
    png, pdf = _outputs(out)
    png.parent.mkdir(parents=True, exist_ok=True)
    for path, fmt, extra in ((png, "png", {"dpi": 150}), (pdf, "pdf", {"metadata": {"CreationDate": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", **extra)
        write_bytes_atomic(path, buf.getvalue())
        os.chmod(path, 0o666 & ~_umask())  # mkstemp's 0600 -> what a plain open() would give
    return [png, pdf]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


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


def plot_loss_curves(runs: dict[str, list[dict]], out, smoothing: float = 0.6, title: str | None = None,
                     columns: int = 4) -> list[Path]:
    """One panel per local decoder (``loss/<stage>`` key, titled with the stage's name), one line
    per run (labelled with the run's name, the same colour in every panel), loss against step.

    ``smoothing`` > 0 draws the EMA-smoothed curve over the raw one (faint). A run without a
    stage's loss (SimCLR has only the last stage's) is absent from that panel. Returns [png, pdf].
    """
    keys = loss_keys(runs)
    if not keys:
        raise ValueError("no loss/<stage> values in the runs' records")
    n = len(keys)
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    fig = _new_figure(3.4 * cols + 0.6, 2.8 * rows + (0.4 if title else 0.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = {name: f"C{i % 10}" for i, name in enumerate(runs)}
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        for name, records in runs.items():
            steps, values = _series(records, key)
            if len(values) == 0:
                continue
            if smoothing > 0 and len(values) > 1:
                ax.plot(steps, values, color=colours[name], alpha=0.25, linewidth=0.8)
                ax.plot(steps, ema(values, smoothing), color=colours[name], linewidth=1.6, label=name)
            else:
                ax.plot(steps, values, color=colours[name], linewidth=1.6, marker="o" if len(values) == 1 else None,
                        label=name)
        ax.set_title(key[len(LOSS_PREFIX):] if key.startswith(LOSS_PREFIX) else key)
        ax.set_xlabel("step")
        if i % cols == 0:
            ax.set_ylabel("contrastive loss")
        ax.grid(True, alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    return _save(fig, out)


def plot_tsne(features, labels, out, classes=None, seed: int = 0, title: str | None = None,
              max_points: int = 5000, perplexity: float = 30.0, threads: int | None = 1) -> list[Path]:
    """A 2-d t-SNE map of ``features`` [N, D] coloured by ``labels`` [N], with a legend of class
    names (``classes[label]``, or the label). More than ``max_points`` points: a seeded random
    subset. More than 50 dimensions: PCA to 50 first (the usual practice). ``threads`` limits
    OpenMP/BLAS threads during the fit (None: no limit); 1 by default, because scikit-learn's
    t-SNE slows down many times over when its threads compete with other work for the cores.
    Returns [png, pdf]."""
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
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        keep = np.sort(rng.choice(len(x), size=max_points, replace=False))
        x, y = x[keep], y[keep]
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    with threadpool_limits(limits=threads):
        if x.shape[1] > 50 and len(x) > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig = _new_figure(6.4, 5.2)
    ax = fig.subplots()
    present = sorted(set(y.tolist()))
    if len(present) <= 10:
        colour = {c: f"C{i}" for i, c in enumerate(present)}
    else:
        from matplotlib import colormaps

        cmap = colormaps["tab20" if len(present) <= 20 else "turbo"]
        many = len(present) > 20
        colour = {c: cmap(i / (len(present) - 1)) if many else cmap(i) for i, c in enumerate(present)}
    marker_size = max(2.0, min(12.0, 4000.0 / len(x)))
    for c in present:
        mask = y == c
        name = str(classes[c]) if classes is not None and 0 <= c < len(classes) else str(c)
        ax.scatter(emb[mask, 0], emb[mask, 1], s=marker_size, color=colour[c], label=name, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if len(present) <= 30:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small",
                  markerscale=max(1.0, 20 / marker_size) ** 0.5, ncol=1 if len(present) <= 15 else 2)
    fig.tight_layout()
    return _save(fig, out)
