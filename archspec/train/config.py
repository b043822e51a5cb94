"""Training configs: YAML -> TrainConfig (frozen dataclasses), errors at ``file:line``.

Relative paths in a config file (``spec`` when it is a path, ``data.root``, ``output``) are
resolved against the directory of the config file. docs/training.md describes every key.

This module reads and checks the values of the file; the dataclasses live in
archspec.train.config_schema and the checks against the spec (:func:`validate_config`) in
archspec.train.config_check. Both are re-exported here, so ``archspec.train.config`` stays the
one import for everything about a config.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from archspec.errors import did_you_mean
from archspec.train.config_check import Validation, load_training_spec, validate_config
from archspec.train.config_schema import (
    DATA_KINDS, DTYPES, METHODS, OPTIMIZERS, PIPELINES, AugmentSection, ConfigError, DataSection, DecoderSection,
    OptimizerSection, ScheduleSection, TrainConfig, pipeline_refusal)
from archspec.vocabulary import format_bytes, parse_bytes


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
                self.fail(path + (key,), f"unknown key '{key}'",
                          hint=did_you_mean(key, allowed, f"allowed keys: {', '.join(allowed)}"))
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
            self.fail(path, f"'{path[-1]}' must be one of {', '.join(choices)}, got {_kind(value)}",
                      hint=did_you_mean(value, choices, None))
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
    refusal = pipeline_refusal(data["method"], values.get("pipeline", "sync"))
    if refusal:
        r.fail(("pipeline",), refusal, hint="use pipeline: sync, or method gim or loco")
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


# Re-exported: the schema, the checks, and the size parser and format that callers take from here.
__all__ = ["DATA_KINDS", "DTYPES", "METHODS", "OPTIMIZERS", "PIPELINES", "TOP_KEYS", "AugmentSection", "ConfigError",
           "DataSection", "DecoderSection", "OptimizerSection", "ScheduleSection", "TrainConfig", "Validation",
           "default_output", "format_bytes", "is_training_config", "load_config", "load_training_spec", "loads_config",
           "parse_bytes", "validate_config"]
