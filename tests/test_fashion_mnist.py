"""The fashion_mnist data kind: IDX parsing (plain, gzip'd, truncated, wrong magic), the one-line
errors, the real Debian files (dataset-fashion-mnist) when installed, a short training run on them,
the shipped configs, eval's raw-pixel row and the warning when tensorboard is missing."""
from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from archspec.errors import UserError
from archspec.train.config import ConfigError, load_config, loads_config
from archspec.train.data import DataConfig, build_dataset
from archspec.train.fashion_mnist import DEFAULT_ROOT, FILES, IMAGES_MAGIC, PACKAGE, read_idx

from .conftest import ROOT, run_cli

METHODS = ("simclr", "gim", "loco")

pytestmark = pytest.mark.usefixtures("one_thread")


def debian_root() -> Path:
    """Debian's Fashion-MNIST folder; skips the test outside CI when the package is missing, fails in CI."""
    root = Path(DEFAULT_ROOT)
    if not all((root / f"{name}.gz").is_file() for pair in FILES.values() for name in pair):
        if os.environ.get("CI") == "true":
            pytest.fail(f"Fashion-MNIST is missing in CI: .ci/run should have installed {PACKAGE} ({root})")
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install {PACKAGE})")
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uint8 or int32): magic 0 0 TYPE NDIM, big-endian sizes, the values."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fake(folder: Path, n_train: int = 40, n_test: int = 20, zipped: bool = True) -> Path:
    """A Fashion-MNIST folder of random 28x28 images, labels i mod 10."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, array in zip(FILES[split], (images, labels)):
            data = idx_bytes(array)
            (folder / (f"{name}.gz" if zipped else name)).write_bytes(gzip.compress(data) if zipped else data)
    return folder


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# -- IDX ---------------------------------------------------------------------------------------
def test_read_idx_plain_gzipped_and_other_types(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name, IMAGES_MAGIC)
        assert got.dtype == np.uint8 and np.array_equal(got, images)
    wide = np.array([-1, 70000, 3], dtype=np.int32)  # big-endian on disk, native after reading
    (tmp_path / "w").write_bytes(idx_bytes(wide))
    assert np.array_equal(read_idx(tmp_path / "w"), wide) and read_idx(tmp_path / "w").dtype.isnative


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:-7], "is truncated"),
    (lambda b: b[:10], "is truncated"),
    (lambda b: b + b"\0", "is corrupt"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "expected 0x00000803"),  # a labels magic on an images file
    (lambda b: b"PK\x03\x04" + b[4:], "is not an IDX file"),
    (lambda b: gzip.compress(b)[:-20], "cannot read IDX file"),  # a cut gzip stream
    (lambda b: b"\x1f\x8b" + b[2:], "cannot read IDX file"),  # gzip's magic, no gzip stream
    (lambda b: b"", "is not an IDX file"),
])
def test_damaged_idx_is_one_line_naming_the_file(tmp_path, damage, words):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))))
    with pytest.raises(UserError) as excinfo:
        read_idx(path, IMAGES_MAGIC)
    message = one_line_error(excinfo)
    assert str(path) in message and words in message, message


def test_missing_files_name_the_package_and_data_root(tmp_path):
    partial = write_fake(tmp_path / "partial")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    for root in (tmp_path / "nowhere", partial):
        with pytest.raises(UserError) as excinfo:
            build_dataset(DataConfig("fashion_mnist", root=str(root)), "test")
        message = one_line_error(excinfo)
        assert PACKAGE in message and "data.root" in message and str(root) in message, message
    with pytest.raises(UserError) as excinfo:
        build_dataset(DataConfig("fashion_mnist", root=str(write_fake(tmp_path / "f")), train_images=41), "train")
    assert "train_images is 41 but the training split has 40 images" in one_line_error(excinfo)


def test_the_kind_on_a_small_folder(tmp_path):
    root = str(write_fake(tmp_path / "fm", zipped=False))
    train = build_dataset(DataConfig("fashion_mnist", root=root), "train")
    test = build_dataset(DataConfig("fashion_mnist", root=root), "test")
    assert (len(train), len(test), train.channels, train.size, len(train.classes)) == (40, 20, 1, 28, 10)
    image, label = test[3]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28) and label == 3
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    subset = build_dataset(DataConfig("fashion_mnist", root=root, train_images=20), "train")
    assert torch.bincount(subset.labels).tolist() == [2] * 10  # class-balanced
    again = build_dataset(DataConfig("fashion_mnist", root=root, train_images=20), "train")
    assert torch.equal(subset.images, again.images)  # seeded
    rgb = build_dataset(DataConfig("fashion_mnist", root=root, channels=3, size=32), "test")
    assert rgb[0][0].shape == (3, 32, 32) and torch.equal(rgb[0][0][0], rgb[0][0][2])


# -- the real files ------------------------------------------------------------------------------
def test_debian_fashion_mnist():
    debian_root()
    train = build_dataset(DataConfig("fashion_mnist"), "train")  # root: Debian's folder
    test = build_dataset(DataConfig("fashion_mnist"), "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape[1:]) == (1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    image, label = train[0]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28) and 0 <= label <= 9
    assert train.classes[9] == "Ankle boot" and float(image.max()) <= 1.0 < float(train.images[0].max())
    subset = build_dataset(DataConfig("fashion_mnist", train_images=1000, seed=1), "train")
    assert torch.bincount(subset.labels).tolist() == [100] * 10


def _config(tmp_path, method="loco", **data) -> Path:
    """The shipped config of ``method``, cut to a few seconds."""
    cfg = yaml.safe_load((ROOT / "configs" / f"fashion_mnist_{method}.yaml").read_text())
    cfg.update(batch=16, epochs=1, threads=1, output=None, tensorboard=False)
    cfg["data"].update({"train_images": 160, **data})
    path = tmp_path / f"fm_{method}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_short_training_run_on_the_real_files(tmp_path):
    debian_root()
    result = run_cli("train", str(_config(tmp_path)), "--out", str(tmp_path / "run"), "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert "max_steps: step 2/10 of loco on tiny_fashion" in result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss/res5"]) for r in records)


def test_eval_baseline_has_a_raw_pixel_row(tmp_path):
    root = write_fake(tmp_path / "fm")
    run = tmp_path / "run"
    assert run_cli("train", str(_config(tmp_path, root=str(root), train_images=None)), "--out", str(run),
                   "--max-steps", "1").exit_code == 0
    result = run_cli("eval", str(run), "--baseline", "--probe-epochs", "5")
    assert result.exit_code == 0, result.output
    rows = json.loads((run / "eval.json").read_text())["results"]
    assert [(r["encoder"], r["stage"], r["features"]) for r in rows] == [
        ("trained", "representation", 128), ("untrained", "representation", 128), ("pixels", "input", 784)]
    assert all(0 <= r["linear_probe"] <= 1 and 0 <= r["knn"] <= 1 for r in rows)
    assert "pixels     input                 784" in result.output


# -- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_shipped_configs_validate(method):
    result = run_cli("validate", str(ROOT / "configs" / f"fashion_mnist_{method}.yaml"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ") and "tiny_fashion at 28x28" in result.output
    assert f"data: fashion_mnist at {DEFAULT_ROOT}" in result.output


def test_shipped_configs_differ_only_in_the_method():
    configs = {m: load_config(ROOT / "configs" / f"fashion_mnist_{m}.yaml") for m in METHODS}
    assert configs["loco"].data.train_images == 20000 and configs["loco"].data.kind == "fashion_mnist"
    for method, cfg in configs.items():
        assert cfg.method == method and cfg.output.endswith(f"runs/fashion_mnist_{method}")
        assert cfg.to_data() | {"method": "loco", "output": None} == configs["loco"].to_data() | {"output": None}


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        loads_config("spec: tiny_digits\nmethod: gim\ndata: {kind: digits, train_images: 100}\n", "c.yaml")
    assert "c.yaml:3" in str(excinfo.value) and "'train_images' is for kind fashion_mnist" in str(excinfo.value)
    path = tmp_path / "c.yaml"
    path.write_text(f"spec: tiny_fashion\nmethod: gim\ndata: {{kind: fashion_mnist, root: {tmp_path / 'no'}}}\n")
    result = run_cli("validate", str(path), "--check-data")
    assert result.exit_code == 2 and PACKAGE in result.output and "does not exist" in result.output


# -- tensorboard ---------------------------------------------------------------------------------
def test_missing_tensorboard_is_one_warning_line(tmp_path, monkeypatch, capsys):
    from archspec.train.loop import train

    root = write_fake(tmp_path / "fm")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails as if not installed
    cfg = load_config(_config(tmp_path, root=str(root), train_images=None))
    import dataclasses

    result = train(dataclasses.replace(cfg, tensorboard=True), tmp_path / "run", max_steps=1, progress=False)
    assert result.status == "max_steps"
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: tensorboard: true, but torch.utils.tensorboard does not "
                                               "import"), err
    assert "pip install tensorboard" in err[0] and not (tmp_path / "run" / "tb").exists()


def test_tensorboard_writes_event_files(tmp_path):
    """tensorboard is in install_requires: the README's install has it, so event files are written."""
    import importlib

    importlib.import_module("tensorboard")  # an ImportError here is a broken install, not a skip

    from archspec.train.runlog import open_tensorboard

    writer = open_tensorboard(tmp_path)
    writer.add_scalar("loss/res5", 1.0, 1)
    writer.close()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


# -- the committed results -------------------------------------------------------------------------
def test_committed_results_regenerate_and_match_the_docs(tmp_path):
    """reports/fashion_mnist/results.{md,json} are what table.py makes of the committed eval.json files,
    and docs/training.md's table shows the same numbers."""
    import re
    import subprocess

    folder = ROOT / "reports" / "fashion_mnist"
    evals = [str(folder / "eval" / f"{m}.json") for m in METHODS]
    proc = subprocess.run([sys.executable, str(folder / "table.py"), *evals, "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("results.md", "results.json"):
        assert (tmp_path / name).read_text() == (folder / name).read_text(), name
    results = json.loads((folder / "results.json").read_text())
    docs = (ROOT / "docs" / "training.md").read_text().split("## Fashion-MNIST", 1)[1].split("\n## ", 1)[0]
    for stage, by_measure in results["stages"].items():
        cells = [f"{100 * by_measure[k][w]:.2f}" for k in ("linear_probe", "knn")
                 for w in ("untrained", "SimCLR", "GIM", "LoCo")]
        row = re.search(rf"^\| {re.escape(stage)}[ |(].*$", docs, re.M)
        assert row and re.findall(r"\d+\.\d\d", row.group(0)) == cells, (stage, row and row.group(0))
    pixels = [f"{100 * results['raw_pixels'][k]:.2f}" for k in ("linear_probe", "knn")]
    assert re.search(rf"^\| raw pixels \| 784 \| {pixels[0]} \|.*\| {pixels[1]} \|", docs, re.M)
    for name in ("loss_curves", *(f"tsne_fashion_mnist_{m}" for m in METHODS)):
        for ext in (".png", ".pdf", ".caption.md"):
            assert (folder / "figures" / f"{name}{ext}").is_file(), name + ext
