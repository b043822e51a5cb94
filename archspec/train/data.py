"""Data sets for contrastive training and linear evaluation.

``build_dataset(DataConfig(kind=...), split)`` gives a ``torch.utils.data.Dataset`` whose items
are ``(image, label)``: ``image`` a float32 tensor ``[C, S, S]`` with values in ``[0, 1]``,
``label`` an ``int``. Every data set also has ``.classes`` (class names, index = label),
``.channels`` (C), ``.size`` (S) and ``.labels`` (a LongTensor of all labels, in item order).

Kinds:

- ``image_folder``: ``root/train/<class>/*.jpg`` with ``root/val/`` (or ``root/test/``) for the
  test split, as ImageNet is usually laid out (the test split's labels follow the training
  split's class list); or ``root/<class>/*`` (or ``root/train/<class>/*`` alone) split per
  class by ``test_fraction`` (seeded, stratified). Classes: the sorted subfolders holding at
  least one image (searched recursively; extensions in IMAGE_EXTENSIONS). Images are read
  lazily, one per item, with PIL: converted to RGB (or L for ``channels: 1``), the shorter
  side resized to S, then centre-cropped to S x S. Nothing is held in memory but the file list.
- ``cifar10``: the "python version" of CIFAR-10 (``cifar-10-batches-py/``: ``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``, ``batches.meta``); ``root`` may be that folder or its
  parent. Held in memory as uint8 (150 MB for the training split).
- ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, ships with scikit-learn, no
  download), 1 channel, values/16, upsampled bilinearly to S (default 32); split per class by
  ``test_fraction`` (seeded, stratified).
- ``synthetic``: ``num_samples`` images of ``num_classes`` classes: sine gratings whose
  orientation is the class, with a random frequency, phase, contrast, tint and noise per image
  (see ``synthetic_images``); deterministic by ``seed``; split like ``digits``. The class survives
  SimCLR's augmentations, raw pixels hardly reveal it (random phase), a small CNN learns it.
- ``fashion_mnist``: Fashion-MNIST's IDX files in ``root`` (default /usr/share/datasets/fashion-mnist,
  Debian's ``dataset-fashion-mnist``): 60,000 train (or a seeded, class-balanced subset of
  ``train_images``) and 10,000 test images, 28x28, 1 channel (archspec/train/fashion_mnist.py).

``channels`` converts if given: 1 -> 3 repeats the channel, 3 -> 1 takes the luminance
(0.299 R + 0.587 G + 0.114 B).
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from archspec.errors import UserError

KINDS = ("image_folder", "cifar10", "digits", "synthetic", "fashion_mnist")
SPLITS = ("train", "test")
DEFAULT_SIZE = {"image_folder": 224, "cifar10": 32, "digits": 32, "synthetic": 32, "fashion_mnist": 28}
DEFAULT_CHANNELS = {"image_folder": 3, "cifar10": 3, "digits": 1, "synthetic": 3, "fashion_mnist": 1}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class DataConfig:
    kind: str  # "image_folder" | "cifar10" | "digits" | "synthetic" | "fashion_mnist"
    root: str | None = None  # image_folder, cifar10, fashion_mnist (default: Debian's folder)
    size: int | None = None  # square side S; None: DEFAULT_SIZE[kind]
    channels: int | None = None  # 1 or 3; None: the data's own (DEFAULT_CHANNELS[kind])
    num_classes: int = 10  # synthetic
    num_samples: int = 512  # synthetic (both splits together)
    test_fraction: float = 0.2  # digits, synthetic, image_folder without train/ and val/
    seed: int = 0  # the split and the synthetic images
    train_images: int | None = None  # fashion_mnist: a class-balanced subset of the training split


def _error(message: str, hint: str | None = None) -> UserError:
    line = f"{message} (hint: {hint})" if hint else message
    return UserError(" ".join(str(line).split()))


# --------------------------------------------------------------------------- in-memory data sets


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, C, H, W] with C in (1, 3) -> [N, channels, H, W]."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        gray = (images.float() * weights).sum(1, keepdim=True)
        return gray.round().to(torch.uint8) if images.dtype == torch.uint8 else gray
    raise _error(f"cannot convert {have}-channel images to {channels} channels", "use channels: 1 or 3")


class TensorImageDataset(Dataset):
    """Images held in memory (uint8 in [0, 255] or float in [0, 1]), resized per item if the
    stored side differs from ``size`` (bilinear, antialiased when shrinking)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], size: int):
        assert images.ndim == 4 and images.shape[0] == labels.shape[0]
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)
        self.channels = int(images.shape[1])
        self.size = int(size)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int):
        image = self.images[index]
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = _resize(image.unsqueeze(0), self.size).squeeze(0)
        return image, int(self.labels[index])


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float images [N, C, H, W] to [N, C, size, size], clamped to [0, 1]."""
    shrink = min(images.shape[-2:]) > size
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp_(0.0, 1.0)


def _stratified_split(labels: torch.Tensor, test_fraction: float, seed: int, split: str) -> torch.Tensor:
    """Indices of ``split``: per class, a seeded permutation, the first round(n * fraction) test."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = int(round(len(members) * test_fraction))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return torch.sort(torch.cat(chosen)).values if chosen else torch.zeros(0, dtype=torch.long)


def _digits(cfg: DataConfig, split: str, size: int, channels: int) -> TensorImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    index = _stratified_split(labels, cfg.test_fraction, cfg.seed, split)
    images = _resize(images[index], size) if size != 8 else images[index]
    images = _convert_channels(images, channels)
    return TensorImageDataset(images, labels[index], [str(i) for i in range(10)], size)


def synthetic_images(num_samples: int, num_classes: int, size: int, channels: int, seed: int):
    """Class-conditional gratings: (images float [N, channels, size, size] in [0, 1], labels [N]).

    The class is the orientation only: class c of K is a sine grating at angle
    (90 degrees) * (c + 0.5) / K, +- a quarter of the spacing. Everything else is drawn per image
    and carries no class information: spatial frequency (2 to 5 cycles per side), phase, contrast
    (0.2 to 0.5), a colour tint (each channel 0.3 to 0.7) and Gaussian noise (sd 0.1). Angles stay
    within [0, 90) degrees so that a horizontal flip (which maps a to 180 - a) never turns one
    class into another: crops, flips and colour distortion keep the class, so it is what SimCLR's
    augmentations leave to learn. Labels are balanced (i mod K), then shuffled.
    """
    g = torch.Generator().manual_seed(seed)
    k = num_classes
    labels = torch.arange(num_samples) % k
    labels = labels[torch.randperm(num_samples, generator=g)]
    spacing = (math.pi / 2) / k
    theta = spacing * (labels.float() + 0.5) + (torch.rand(num_samples, generator=g) - 0.5) * (spacing / 2)
    freq = 2.0 + 3.0 * torch.rand(num_samples, generator=g)
    phase = torch.rand(num_samples, generator=g) * 2 * math.pi
    contrast = 0.2 + 0.3 * torch.rand(num_samples, generator=g)
    tint = 0.3 + 0.4 * torch.rand(num_samples, channels, generator=g)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # [-0.5, 0.5)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    along = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    wave = torch.sin(2 * math.pi * freq[:, None, None] * along + phase[:, None, None])  # [N, S, S]
    images = tint[:, :, None, None] + (contrast[:, None, None] * wave)[:, None]
    images = images + 0.1 * torch.randn(images.shape, generator=g)
    return images.clamp_(0.0, 1.0), labels


def _synthetic(cfg: DataConfig, split: str, size: int, channels: int) -> TensorImageDataset:
    if cfg.num_classes < 2:
        raise _error(f"synthetic data needs at least 2 classes, got {cfg.num_classes}", "set num_classes: 2 or more")
    if cfg.num_samples < cfg.num_classes:
        raise _error(f"synthetic data: num_samples {cfg.num_samples} is fewer than num_classes {cfg.num_classes}",
                     "raise num_samples")
    images, labels = synthetic_images(cfg.num_samples, cfg.num_classes, size, channels, cfg.seed)
    index = _stratified_split(labels, cfg.test_fraction, cfg.seed, split)
    return TensorImageDataset(images[index], labels[index], [f"class{i}" for i in range(cfg.num_classes)], size)


# --------------------------------------------------------------------------- CIFAR-10


def _cifar_folder(root: Path) -> Path:
    if (root / "cifar-10-batches-py").is_dir():
        return root / "cifar-10-batches-py"
    return root


# The only globals a CIFAR-10 python batch refers to (its numpy arrays): anything else in the file
# is refused before it is called, so a crafted pickle cannot run code (pickle.load would).
_CIFAR_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                  ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar")}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds "
                                         f"(only numpy arrays, lists and bytes are read)")
        if module == "numpy":
            return getattr(np, name)
        core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
        return getattr(core.multiarray, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise _error(f"cannot read CIFAR-10 file {path}: {exc}",
                     "re-extract cifar-10-python.tar.gz (the python version)") from None
    if not isinstance(data, dict):
        raise _error(f"CIFAR-10 file {path} does not hold a dict", "use the python version of CIFAR-10")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar10(cfg: DataConfig, split: str, size: int, channels: int) -> TensorImageDataset:
    folder = _cifar_folder(_existing_root(cfg))
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise _error(f"CIFAR-10 batch file {name} is missing in {folder}",
                         "point root at the extracted cifar-10-batches-py folder (or its parent)")
        batch = _unpickle(path)
        if "data" not in batch or "labels" not in batch:
            raise _error(f"CIFAR-10 file {path} has no 'data' or 'labels'", "use the python version of CIFAR-10")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise _error(f"CIFAR-10 file {path}: data has shape {data.shape}, expected [N, 3072]",
                         "use the python version of CIFAR-10")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(list(batch["labels"]), dtype=torch.long))
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        names_ = _unpickle(meta).get("label_names")
        if names_:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_]
    images_t = _convert_channels(torch.cat(images), channels)
    return TensorImageDataset(images_t, torch.cat(labels), classes, size)


# --------------------------------------------------------------------------- image folders


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image paths (searched recursively)} for the subfolders of ``folder``."""
    found = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames.sort()
            files.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
        if files:
            found[entry.name] = files
    return found


class ImageFolderDataset(Dataset):
    """Images read from files one item at a time: shorter side to ``size``, centre crop."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], size: int, channels: int):
        self.samples = samples
        self.classes = list(classes)
        self.size = int(size)
        self.channels = int(channels)
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return load_image(path, self.size, self.channels), label


def load_image(path, size: int, channels: int = 3) -> torch.Tensor:
    """One image file -> float32 [channels, size, size] in [0, 1]: the shorter side resized to
    ``size`` (PIL's bilinear, antialiased), then centre-cropped to ``size`` x ``size``."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as img:
            img.draft(mode, (size, size))  # JPEG: let the decoder shrink by 2/4/8 first (fast)
            img = img.convert(mode)
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _error(f"cannot read image {path}: {exc}", "remove or replace the file") from None
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor.float().div_(255.0)


def _image_folder(cfg: DataConfig, split: str, size: int, channels: int) -> ImageFolderDataset:
    root = _existing_root(cfg)
    layout_hint = "lay images out as root/<class>/*.jpg or root/train/<class>/*.jpg with root/val/<class>/*.jpg"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train = _class_files(root / "train")
        if not train:
            raise _error(f"no images found in class folders under {root / 'train'}", layout_hint)
        classes = list(train)
        if split == "train":
            files = train
        else:
            files = _class_files(test_dir)
            if not files:
                raise _error(f"no images found in class folders under {test_dir}", layout_hint)
            extra = sorted(set(files) - set(classes))
            if extra:
                raise _error(f"{test_dir} has class folder(s) {extra[:3]} that {root / 'train'} lacks",
                             "the test split's classes must be the training split's")
        samples = [(p, i) for i, c in enumerate(classes) for p in files.get(c, [])]
    else:
        if (root / "train").is_dir():
            root = root / "train"  # root/train/<class> alone: split it by test_fraction
        found = _class_files(root)
        if not found:
            raise _error(f"no images found in class folders under {root}", layout_hint)
        classes = list(found)
        samples_all = [(p, i) for i, c in enumerate(classes) for p in found[c]]
        labels = torch.tensor([label for _, label in samples_all], dtype=torch.long)
        index = _stratified_split(labels, cfg.test_fraction, cfg.seed, split)
        samples = [samples_all[i] for i in index.tolist()]
    return ImageFolderDataset(samples, classes, size, channels)


# --------------------------------------------------------------------------- entry point


def _existing_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise _error(f"data kind '{cfg.kind}' needs a root folder", "set data.root to the data set's folder")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise _error(f"data root {root} does not exist", "check data.root")
    if not root.is_dir():
        raise _error(f"data root {root} is not a folder", "point data.root at the data set's folder")
    return root


def _positive_int(value, what: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _error(f"data {what} must be a positive integer, got {value!r}", f"e.g. {what}: {example}")
    return int(value)


def resolved_size(cfg: DataConfig) -> int:
    """The square side images are brought to (DEFAULT_SIZE[kind] unless set)."""
    return _positive_int(cfg.size, "size", "32") if cfg.size is not None else DEFAULT_SIZE[cfg.kind]


def resolved_channels(cfg: DataConfig) -> int:
    """The images' channels (the data's own, DEFAULT_CHANNELS[kind], unless set)."""
    return _positive_int(cfg.channels, "channels", "3") if cfg.channels is not None else DEFAULT_CHANNELS[cfg.kind]


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``split`` ("train" or "test") of the data set ``cfg`` describes (see the module doc)."""
    if cfg.kind not in KINDS:
        raise _error(f"unknown data kind '{cfg.kind}'", f"use one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise _error(f"unknown data split '{split}'", "use train or test")
    size, channels = resolved_size(cfg), resolved_channels(cfg)
    if channels not in (1, 3):
        raise _error(f"data channels must be 1 or 3, got {cfg.channels}", "use channels: 1 or 3")
    if isinstance(cfg.test_fraction, bool) or not isinstance(cfg.test_fraction, (int, float)) \
            or not 0.0 <= cfg.test_fraction < 1.0:
        raise _error(f"test_fraction must be in [0, 1), got {cfg.test_fraction}", "e.g. test_fraction: 0.2")
    from archspec.train.fashion_mnist import fashion_mnist

    build = {"image_folder": _image_folder, "cifar10": _cifar10, "digits": _digits, "synthetic": _synthetic,
             "fashion_mnist": fashion_mnist}
    return build[cfg.kind](cfg, split, size, channels)
