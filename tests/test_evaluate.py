"""archspec.train.evaluate and archspec.train.figures: features, probes, kNN and plots."""
from __future__ import annotations

import math

import pytest
import torch

from archspec.nn.compiler import compile_spec
from archspec.spec.loader import loads
from archspec.train.data import DataConfig, build_dataset
from archspec.train.evaluate import extract_features, knn_accuracy, linear_probe
from archspec.train.figures import plot_loss_curves, plot_tsne

TINY = """
name: tiny
input: {channels: 3, size: 16x16}
stages:
  - name: conv1
    output_size: 8x8
    blocks:
      - conv [3x3, 8, stride 2]
  - name: res2
    output_size: 4x4
    blocks:
      - basic [3x3, 16, stride 2; 3x3, 16]
head: {pool: avg, fc: 5, features: 16}
"""


@pytest.fixture(scope="module")
def digits():
    """Raw 8x8 digits pixels (64 features), the seeded stratified split."""
    cfg = DataConfig("digits", size=8)
    out = []
    for split in ("train", "test"):
        ds = build_dataset(cfg, split)
        out.append(torch.stack([ds[i][0] for i in range(len(ds))]).flatten(1))
        out.append(ds.labels)
    return out


def test_linear_probe_on_digits_pixels(digits):
    acc = linear_probe(*digits, epochs=30)
    assert acc > 0.9
    assert linear_probe(*digits, epochs=30) == acc  # deterministic


def test_linear_probe_and_knn_on_random_features_are_near_chance(digits):
    train_x, train_y, test_x, test_y = digits
    g = torch.Generator().manual_seed(0)
    noise_train, noise_test = torch.randn(train_x.shape, generator=g), torch.randn(test_x.shape, generator=g)
    assert linear_probe(noise_train, train_y, noise_test, test_y, epochs=30) < 0.25
    assert knn_accuracy(noise_train, train_y, noise_test, test_y) < 0.25


def test_knn_on_digits_pixels(digits):
    acc = knn_accuracy(*digits, k=20, temperature=0.07)
    assert acc > 0.9
    assert knn_accuracy(*digits, k=1) > 0.9
    assert knn_accuracy(*digits, chunk=7) == acc  # chunking does not change the result


def test_knn_weighted_vote():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    test_x = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    # k = 5: class 1 has three voters, but class 0's two are far closer and win with a low temperature
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([0, 1]), k=5, temperature=0.05) == 1.0
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([1, 1]), k=5, temperature=100.0) == 1.0


def test_extract_features_shapes_and_mode():
    torch.manual_seed(0)
    net = compile_spec(loads(TINY))
    net.train()
    net.conv1.eval()  # a module in its own mode is given back as it was
    ds = build_dataset(DataConfig("synthetic", num_samples=30, num_classes=3, size=16), "train")
    feats, labels = extract_features(net, ds, batch_size=7)
    assert feats.shape == (len(ds), 16) and feats.dtype == torch.float32
    assert torch.equal(labels, ds.labels)
    conv1, _ = extract_features(net, ds, stage="conv1")
    assert conv1.shape == (len(ds), 8)
    head, _ = extract_features(net, ds, stage="head")
    assert head.shape == (len(ds), 5)
    res2, _ = extract_features(net, ds, stage="res2", batch_size=64)
    assert torch.allclose(res2, feats, atol=1e-5)  # representation = pooled last stage, any batch size
    assert net.training and not net.conv1.training and net.res2.training
    with torch.no_grad():
        net.eval()
        direct = net.representation(torch.stack([ds[i][0] for i in range(3)]))
    assert torch.allclose(direct, feats[:3], atol=1e-5)  # eval mode (batch norm running statistics)


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 100 and data[:8] == b"\x89PNG\r\n\x1a\n"


def _is_pdf(path) -> bool:
    data = path.read_bytes()
    return len(data) > 100 and data[:5] == b"%PDF-"


def test_plot_loss_curves(tmp_path):
    def run(stages, n=30, offset=0.0):
        return [{"step": s, "lr": 0.1,
                 **{f"loss/{st}": 5 * math.exp(-s / 10) + offset + i for i, st in enumerate(stages)}}
                for s in range(n)]

    runs = {"simclr": run(["res3"]), "gim": run(["res2", "res3"], offset=0.5), "loco": run(["res2", "res3"], n=20)}
    runs["loco"][3]["loss/res2"] = float("nan")  # skipped
    paths = plot_loss_curves(runs, tmp_path / "figs" / "loss.png")
    assert [p.name for p in paths] == ["loss.png", "loss.pdf"]
    assert _is_png(paths[0]) and _is_pdf(paths[1])
    paths = plot_loss_curves(runs, tmp_path / "raw", smoothing=0.0, title="losses")
    assert [p.name for p in paths] == ["raw.png", "raw.pdf"] and _is_png(paths[0]) and _is_pdf(paths[1])
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left
    with pytest.raises(ValueError):
        plot_loss_curves({"x": [{"step": 0, "lr": 0.1}]}, tmp_path / "none")


def test_plot_tsne(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(45) % 3
    feats = torch.randn(45, 60, generator=g) + 4 * torch.nn.functional.one_hot(labels, 60).float()
    paths = plot_tsne(feats, labels, tmp_path / "tsne", classes=["a", "b", "c"], title="t-SNE")
    assert [p.name for p in paths] == ["tsne.png", "tsne.pdf"]
    assert _is_png(paths[0]) and _is_pdf(paths[1])
