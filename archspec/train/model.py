"""The model a run trains: the encoder compiled from the config's spec and the local decoders,
in the config's weight dtype and initialised from its seed (:func:`build_model`), and the same
model read back from a run directory's checkpoint (:func:`load_run`, for ``archspec eval`` and
``archspec plot``). The runners build it; evaluation only loads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from archspec.errors import UserError
from archspec.train.checkpoints import latest_checkpoint, load_checkpoint
from archspec.train.config import TrainConfig, load_config, load_training_spec
from archspec.train.precision import weight_dtype


@dataclass
class Model:
    cfg: TrainConfig
    spec: object
    net: torch.nn.Module
    decoders: torch.nn.ModuleDict
    device: torch.device


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> Model:
    """The encoder and decoders of ``cfg``, initialised from ``cfg.seed``."""
    from archspec.nn.compiler import compile_spec
    from archspec.train.methods import build_decoders

    spec = load_training_spec(cfg)
    device = torch.device(device)
    dtype = weight_dtype(cfg.dtype)
    torch.manual_seed(cfg.seed)
    net = compile_spec(spec, device=device).to(dtype)
    decoders = build_decoders(net, cfg.method, cfg.decoders.decoder_config()).to(dtype)
    return Model(cfg, spec, net, decoders, device)


def load_run(run: Path | str, device: torch.device | str = "cpu", checkpoint: Path | None = None) -> tuple[Model, dict]:
    """A run's config and model with its newest (or the given) checkpoint loaded."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run directory: it has no config.yaml (hint: give the --out of "
                        f"'archspec train')")
    cfg = load_config(run / "config.yaml")
    checkpoint = checkpoint or latest_checkpoint(run)
    if checkpoint is None:
        raise UserError(f"run {run} has no checkpoint yet (hint: train it first)")
    state = load_checkpoint(checkpoint)
    model = build_model(cfg, device)
    model.net.load_state_dict(state["model"])
    model.decoders.load_state_dict(state["decoders"])
    return model, state
