"""Figures ready for a paper: column (3.3 in) or text-width (6.9 in) sizes kept in the files,
fonts of 8 pt or more, value labels clear of the reference lines, run labels in the legends,
and the conventions in the captions rather than in the images."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.text import Text

from archspec.report.plots import COLUMN_IN, TEXT_IN, figure_width, plot_shares, shares_caption, shares_figure
from archspec.train.figures import (loss_caption, loss_figure, plot_loss_curves, tsne_caption, tsne_figure,
                                    tsne_settings)

from .conftest import ROOT, run_cli

REPORT = ROOT / "reports" / "presnet50"


@pytest.fixture(scope="module")
def docs():
    return [json.loads((REPORT / f"balance-{n}.json").read_text()) for n in ("presnet50", "resnet50")]


def texts(fig) -> list[Text]:
    fig.draw_without_rendering()
    return [t for t in fig.findobj(Text) if t.get_text().strip()]


def assert_paper_ready(fig, width: float) -> None:
    """The size, every font >= 8 pt, nothing drawn outside the figure (the files are not cropped)."""
    assert tuple(fig.get_size_inches())[0] == pytest.approx(width)
    sizes = {t.get_text(): t.get_fontsize() for t in texts(fig)}
    assert sizes and min(sizes.values()) >= 8, {k: v for k, v in sizes.items() if v < 8}
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    w, h = fig.get_size_inches()
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 and drawn.y1 <= h + 0.01, drawn


def shares_doc(shares: dict[str, list[float]], band=(15.0, 20.0), spec="synthetic") -> dict:
    """A balance document with the given shares (enough of one for the plot and caption)."""
    n = len(shares["flops"])
    lo, hi = band
    stages = [{"name": f"s{i}", **{f"{m}_share": shares[m][i] for m in shares},
               **{f"{m}_in_band": lo <= shares[m][i] <= hi for m in ("flops", "memory")}} for i in range(n)]
    return {"spec": spec, "title": spec.title(), "stages": stages,
            "settings": {"band": list(band), "ops": ["conv"], "measure": "saved", "batch": 8,
                         "input_size": [32, 32], "dtype": "float32"},
            "conventions": {"flops": "forward FLOPs per image = 2 x MACs of conv", "memory": "saved tensors",
                            "params": "all parameters", "local_stages": "the spec's stages"}}


# -- sizes and fonts ----------------------------------------------------------------------------
def test_share_figures_are_column_or_text_wide_with_8pt_fonts(docs, tmp_path):
    one, both = shares_figure(docs[:1]), shares_figure(docs)
    assert_paper_ready(one, COLUMN_IN)  # 6 bars
    assert_paper_ready(both, TEXT_IN)  # 6 + 4 bars and a gap
    assert_paper_ready(shares_figure(docs, width="column"), COLUMN_IN)
    assert_paper_ready(shares_figure(docs[:1], width="text"), TEXT_IN)
    assert shares_figure(docs[:1], width=5).get_size_inches()[0] == 5
    paths = plot_shares(docs[:1], tmp_path / "one")
    png, pdf = (p.read_bytes() for p in paths)
    assert int.from_bytes(png[16:20], "big") == round(COLUMN_IN * 150)  # saved at its size, not cropped
    assert re.search(rb"/MediaBox \[ 0 0 237\.6 ", pdf)  # 3.3 in = 237.6 pt
    for bad in ("page", 0, -1, float("nan")):
        with pytest.raises(ValueError):
            figure_width(bad)


def test_loss_and_tsne_figures_are_column_or_text_wide_with_8pt_fonts():
    def log(stages, n=40):
        return [{"step": 10 * s, **{f"loss/{st}": 6 * math.exp(-s / 9) + i for i, st in enumerate(stages)}}
                for s in range(n)]
    four = ["conv1+res2", "res3", "res4", "res5"]
    runs = {"simclr": log(["res5"]), "gim": log(four), "loco": log(four, 25)}
    assert_paper_ready(loss_figure(runs), COLUMN_IN)
    assert_paper_ready(loss_figure({"simclr": log(["res5"])}, title="one run"), COLUMN_IN)
    six = {"gim": log([f"res{i}" for i in range(2, 8)]), "simclr": log(["res7"])}
    assert_paper_ready(loss_figure(six), TEXT_IN)
    assert_paper_ready(loss_figure(six, width="column"), COLUMN_IN)

    rng = np.random.default_rng(0)
    y = np.arange(200) % 10
    emb = rng.normal(size=(200, 2)) + 4 * np.stack([np.cos(y), np.sin(y)], 1)
    fig = tsne_figure(emb, y, classes=[f"digit {i}" for i in range(10)], title="gim")
    assert_paper_ready(fig, COLUMN_IN)
    y20 = np.arange(200) % 20
    assert_paper_ready(tsne_figure(emb, y20, title="twenty classes"), TEXT_IN)  # two legend columns


# -- value labels and reference lines -----------------------------------------------------------
def reference_lines(ax) -> list[tuple[float, float, float]]:
    """(x0, x1, y) in display coordinates of every horizontal line: the dashed equal shares and
    the edges of the shaded bands."""
    lines = []
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            segments = [np.asarray(seg) for seg in coll.get_segments()]
        else:  # a band: its lower and upper edges
            v = np.concatenate([p.vertices for p in coll.get_paths()])
            x0, x1, y0, y1 = v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max()
            segments = [np.array([[x0, y0], [x1, y0]]), np.array([[x0, y1], [x1, y1]])]
        for seg in segments:
            (a, y), (b, _) = ax.transData.transform(seg)
            lines.append((min(a, b), max(a, b), y))
    return lines


def assert_labels_clear(fig) -> int:
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    checked = 0
    for ax in fig.axes:
        lines = reference_lines(ax)
        tops = {round(p.get_x() + p.get_width() / 2, 6): ax.transData.transform((0, p.get_height()))[1]
                for p in ax.patches}
        assert len(ax.texts) == len(ax.patches)
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            for x0, x1, y in lines:
                crossed = box.x0 < x1 and x0 < box.x1 and box.y0 <= y <= box.y1
                assert not crossed, (text.get_text(), ax.get_ylabel(), y, box)
            assert box.y0 >= tops[round(text.get_position()[0], 6)] - 0.5  # above its bar
            assert box.y1 <= ax.bbox.y1 + 0.5  # inside the panel
            checked += 1
    return checked


def test_value_labels_are_not_struck_through_by_reference_lines(docs):
    assert assert_labels_clear(shares_figure(docs)) == 3 * 10
    assert assert_labels_clear(shares_figure(docs[:1])) == 3 * 6
    ideal = 100 / 6
    # Shares on, just under and just over the band edges and the equal share: every label would
    # be crossed if it sat on its bar.
    hard = shares_doc({"flops": [ideal, 14.9, 19.8, 15.0, 20.0, ideal - 0.3],
                       "memory": [19.9, 14.6, ideal + 0.2, 20.0, 15.5, 13.1],
                       "params": [ideal - 0.1, 0.5, 62.0, 19.7, 14.8, 1.0]})
    assert assert_labels_clear(shares_figure([hard])) == 18
    assert assert_labels_clear(shares_figure([hard, hard | {"spec": "again"}], width="text")) == 36
    # Many narrow bars in a column: the labels turn upright and still clear the lines.
    many = shares_doc({m: [100 / 14 + (i % 3 - 1) * 0.2 for i in range(14)] for m in ("flops", "memory", "params")},
                      band=(6.5, 8.5))
    fig = shares_figure([many], width="column")
    assert assert_labels_clear(fig) == 42
    assert {t.get_rotation() for t in fig.axes[0].texts} == {90.0}


def test_degenerate_shares_still_plot(tmp_path):
    one = shares_doc({"flops": [100.0], "memory": [100.0], "params": [float("nan")]}, band=(90.0, 120.0))
    zero = shares_doc({m: [0.0, 0.0] for m in ("flops", "memory", "params")}, band=(45.0, 60.0), spec="zero")
    assert assert_labels_clear(shares_figure([one, zero])) == 9
    assert [p.suffix for p in plot_shares([one], tmp_path / "one")] == [".png", ".pdf"]


# -- conventions: in the captions, not the images -----------------------------------------------
CONVENTION_WORDS = ("MACs", "hatched", "stem", "head left out", "block_outputs", "per image", "batch", "outside")


def test_share_conventions_are_in_the_caption_not_the_figure(docs):
    fig = shares_figure(docs)
    assert fig.get_suptitle() == ""
    inside = " ".join(t.get_text() for t in texts(fig))
    assert not [w for w in CONVENTION_WORDS if w in inside], inside
    assert "Progressive ResNet-50" in inside and "equal share 100/N" in inside  # the legend stays
    caption = shares_caption(docs)
    for needle in ("2 x MACs of conv, fc", docs[0]["conventions"]["memory"],
                   docs[0]["conventions"]["local_stages"], "hatched and outlined in red", "100/N",
                   "15:20% for Progressive ResNet-50", "22.5:30% for ResNet-50", "input 224x224, float32",
                   "Progressive ResNet-50, ResNet-50"):
        assert needle in caption, needle
    assert "\n" not in caption
    tex = shares_caption(docs, "tex")
    assert r"15:20\% for" in tex and "%" not in tex.replace(r"\%", "")
    same = shares_caption(docs[:1], "text")
    assert "the band (15:20%)" in same and "(Progressive ResNet-50)" in same
    assert "conv_outputs" in shares_caption([shares_doc({m: [50.0, 50.0] for m in ("flops", "memory", "params")})
                                             | {"conventions": docs[0]["conventions"] | {"memory": "conv_outputs"}}],
                                            "text")
    assert r"conv\_outputs" in shares_caption([shares_doc({m: [50.0, 50.0] for m in ("flops", "memory", "params")})
                                               | {"conventions": docs[0]["conventions"] | {"memory": "conv_outputs"}}])
    with pytest.raises(ValueError):
        shares_caption(docs, "html")


def test_loss_and_tsne_conventions_are_in_their_captions():
    runs = {"simclr": [{"step": s, "loss/res5": 5 - s / 10} for s in range(20)],
            "gim": [{"step": s, "loss/res2": 6 - s / 10, "loss/res5": 5 - s / 9} for s in range(20)]}
    inside = " ".join(t.get_text() for t in texts(loss_figure(runs)))
    assert "smooth" not in inside and "EMA" not in inside and "average" not in inside
    caption = loss_caption(runs, sources={"simclr": "runs/a_b", "gim": "gim"})
    assert "smoothing 0.6" in caption and "exponential moving average" in caption
    assert r"simclr: runs/a\_b" in caption and "simclr logs only res5" in caption and "gim:" not in caption
    assert "not smoothed" in loss_caption(runs, smoothing=0.0)

    inside = " ".join(t.get_text() for t in texts(tsne_figure(np.random.default_rng(0).normal(size=(30, 2)),
                                                              np.arange(30) % 3, title="gim")))
    assert "perplexity" not in inside and "step" not in inside
    text = tsne_caption(2000, 128, "the final representation of gim at step 165", classes=10, fmt="text")
    assert "perplexity 30" in text and "PCA from 128 to 50" in text and "at step 165" in text
    assert "2000 images" in text and "10 classes" in text
    small = tsne_caption(31, 16, max_points=20, fmt="text")
    assert tsne_settings(31, 16, max_points=20) == {"points": 20, "subset": True, "perplexity": 19 / 3, "pca": False}
    assert "subset of 20 of 31" in small and "PCA from" not in small and "perplexity 6.33," in small


# -- archspec plot --labels ---------------------------------------------------------------------
def fake_run(folder: Path, stages=("res2", "res3")) -> Path:
    folder.mkdir(parents=True)
    lines = [json.dumps({"step": s, **{f"loss/{st}": 4 - s / 10 + i for i, st in enumerate(stages)}})
             for s in range(15)]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_plot_labels_name_the_runs_in_the_legend(tmp_path, monkeypatch):
    import archspec.train.figures as figures

    a, b = fake_run(tmp_path / "runs" / "digits_gim"), fake_run(tmp_path / "runs" / "digits_simclr", ("res3",))
    legends = []
    real = figures.loss_figure

    def spy(*args, **kwargs):
        fig = real(*args, **kwargs)
        legends.append([t.get_text() for legend in fig.legends for t in legend.get_texts()])
        return fig

    monkeypatch.setattr(figures, "loss_figure", spy)
    out = tmp_path / "fig"
    result = run_cli("plot", str(a), str(b), "--no-tsne", "-o", str(out), "--labels", "GIM, SimCLR")
    assert result.exit_code == 0, result.output
    assert sorted(legends[0]) == ["GIM", "SimCLR"]
    caption = (out / "loss_curves.caption.md").read_text()
    assert f"GIM: {a}".replace("_", r"\_") in caption and "SimCLR logs only res3" in caption
    assert f"wrote {out / 'loss_curves.caption.md'}" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["loss_curves.caption.md", "loss_curves.pdf", "loss_curves.png"]

    result = run_cli("plot", str(a), str(b), "--no-tsne", "-o", str(tmp_path / "plain"))
    assert result.exit_code == 0, result.output
    assert sorted(legends[1]) == ["digits_gim", "digits_simclr"]  # the default: the run folders' names
    assert "runs/" not in (tmp_path / "plain" / "loss_curves.caption.md").read_text()


@pytest.mark.parametrize("labels", ["only-one", "a,b,c", "a,a", "a,"])
def test_plot_bad_labels_are_one_line(tmp_path, labels):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b")
    result = run_cli("plot", str(a), str(b), "--no-tsne", "-o", str(tmp_path / "fig"), "--labels", labels)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--labels" in lines[0], result.output
    assert not (tmp_path / "fig").exists()


def test_plot_loss_curves_keeps_its_signature(tmp_path):
    runs = {"x": [{"step": s, "loss/res2": 1.0 / (s + 1)} for s in range(5)]}
    paths = plot_loss_curves(runs, tmp_path / "loss", 0.0, "title", 1, width="text")
    png = paths[0].read_bytes()
    assert int.from_bytes(png[16:20], "big") == round(TEXT_IN * 150)
