"""Training configs: YAML -> TrainConfig (frozen dataclasses), errors at ``file:line``, and
:func:`validate_config`, which checks everything a run needs before it starts.

Relative paths in a config file (``spec`` when it is a path, ``data.root``, ``output``) are
resolved against the directory of the config file. docs/training.md describes every key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from archspec.errors import SpecError
from archspec.vocabulary import format_bytes, parse_bytes

METHODS = ("simclr", "gim", "loco")
OPTIMIZERS = ("lars", "sgd", "adam")
DATA_KINDS = ("image_folder", "cifar10", "digits", "synthetic", "fashion_mnist")
DTYPES = ("float32", "float64", "bfloat16", "float16")  # the 16-bit ones: mixed precision (train/precision.py)
PIPELINES = ("sync", "pipelined")


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


# -- parsing -------------------------------------------------------------------------------
class _Reader:
    def __init__(self, lines: dict, source: str, base: Path):
        self.lines, self.source, self.base = lines, source, base

    def where(self, path) -> str:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return f"{self.source}:{self.lines[path[:cut]]}"
        return self.source

    def fail(self, path, message, hint=None):
        what = path[0] if len(path) > 1 else None
        raise ConfigError(message, where=self.where(path), what=what, hint=hint)

    def mapping(self, data, path, allowed, required=()) -> dict:
        what = "the config" if not path else f"'{path[-1]}'"
        if data is None and path:
            data = {}
        if not isinstance(data, dict):
            self.fail(path, f"{what} must be a mapping of keys, got {_kind(data)}",
                      hint=f"keys: {', '.join(allowed)}")
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                self.fail(path + (key,), f"unknown key '{key}'",
                          hint=f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}")
        for key in required:
            if key not in data:
                self.fail(path, f"{what} is missing '{key}'", hint=f"add '{key}:'")
        return data

    # values
    def number(self, value, path, *, integer=False, low=None, high=None, low_open=False, optional=False):
        if value is None and optional:
            return None
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
            self.fail(path, f"'{path[-1]}' must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
        if low is not None and (value <= low if low_open else value < low):
            self.fail(path, f"'{path[-1]}' must be {'>' if low_open else '>='} {low}, got {value}")
        if high is not None and value > high:
            self.fail(path, f"'{path[-1]}' must be <= {high}, got {value}")
        return value if integer else float(value)

    def choice(self, value, path, choices):
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            self.fail(path, f"'{path[-1]}' must be one of {', '.join(choices)}, got {_kind(value)}",
                      hint=f"did you mean '{close[0]}'?" if close else None)
        return value

    def flag(self, value, path):
        if not isinstance(value, bool):
            self.fail(path, f"'{path[-1]}' must be true or false, got {_kind(value)}")
        return value

    def numbers(self, value, path, n, low=None, high=None):
        if not isinstance(value, list) or len(value) != n:
            self.fail(path, f"'{path[-1]}' must be a list of {n} numbers, got {_kind(value)}",
                      hint=f"e.g. [{', '.join(['0.5'] * n)}]")
        return tuple(self.number(v, path + (i,), low=low, high=high) for i, v in enumerate(value))

    def path(self, value, path) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"'{path[-1]}' must be a path, got {_kind(value)}")
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (self.base / p).resolve())

    def section(self, cls, data, path, parse) -> object:
        """``parse``: {key: fn(value, path)} for every field of ``cls``."""
        data = self.mapping(data, path, list(parse))
        return cls(**{key: parse[key](value, path + (key,)) for key, value in data.items()})


def _kind(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


TOP_KEYS = ("spec", "method", "data", "optimizer", "schedule", "decoders", "augment", "batch", "epochs",
            "temperature", "seed", "output", "device", "dtype", "threads", "deterministic", "log_every",
            "checkpoint_every", "keep_checkpoints", "tensorboard", "pipeline")


def loads_config(text: str, source: str = "<config>", base: Path | str | None = None) -> TrainConfig:
    """Parse config YAML; relative paths resolve against ``base`` (default: the current
    directory). Every error names ``source:line``."""
    from archspec.spec.loader import compose

    if not text.strip():
        raise ConfigError("the file is empty", where=f"{source}:1", hint="see docs/training.md for the format")
    data, lines = compose(text, source)
    r = _Reader(lines, source, Path(base) if base is not None else Path.cwd())
    data = r.mapping(data, (), TOP_KEYS, required=("spec", "method"))
    n = r.number
    pos_int = lambda v, p: n(v, p, integer=True, low=1)  # noqa: E731
    nonneg_int = lambda v, p: n(v, p, integer=True, low=0)  # noqa: E731
    prob = lambda v, p: n(v, p, low=0, high=1)  # noqa: E731
    opt_pos_int = lambda v, p: n(v, p, integer=True, low=1, optional=True)  # noqa: E731

    spec = data["spec"]
    if not isinstance(spec, str) or not spec.strip():
        r.fail(("spec",), f"'spec' must be a spec name or a path, got {_kind(spec)}", hint="e.g. spec: presnet50")
    if "/" in spec or spec.endswith((".yaml", ".yml")):
        spec = r.path(spec, ("spec",))

    def data_root(v, p):
        return None if v is None else r.path(v, p)

    data_section = r.section(DataSection, data.get("data"), ("data",), {
        "kind": lambda v, p: r.choice(v, p, DATA_KINDS), "root": data_root, "size": opt_pos_int,
        "channels": lambda v, p: v if v is None else r.choice(v, p, (1, 3)), "num_classes": pos_int, "num_samples": pos_int,
        "test_fraction": lambda v, p: n(v, p, low=0, high=0.99), "seed": nonneg_int,
        "train_images": opt_pos_int, "workers": nonneg_int})
    if data_section.train_images is not None and data_section.kind != "fashion_mnist":
        r.fail(("data", "train_images"), f"'train_images' is for kind fashion_mnist, not {data_section.kind}",
               hint="remove it (digits, synthetic and image folders split by test_fraction)")
    if data_section.kind == "image_folder" and data_section.root is None:
        r.fail(("data",), "an image_folder data set needs 'root'", hint="add 'root: path/to/images' "
               "(one folder per class; train/ and val/ inside if the split is given)")
    optimizer = r.section(OptimizerSection, data.get("optimizer"), ("optimizer",), {
        "name": lambda v, p: r.choice(v, p, OPTIMIZERS), "lr": lambda v, p: n(v, p, low=0, low_open=True),
        "lr_scaling": lambda v, p: r.choice(v, p, ("linear", "sqrt", "none")),
        "momentum": lambda v, p: n(v, p, low=0, high=1), "weight_decay": lambda v, p: n(v, p, low=0),
        "trust_coefficient": lambda v, p: n(v, p, low=0, low_open=True), "exclude_bn_bias": r.flag,
        "betas": lambda v, p: r.numbers(v, p, 2, low=0, high=1)})
    schedule = r.section(ScheduleSection, data.get("schedule"), ("schedule",), {
        "warmup_epochs": lambda v, p: n(v, p, low=0), "warmup_steps": lambda v, p: n(v, p, integer=True, low=0, optional=True),
        "decay": lambda v, p: r.choice(v, p, ("cosine", "none")), "final_lr_ratio": prob})
    decoders = r.section(DecoderSection, data.get("decoders"), ("decoders",), {
        "block": r.flag, "width_ratio": lambda v, p: n(v, p, low=0, high=1, low_open=True),
        "hidden": opt_pos_int, "out_dim": pos_int})
    augment = r.section(AugmentSection, data.get("augment"), ("augment",), {
        "scale": lambda v, p: r.numbers(v, p, 2, low=0, high=1), "ratio": lambda v, p: r.numbers(v, p, 2, low=0),
        "flip_p": prob, "jitter": lambda v, p: r.numbers(v, p, 4, low=0), "jitter_p": prob, "gray_p": prob,
        "blur_p": prob, "blur_sigma": lambda v, p: r.numbers(v, p, 2, low=0)})
    for key, (lo, hi) in (("scale", augment.scale), ("ratio", augment.ratio), ("blur_sigma", augment.blur_sigma)):
        if lo > hi:
            r.fail(("augment", key), f"'{key}' must be [low, high] with low <= high, got [{lo}, {hi}]")
    if augment.scale[1] <= 0 or augment.ratio[0] <= 0:
        r.fail(("augment", "scale" if augment.scale[1] <= 0 else "ratio"), "crop scale and ratio must be above 0")

    top = {
        "batch": pos_int, "epochs": pos_int, "temperature": lambda v, p: n(v, p, low=0, low_open=True),
        "seed": nonneg_int, "output": lambda v, p: None if v is None else r.path(v, p), "device": _device_parser(r), "dtype": lambda v, p: r.choice(v, p, DTYPES),
        "threads": opt_pos_int, "deterministic": r.flag, "log_every": pos_int, "checkpoint_every": pos_int,
        "keep_checkpoints": pos_int, "tensorboard": r.flag, "pipeline": lambda v, p: r.choice(v, p, PIPELINES),
    }
    values = {key: top[key](data[key], (key,)) for key in top if key in data}
    if values.get("pipeline") == "pipelined" and data["method"] == "simclr":
        r.fail(("pipeline",), "simclr cannot be pipelined: its one loss needs every stage's gradient within the step",
               hint="use pipeline: sync, or method gim or loco")
    if values.get("batch", 256) < 2:
        r.fail(("batch",), "a contrastive batch needs at least 2 images", hint="use batch: 2 or more")
    return TrainConfig(spec=spec, method=r.choice(data["method"], ("method",), METHODS), data=data_section,
                       optimizer=optimizer, schedule=schedule, decoders=decoders, augment=augment,
                       source=source, lines=lines, **values)


def _device_parser(r: _Reader):
    def parse(value, path):
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            r.fail(path, f"'device' must be auto, cpu, cuda, cuda:N or mps, got {_kind(value)}")
        return value

    return parse


def load_config(path) -> TrainConfig:
    from archspec import limits

    path = Path(path)
    text = limits.read_file(path, "training config", ConfigError, "give a path to a training config .yaml")
    return loads_config(text, source=str(path), base=path.resolve().parent)


def is_training_config(path) -> bool:
    """True for a YAML file with a top-level ``method:`` or ``spec:`` key (a spec has neither)."""
    from archspec import limits

    try:
        text = limits.read_text_bounded(path)
    except (OSError, limits.LimitError):  # the spec loader words it
        return False
    return re.search(r"^(method|spec)\s*:", text, flags=re.MULTILINE) is not None


def default_output(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    return Path("runs") / Path(cfg.source).stem


# -- sizes: one parser and one format for every command (archspec.vocabulary) -------------------


# -- validation ----------------------------------------------------------------------------
@dataclass
class Validation:
    """What :func:`validate_config` found: enough for a one-line report."""

    spec_name: str
    params: int
    input_size: int
    local_stages: list[str]
    decoders: dict[str, tuple]  # label -> stage output (C, H, W)
    memory: dict  # the profiler's training_memory.methods[method]
    memory_budget: int | None
    data_found: bool | None  # None: nothing on disk to look for (digits, synthetic, cifar10 without root)
    data_path: str | None


def load_training_spec(cfg: TrainConfig):
    """The config's spec at the data's input size (``data.size`` overrides the spec's)."""
    from archspec.spec import load_spec
    from archspec.spec.resize import at_input_size

    try:
        spec = load_spec(cfg.spec)
    except SpecError as err:
        if err.where:  # an error inside the spec file names its own file:line
            raise
        raise ConfigError(err.message, where=cfg.where("spec"), what="spec", hint=err.hint) from None
    size = cfg.input_size(spec)
    if tuple(spec.input_size) != (size, size):
        try:
            spec = at_input_size(spec, (size, size))
        except SpecError as err:
            raise ConfigError(err.message, where=cfg.where("data", "size"), what="data", hint=err.hint) from None
    return spec


def validate_config(cfg: TrainConfig, memory_budget: int | str | None = None, check_data: bool = False) -> Validation:
    """Check, before any data is read: the spec loads and compiles at the data's size, the
    image channels match, every decoder fits its stage, and (with ``memory_budget``) the
    profiler's peak-memory estimate for the method at the config's batch, size, dtype and
    optimizer fits. ``check_data``: the data root must exist (otherwise it is only reported).
    Raises ConfigError / UserError with one line."""
    from archspec.nn.compiler import compile_spec
    from archspec.profiling.memory import local_stages
    from archspec.profiling.profiler import profile

    spec = load_training_spec(cfg)
    size = spec.input_size[0]
    compile_spec(spec, device="meta", check=True)

    from archspec.train.data import DEFAULT_CHANNELS

    channels = cfg.data.channels or DEFAULT_CHANNELS[cfg.data.kind]
    if channels != spec.input_channels:
        where = cfg.where("data", "channels") if cfg.data.channels else cfg.where("data", "kind")
        raise ConfigError(f"the data has {channels} channel(s) but spec '{spec.name}' takes {spec.input_channels}",
                          where=where, what="data",
                          hint=f"set data.channels: {spec.input_channels} or use a spec with "
                               f"{channels} input channel(s)")

    groups = local_stages(spec)
    labels = [ls.label for ls in spec.local_stages]
    on = labels[-1:] if cfg.method == "simclr" else labels
    decoders = {}
    for label, group in zip(labels, groups):
        stage = spec.stage(group[-1])
        shape = (stage.out_channels, *stage.output_size)
        if label not in on:
            continue
        decoders[label] = shape
        if cfg.decoders.block and min(shape[1:]) < 2:
            raise ConfigError(
                f"decoder on local stage '{label}' cannot fit: its stride-2 conv needs at least 2x2 input, "
                f"the stage gives {shape[1]}x{shape[2]}", what="decoders",
                where=cfg.where_any(("decoders", "block"), ("decoders",), ("data", "size"), ("spec",)),
                hint="set decoders.block: false (pool + MLP only) or train at a larger data.size")

    prof = profile(spec, batch=cfg.batch, dtype=cfg.dtype, optimizer=cfg.optimizer.name,
                   decoder=cfg.decoders.decoder_config(), weight_decay=cfg.optimizer.weight_decay,
                   exclude_bn_bias=cfg.optimizer.exclude_bn_bias).to_dict()
    memory = prof["training_memory"]["methods"][cfg.method]
    budget = parse_bytes(memory_budget, "--memory-budget") if isinstance(memory_budget, str) else memory_budget
    if budget is not None and memory["total"] > budget:
        from archspec.profiling.rank_memory import memory_hint

        raise ConfigError(
            f"estimated peak training memory {format_bytes(memory['total'])} is over the budget of "
            f"{format_bytes(budget)} ({cfg.method}, {spec.name}, batch {cfg.batch}: {2 * cfg.batch} images of "
            f"{size}x{size}, {cfg.dtype}, {cfg.optimizer.name})", where=cfg.where("batch"), what="memory",
            hint=memory_hint(cfg))

    found, where = None, cfg.data.root
    hint = "download the data set there or fix 'root'"
    if cfg.data.kind == "fashion_mnist":  # no root: Debian's folder
        from archspec.train.fashion_mnist import DEFAULT_ROOT, PACKAGE

        where = where or DEFAULT_ROOT
        hint = f"apt-get install {PACKAGE} (it fills {DEFAULT_ROOT}), or set data.root to a folder with its IDX files"
    if where is not None:
        found = Path(where).exists()
        if check_data and not found:
            raise ConfigError(f"data root {where} does not exist", where=cfg.where("data", "root"),
                              what="data", hint=hint)
    params = sum(r["params"] for r in prof["stages"] if r["name"] != "head")
    return Validation(spec.name, params, size, labels, decoders, memory, budget, found, where)
