"""What a training config is: the frozen dataclasses of its sections (data, optimizer, schedule,
decoders, augment) and :class:`TrainConfig` around them, the allowed values of its choices, and
:class:`ConfigError`. No parsing here (archspec.train.config reads YAML into these) and no checks
against a spec (archspec.train.config_check); docs/training.md describes every key.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from archspec.errors import SpecError

METHODS = ("simclr", "gim", "loco")
OPTIMIZERS = ("lars", "sgd", "adam")
DATA_KINDS = ("image_folder", "cifar10", "digits", "synthetic", "fashion_mnist")
DTYPES = ("float32", "float64", "bfloat16", "float16")  # the 16-bit ones: mixed precision (train/precision.py)
PIPELINES = ("sync", "pipelined")


def pipeline_refusal(method: str, pipeline: str) -> str | None:
    """Why ``method`` cannot run under ``pipeline`` (None when it can): the one place that says so."""
    if pipeline == "pipelined" and method == "simclr":
        return "simclr cannot be pipelined: its one loss needs every stage's gradient within the step"
    return None


class ConfigError(SpecError):
    """A training config that cannot be used: one line, ``file:line: section: problem (hint)``."""


# -- the config ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSection:
    """``data:``, the fields of archspec.train.data.DataConfig plus ``workers``."""

    kind: str = "digits"
    root: str | None = None
    size: int | None = None  # None: the spec's input size
    channels: int | None = None
    num_classes: int = 10
    num_samples: int = 512
    test_fraction: float = 0.2
    seed: int = 0
    train_images: int | None = None  # fashion_mnist: a class-balanced subset of the training split
    workers: int = 0  # DataLoader worker processes

    def data_config(self, size: int):
        """The archspec.train.data.DataConfig for this section, at ``size``."""
        from archspec.train.data import DataConfig

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "workers"}
        return DataConfig(**{**fields, "size": size})


@dataclass(frozen=True)
class OptimizerSection:
    name: str = "lars"
    lr: float = 0.3  # before lr_scaling
    lr_scaling: str = "linear"  # linear: lr x batch / 256 (SimCLR); sqrt: lr x sqrt(batch); none
    momentum: float = 0.9
    weight_decay: float = 1e-6
    trust_coefficient: float = 0.001  # LARS eta
    exclude_bn_bias: bool = True  # batch-norm parameters and biases: no weight decay, no LARS adaptation
    betas: tuple[float, float] = (0.9, 0.999)  # adam

    def effective_lr(self, batch: int) -> float:
        if self.lr_scaling == "linear":
            return self.lr * batch / 256
        if self.lr_scaling == "sqrt":
            return self.lr * math.sqrt(batch)
        return self.lr


@dataclass(frozen=True)
class ScheduleSection:
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None  # overrides warmup_epochs
    decay: str = "cosine"  # cosine | none
    final_lr_ratio: float = 0.0  # the cosine ends at lr x this

    def warmup(self, steps_per_epoch: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_epochs * steps_per_epoch)


@dataclass(frozen=True)
class DecoderSection:
    block: bool = True  # the residual block with stride-2 downsampling before pooling
    width_ratio: float = 0.25
    hidden: int | None = None  # None: the stage's channels
    out_dim: int = 128

    def decoder_config(self):
        from archspec.nn.decoders import DecoderConfig

        return DecoderConfig(block=self.block, width_ratio=self.width_ratio, hidden=self.hidden, out=self.out_dim)


@dataclass(frozen=True)
class AugmentSection:
    """Keyword arguments of archspec.train.augment.SimCLRAugment (the size is the data size)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class TrainConfig:
    spec: str  # a name from specs/ or an absolute path
    method: str
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    decoders: DecoderSection = field(default_factory=DecoderSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    batch: int = 256  # images per step (each seen in two views: 2 x batch go through the net)
    epochs: int = 100
    temperature: float = 0.1
    seed: int = 0
    output: str | None = None  # run directory (absolute); None: runs/<config file name>
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "float32"
    threads: int | None = None  # torch.set_num_threads; None: torch's default
    deterministic: bool = True  # torch.use_deterministic_algorithms (bitwise resume)
    log_every: int = 1  # steps between log.jsonl records
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    pipeline: str = "sync"  # sync | pipelined (gim, loco): the schedule of one process per local stage
    keep_checkpoints: int = 2  # newest step checkpoints kept
    tensorboard: bool = True  # write event files when torch.utils.tensorboard imports
    source: str = field(default="<config>", compare=False)
    lines: dict = field(default_factory=dict, compare=False, repr=False)

    def where(self, *path) -> str:
        """``file:line`` of the deepest of ``path`` that the file has."""
        for cut in range(len(path), -1, -1):
            if tuple(path[:cut]) in self.lines:
                return f"{self.source}:{self.lines[tuple(path[:cut])]}"
        return self.source

    def where_any(self, *paths) -> str:
        """``file:line`` of the first of ``paths`` written in the file (else the file's top)."""
        found = next((p for p in paths if p in self.lines), ())
        return self.where(*found)

    def input_size(self, spec) -> int:
        return self.data.size or spec.input_size[0]

    def to_data(self) -> dict:
        """Plain data for config.yaml in a run (paths absolute, every key written)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("source", "lines"):
                continue
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}
            out[f.name] = value
        return out
