"""A run's checkpoints: RUN/checkpoints/step-NNNNNNN.pt, written atomically by the runner, read
with ``torch.load(weights_only=True)`` (tensors and plain containers only: a crafted pickle cannot
run code) and checked for archspec's format."""
from __future__ import annotations

from pathlib import Path

import torch

from archspec.errors import UserError

CHECKPOINT_FORMAT = "archspec.checkpoint/1"


def checkpoint_paths(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step-*.pt"))


def latest_checkpoint(out: Path) -> Path | None:
    paths = checkpoint_paths(out)
    return paths[-1] if paths else None


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an archspec checkpoint")
    return state
