"""A run directory before the runner writes to it: the resolved config.yaml a run starts with
(:func:`dump_config`), and :func:`check_run_dir`, which refuses a directory that would be
overwritten or a resume that could not be exact (no checkpoint, a config whose numbers differ:
only the RESUME_FREE keys may change). What the runner writes there: archspec.train.loop.
"""
from __future__ import annotations

from pathlib import Path

from archspec.errors import UserError
from archspec.train.checkpoints import latest_checkpoint
from archspec.train.config import TrainConfig, load_config

# Keys that may change between a run and its resumption without changing its numbers.
RESUME_FREE = {"threads", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard", "device", "output"}


def dump_config(cfg: TrainConfig) -> str:
    import yaml

    header = f"# resolved from {cfg.source} by archspec train\n"
    return header + yaml.safe_dump(cfg.to_data(), sort_keys=False)


def _diff(a, b, prefix=""):
    """The first key where two config dicts differ (ignoring RESUME_FREE and data.workers)."""
    for key in list(a) + [k for k in b if k not in a]:
        if not prefix and key in RESUME_FREE or prefix == "data." and key == "workers":
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _diff(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key}"
    return None


def check_run_dir(cfg: TrainConfig, out: Path, resume: bool) -> Path | None:
    """Refuse a run directory that would be overwritten, or a resume that cannot be exact (no
    checkpoint, a config whose numbers differ); the newest checkpoint when resuming."""
    if resume:
        if not (out / "config.yaml").is_file():
            raise UserError(f"nothing to resume: {out} has no config.yaml (hint: start the run without --resume)")
        saved = load_config(out / "config.yaml")  # bounded like any config (archspec.limits)
        changed = _diff(saved.to_data(), cfg.to_data())
        if changed:
            raise UserError(f"{cfg.source}: '{changed}' differs from the run's config.yaml in {out} (hint: resume "
                            f"with the config the run started with, or start a new run with --out)")
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise UserError(f"nothing to resume: {out} has no checkpoint (hint: start the run without --resume)")
        return checkpoint
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"run directory {out} already exists (hint: --resume to continue it, or --out for a new run)")
    return None
