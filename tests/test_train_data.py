"""archspec.train.data: every data kind, splits, determinism and the one-line errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from archspec.errors import UserError
from archspec.train.data import DataConfig, build_dataset


def _check_items(ds, channels: int, size: int, num_classes: int):
    assert len(ds) > 0
    assert ds.channels == channels and len(ds.classes) == num_classes
    for i in (0, len(ds) - 1):
        image, label = ds[i]
        assert image.dtype == torch.float32 and image.shape == (channels, size, size)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert isinstance(label, int) and 0 <= label < num_classes
        assert label == int(ds.labels[i])


def _all(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


# --------------------------------------------------------------------------- digits, synthetic


def test_digits_shapes_split_and_values():
    train = build_dataset(DataConfig("digits"), "train")
    test = build_dataset(DataConfig("digits"), "test")
    _check_items(train, 1, 32, 10)
    _check_items(test, 1, 32, 10)
    assert len(train) + len(test) == 1797
    assert abs(len(test) / 1797 - 0.2) < 0.01
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))  # stratified
    raw = build_dataset(DataConfig("digits", size=8), "train")
    values = _all(raw) * 16
    assert torch.allclose(values, values.round(), atol=1e-5)  # the original 0..16 levels, /16
    rgb = build_dataset(DataConfig("digits", channels=3, size=16), "test")
    _check_items(rgb, 3, 16, 10)
    assert torch.equal(rgb[0][0][0], rgb[0][0][2])


def test_digits_splits_are_disjoint_and_deterministic():
    from sklearn.datasets import load_digits

    pixels = (load_digits().images.reshape(1797, -1) / 16).astype(np.float32)
    rows = {tuple(r): i for i, r in enumerate(pixels.tolist())}
    assert len(rows) == 1797  # no duplicate images: an image identifies its row
    a = build_dataset(DataConfig("digits", size=8, seed=3), "train")
    b = build_dataset(DataConfig("digits", size=8, seed=3), "train")
    t = build_dataset(DataConfig("digits", size=8, seed=3), "test")
    assert torch.equal(_all(a), _all(b)) and torch.equal(a.labels, b.labels)
    used_train = {rows[tuple(x)] for x in _all(a).flatten(1).tolist()}
    used_test = {rows[tuple(x)] for x in _all(t).flatten(1).tolist()}
    assert used_train.isdisjoint(used_test) and len(used_train | used_test) == 1797
    other = build_dataset(DataConfig("digits", size=8, seed=4), "train")
    assert not torch.equal(_all(other), _all(a))


def test_synthetic_shapes_determinism_and_split():
    cfg = DataConfig("synthetic", num_samples=100, num_classes=4, size=16, seed=1)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    _check_items(train, 3, 16, 4)
    _check_items(test, 3, 16, 4)
    assert len(train) == 80 and len(test) == 20
    assert torch.bincount(test.labels).tolist() == [5, 5, 5, 5]
    again = build_dataset(cfg, "train")
    assert torch.equal(_all(train), _all(again)) and torch.equal(train.labels, again.labels)
    # disjoint: no test image equals a training image
    tr, te = _all(train).flatten(1), _all(test).flatten(1)
    assert torch.cdist(te, tr).min() > 0
    other = build_dataset(DataConfig("synthetic", num_samples=100, num_classes=4, size=16, seed=2), "train")
    assert not torch.equal(_all(other), _all(train))
    gray = build_dataset(DataConfig("synthetic", num_samples=40, channels=1), "test")
    _check_items(gray, 1, 32, 10)


def test_synthetic_classes_are_orientations():
    """The class is in the images' orientation (power spectrum), not in their raw pixels' mean."""
    from sklearn.linear_model import LogisticRegression

    cfg = DataConfig("synthetic", num_samples=400, num_classes=4, size=16, channels=1)
    tr, te = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    spectrum = lambda ds: torch.fft.fft2(_all(ds)[:, 0]).abs().flatten(1).numpy()  # noqa: E731
    model = LogisticRegression(max_iter=1000).fit(spectrum(tr), tr.labels.numpy())
    assert model.score(spectrum(te), te.labels.numpy()) > 0.8


# --------------------------------------------------------------------------- image folders


def _write_images(folder, names, size=(12, 9), colour=(200, 10, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        array = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
        array[:, : size[0] // 2] = 30 + i  # left half darker, so centre crops are not constant
        Image.fromarray(array).save(folder / name)


def test_image_folder_with_class_folders(tmp_path):
    _write_images(tmp_path / "cat", [f"{i}.png" for i in range(5)], colour=(200, 10, 10))
    _write_images(tmp_path / "dog", [f"{i}.jpg" for i in range(5)], size=(7, 15), colour=(10, 200, 10))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    cfg = DataConfig("image_folder", root=str(tmp_path), size=8, test_fraction=0.4)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.classes == test.classes == ["cat", "dog"]
    _check_items(train, 3, 8, 2)
    _check_items(test, 3, 8, 2)
    assert len(train) == 6 and len(test) == 4
    assert set(map(str, train.samples)).isdisjoint(map(str, test.samples))
    again = build_dataset(cfg, "train")
    assert [p for p, _ in again.samples] == [p for p, _ in train.samples]
    image, label = train[0]
    assert train.classes[label] == "cat" and float(image[0].max()) > 0.7  # red channel of a red image
    gray = build_dataset(DataConfig("image_folder", root=str(tmp_path), size=5, channels=1), "test")
    _check_items(gray, 1, 5, 2)


def test_image_folder_with_train_and_val(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        _write_images(tmp_path / split / "a", [f"{i}.png" for i in range(n)])
        _write_images(tmp_path / split / "b" / "nested", [f"{i}.jpeg" for i in range(n)])
    train = build_dataset(DataConfig("image_folder", root=str(tmp_path), size=6), "train")
    test = build_dataset(DataConfig("image_folder", root=str(tmp_path), size=6), "test")
    assert len(train) == 6 and len(test) == 4 and train.classes == test.classes == ["a", "b"]
    assert all("/val/" in str(p) for p, _ in test.samples)
    _check_items(test, 3, 6, 2)
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1]
    # train/ without val/: split train/ by test_fraction (not a class named "train")
    for path in (tmp_path / "val").rglob("*.*"):
        path.unlink()
    for folder in sorted((tmp_path / "val").rglob("*"), reverse=True):
        folder.rmdir()
    (tmp_path / "val").rmdir()
    only = build_dataset(DataConfig("image_folder", root=str(tmp_path), size=6, test_fraction=0.34), "test")
    assert only.classes == ["a", "b"] and len(only) == 2


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar(folder, per_batch=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)


def test_cifar10_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    for root in (tmp_path, folder):  # the folder or its parent
        train = build_dataset(DataConfig("cifar10", root=str(root)), "train")
        test = build_dataset(DataConfig("cifar10", root=str(root)), "test")
        assert len(train) == 20 and len(test) == 4
        _check_items(train, 3, 32, 10)
        assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    image, label = train[0]
    expected = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(image, expected) and label == raw[b"labels"][0]
    small = build_dataset(DataConfig("cifar10", root=str(tmp_path), size=16, channels=1), "test")
    _check_items(small, 1, 16, 10)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("make,cfg,split,pattern", [
    (None, dict(kind="mnist"), "train", r"unknown data kind 'mnist'.*hint"),
    (None, dict(kind="digits"), "val", r"unknown data split 'val'"),
    (None, dict(kind="image_folder"), "train", r"needs a root folder.*hint"),
    (None, dict(kind="image_folder", root="{tmp}/nowhere"), "train", r"nowhere does not exist.*hint"),
    ("empty", dict(kind="image_folder", root="{tmp}"), "train", r"no images found.*hint"),
    ("cifar", dict(kind="cifar10", root="{tmp}"), "train", r"data_batch_3 is missing.*hint"),
    (None, dict(kind="cifar10", root="{tmp}"), "test", r"test_batch is missing.*hint"),
    (None, dict(kind="digits", channels=2), "train", r"channels must be 1 or 3"),
    (None, dict(kind="digits", size="big"), "train", r"size must be a positive integer, got 'big'"),
    (None, dict(kind="digits", test_fraction=1.0), "train", r"test_fraction must be in \[0, 1\)"),
    (None, dict(kind="synthetic", num_classes=1), "train", r"at least 2 classes"),
])
def test_errors_are_one_line_user_errors(tmp_path, make, cfg, split, pattern):
    if make == "empty":
        (tmp_path / "cat").mkdir()
        (tmp_path / "cat" / "readme.txt").write_text("x")
    elif make == "cifar":
        _write_cifar(tmp_path / "cifar-10-batches-py")
        (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    cfg = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in cfg.items()}
    with pytest.raises(UserError, match=pattern) as info:
        build_dataset(DataConfig(**cfg), split)
    assert "\n" not in str(info.value)


def test_unreadable_image_is_a_user_error(tmp_path):
    _write_images(tmp_path / "a", ["0.png"])
    (tmp_path / "a" / "1.png").write_bytes(b"not a png")
    ds = build_dataset(DataConfig("image_folder", root=str(tmp_path), size=4, test_fraction=0.0), "train")
    with pytest.raises(UserError, match=r"cannot read image .*1\.png") as info:
        [ds[i] for i in range(len(ds))]
    assert "\n" not in str(info.value)
