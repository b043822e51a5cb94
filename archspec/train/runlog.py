"""A run's record: log.jsonl (one JSON record per logged step), TensorBoard scalars, the one-line
result of a run, and the check that ends a run whose loss is no longer finite."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from archspec.errors import UserError

if TYPE_CHECKING:
    from archspec.train.loop import RunResult


def read_log(out: Path) -> list[dict]:
    path = Path(out) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:  # line by line: a long log is never one string
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if not line.endswith("\n"):  # the last record, cut by a crash while it was written
                    break
                raise UserError(f"{path}:{number}: not a JSON record of archspec's log (hint: the line was cut "
                                f"or edited; remove it)") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: a log record must be a JSON object")
            records.append(record)
    return records


def result_line(result: "RunResult", method: str, processes: int | None = None) -> str:
    """``completed: step 165/165 of loco on tiny_digits, 856 images/s; loss res3 5.39 -> 3.19; run DIR``."""
    s = result.summary
    change = "; ".join(f"{k[5:]} {s['first_losses'][k]:.3f} -> {v:.3f}" for k, v in s["final_losses"].items()
                       if v is not None and s["first_losses"].get(k) is not None)
    speed = f", {s['images_per_s']:.0f} images/s" if s.get("images_per_s") else ""
    procs = f", {processes} processes" if processes else ""
    return (f"{result.status}: step {result.step}/{result.total_steps} of {method} on {s['spec']}{speed}{procs}; "
            f"loss {change}; run {result.out}")


def finite(losses: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in losses.values())


def not_finite(losses: dict[str, float], step: int, saved: str = "checkpoint saved") -> UserError:
    """The one-line error of a loss that became NaN or infinite."""
    return UserError(f"the loss became {losses} at step {step} (hint: lower the learning rate or raise the "
                     f"temperature); {saved}")


def check_finite(losses: dict[str, float], step: int, save) -> None:
    """A NaN or infinite loss ends the run with a checkpoint and a one-line error."""
    if not finite(losses):
        save()
        raise not_finite(losses, step)


def log_step(log, writer, step: int, epoch: float, lr: float, losses: dict[str, float], batch: int,
             seconds: float) -> None:
    """One record of log.jsonl (and TensorBoard scalars when a writer is open)."""
    record = {"step": step, "epoch": round(epoch, 4), "lr": lr, **{f"loss/{k}": v for k, v in losses.items()},
              "images_per_s": round(batch / seconds, 2), "step_s": round(seconds, 5)}
    log.write(json.dumps(record) + "\n")
    log.flush()
    if writer is not None:
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(key, value, step)


def open_tensorboard(out: Path):
    """A SummaryWriter on RUN/tb; None, with one warning line on stderr, when tensorboard is
    missing (the run goes on: log.jsonl is the record), so a config asking for it never gets silence."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        import sys

        print(f"warning: tensorboard: true, but torch.utils.tensorboard does not import ({exc}): no event files in "
              f"{out / 'tb'}, log.jsonl has every step (pip install tensorboard, or set tensorboard: false)",
              file=sys.stderr, flush=True)
        return None
    return SummaryWriter(str(out / "tb"))
