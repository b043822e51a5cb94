"""The checks a training config passes before a run starts (``archspec validate CONFIG`` and
``archspec train``): its spec loads at the data's input size (:func:`load_training_spec`, also
what every runner builds from), compiles, takes the data's channels, every decoder fits its
stage, the profiler's peak-memory estimate fits a budget, and the data root exists. Torch and the
profiler are imported inside :func:`validate_config`, so reading a config stays light.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from archspec.errors import SpecError
from archspec.train.config_schema import ConfigError, TrainConfig
from archspec.vocabulary import format_bytes, parse_bytes


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

    from archspec.train.methods import decoder_labels

    on = decoder_labels(spec, cfg.method)
    decoders = {}
    for local in spec.local_stages:
        if local.label not in on:
            continue
        stage = spec.stage(local.stages[-1])
        shape = decoders[local.label] = (stage.out_channels, *stage.output_size)
        if cfg.decoders.block and min(shape[1:]) < 2:
            raise ConfigError(
                f"decoder on local stage '{local.label}' cannot fit: its stride-2 conv needs at least 2x2 input, "
                f"the stage gives {shape[1]}x{shape[2]}", what="decoders",
                where=cfg.where_any(("decoders", "block"), ("decoders",), ("data", "size"), ("spec",)),
                hint="set decoders.block: false (pool + MLP only) or train at a larger data.size")

    prof = profile(spec, batch=cfg.batch, dtype=cfg.dtype, optimizer=cfg.optimizer.name,
                   decoder=cfg.decoders.decoder_config(), weight_decay=cfg.optimizer.weight_decay,
                   exclude_bn_bias=cfg.optimizer.exclude_bn_bias)
    memory = prof.memory[cfg.method].as_dict()
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
    params = sum(row.params for row in prof.stages if row.name != "head")
    labels = [local.label for local in spec.local_stages]
    return Validation(spec.name, params, size, labels, decoders, memory, budget, found, where)
