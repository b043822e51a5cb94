"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) read from its IDX files, with numpy only.

Debian ships the data set as the package ``dataset-fashion-mnist`` (Expat licence): four
gzip'd IDX files in /usr/share/datasets/fashion-mnist/, 60,000 training and 10,000 test images
of 28x28 grayscale pixels, 10 classes of clothing. Nothing is ever downloaded: a folder without
the files is a one-line error naming the package and ``data.root``.

The IDX format (LeCun's MNIST page): a 4-byte magic number ``0 0 TYPE NDIM`` (TYPE 0x08 for
unsigned bytes), NDIM big-endian uint32 sizes, then the values, big-endian, row-major. Images
are ``0x00000803`` (N x rows x columns), labels ``0x00000801`` (N). A file may be gzip'd or not.

The training split is the 60,000-image file, or with ``train_images: N`` a seeded, class-balanced
subset of N of them (quick configs); the test split is always the 10,000-image file.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from archspec.errors import UserError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
# IDX type byte -> numpy dtype (big-endian, as stored)
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MISSING_HINT = (f"apt-get install {PACKAGE} puts the files in {DEFAULT_ROOT}; or set data.root to a folder "
                 f"holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
                 f"and t10k-labels-idx1-ubyte.gz")


def _error(message: str, hint: str | None = None) -> UserError:
    line = f"{message} (hint: {hint})" if hint else message
    return UserError(" ".join(str(line).split()))


def read_idx(path, magic: int | None = None) -> np.ndarray:
    """The array an IDX file holds (native byte order), gzip'd or not. ``magic``: the magic
    number the file must start with. A file that is not IDX, is truncated or has bytes after the
    data is a one-line UserError naming it."""
    path = Path(path)
    bad = f"re-install {PACKAGE} or replace the file"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip's magic, whatever the file's name
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut gzip stream EOFError
        raise _error(f"cannot read IDX file {path}: {exc}", bad) from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES or raw[3] == 0:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise _error(f"{path} is not an IDX file: it starts with {found}, not a magic number 0x0000TTDD "
                     f"(TT a type, DD dimensions)", bad)
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise _error(f"{path} has the IDX magic number 0x{found:08x}, expected 0x{magic:08x}", bad)
    ndim, dtype = raw[3], np.dtype(IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _error(f"IDX file {path} is truncated: {len(raw)} bytes, its header alone needs {header}", bad)
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have != need:
        what = "truncated" if have < need else "corrupt"
        raise _error(f"IDX file {path} is {what}: a {' x '.join(map(str, shape))} array needs {need} bytes of "
                     f"data, the file holds {have}", bad)
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise _error(f"Fashion-MNIST file {name}.gz (or {name}) is missing in {root}", _MISSING_HINT)


def load_split(root, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, rows, columns], labels int64 [N]) of the ``train`` or ``test`` file pair."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _error(f"Fashion-MNIST folder {root} does not exist", _MISSING_HINT)
    image_path, label_path = (_find(root, name) for name in FILES[split])
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise _error(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels",
                     f"re-install {PACKAGE}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise _error(f"{label_path} has labels outside 0..{len(CLASSES) - 1}", f"re-install {PACKAGE}")
    return images, labels.astype(np.int64)


def fashion_mnist(cfg, split: str, size: int, channels: int):
    """The data kind ``fashion_mnist`` (see archspec.train.data): uint8 images held in memory
    (47 MB for the training split), resized per item when ``size`` is not 28."""
    from archspec.train.data import TensorImageDataset, _convert_channels, _stratified_split

    images, labels = load_split(cfg.root or DEFAULT_ROOT, split)
    images_t = torch.from_numpy(images).unsqueeze(1)  # [N, 1, rows, columns]
    labels_t = torch.from_numpy(labels)
    limit = getattr(cfg, "train_images", None)
    if split == "train" and limit is not None and limit > len(labels_t):
        raise _error(f"data train_images is {limit} but the training split has {len(labels_t)} images",
                     f"use train_images: {len(labels_t)} or less (or leave it out: all of them)")
    if split == "train" and limit is not None and limit < len(labels_t):
        # per class a seeded permutation, its first round(n_c x limit / N): balanced as the file is
        index = _stratified_split(labels_t, limit / len(labels_t), cfg.seed, "test")
        images_t, labels_t = images_t[index], labels_t[index]
    return TensorImageDataset(_convert_channels(images_t, channels), labels_t, CLASSES, size)
