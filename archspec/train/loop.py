"""The training runner: data order, two augmented views per batch, the method's forward and
backward, the optimizer and schedule, logs, checkpoints, resume and Ctrl-C.

A run directory holds::

    config.yaml        the resolved config (absolute paths, every key)
    log.jsonl          one record per logged step: step, epoch, lr, loss/<local stage>, images_per_s, ...
    checkpoints/       step-0000500.pt ... (the newest ``keep_checkpoints``), written atomically
    summary.json       status, steps, first and final losses, throughput
    tb/                TensorBoard event files (when torch.utils.tensorboard imports)

Resuming restores everything a step depends on (weights, batch-norm statistics, optimizer and
schedule state, the torch / numpy / python RNGs, the augmentation generator and the position in
the data order), so on CPU with deterministic algorithms the losses after resuming equal an
uninterrupted run's bit for bit. The data order of epoch e is a permutation drawn from a
generator seeded with (seed, e): its state is the (epoch, position) pair in the checkpoint.

Around the runner, each in its own module: the model it trains (archspec.train.model), the run
directory checks and config.yaml (rundir), the device, torch settings and Ctrl-C (session), the
checkpoint files (checkpoints), the RNG state (rng) and the log (runlog). Their names that
callers have always imported from here (build_model, load_run, check_run_dir, ...) still work.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from archspec.errors import UserError
from archspec.io import write_bytes_atomic, write_text_atomic
from archspec.train.checkpoints import CHECKPOINT_FORMAT, checkpoint_paths, load_checkpoint
from archspec.train.config import TrainConfig
from archspec.train.model import Model, build_model, load_run
from archspec.train.rng import epoch_order, rng_state, set_rng_state
from archspec.train.runlog import check_finite, log_step, open_tensorboard, read_log  # noqa: F401 (read_log: loop's API)
from archspec.train.precision import LossScale, Precision, weight_dtype
from archspec.train.rundir import RESUME_FREE, check_run_dir, dump_config
from archspec.train.session import Stopper, torch_settings, resolve_device
from archspec.train.stale import StaleWeights, is_segment_start, stage_delays


@dataclass
class RunResult:
    status: str  # completed | max_steps | interrupted
    step: int
    total_steps: int
    out: Path
    summary: dict = field(default_factory=dict)


# -- what every runner builds alike (the per-stage runner too, for its part of the model) ------------
def training_data(cfg: TrainConfig, spec):
    """The training split of ``cfg``'s data; one line when its channels do not fit ``spec`` or it
    holds fewer images than one batch."""
    from archspec.train.data import build_dataset

    dataset = build_dataset(cfg.data.data_config(spec.input_size[0]), "train")
    channels = getattr(dataset, "channels", spec.input_channels)
    if channels != spec.input_channels:
        raise UserError(f"{cfg.source}: the data has {channels} channel(s), spec '{spec.name}' takes "
                        f"{spec.input_channels} (hint: set data.channels)")
    if len(dataset) < cfg.batch:
        raise UserError(f"{cfg.where('batch')}: batch {cfg.batch} is larger than the {len(dataset)} "
                        f"training images (hint: lower 'batch')")
    return dataset


def config_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """``cfg``'s optimizer over parameter ``groups`` (archspec.train.optim.param_groups)."""
    from archspec.train.optim import build_optimizer

    o = cfg.optimizer
    return build_optimizer(o.name, groups, lr=o.effective_lr(cfg.batch), momentum=o.momentum,
                           trust_coefficient=o.trust_coefficient, betas=o.betas)


def config_scheduler(cfg: TrainConfig, optimizer, total_steps: int, steps_per_epoch: int):
    """``cfg``'s learning-rate schedule (warmup, then cosine or constant) over ``total_steps``."""
    from archspec.train.optim import WarmupCosine

    return WarmupCosine(optimizer, total_steps, cfg.schedule.warmup(steps_per_epoch), cfg.schedule.decay,
                        cfg.schedule.final_lr_ratio)


# -- the runner --------------------------------------------------------------------------------
class Runner:
    # Data-parallel replicas (archspec.train.replica_runner) read only their rows of a batch and
    # leave the run directory to replica 0.
    rows = slice(None)
    writes = True

    def __init__(self, cfg: TrainConfig, out: Path, progress: bool | None = None, device: torch.device | None = None):
        from archspec.train.augment import SimCLRAugment
        from archspec.train.methods import build_method, trainable_modules
        from archspec.train.optim import param_groups

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.device = device or resolve_device(cfg.device)
        self.model = build_model(cfg, self.device)
        spec = self.model.spec
        self.size = spec.input_size[0]
        self.dataset = training_data(cfg, spec)
        self.steps_per_epoch = len(self.dataset) // cfg.batch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.method = build_method(cfg.method, self.model.net, self.model.decoders, cfg.temperature)
        self.method.precision = Precision(cfg.dtype, self.device)
        self.loss_scale = LossScale() if cfg.dtype == "float16" else None
        # pipeline: pipelined trains with the pipelined schedule's delays (archspec.train.stale)
        self.stale = StaleWeights(self.method, stage_delays(cfg.method, len(self.method.groups), cfg.pipeline))
        o = cfg.optimizer
        groups = param_groups(trainable_modules(self.model.net, self.model.decoders), o.weight_decay,
                              o.exclude_bn_bias)
        self.optimizer = config_optimizer(cfg, groups)
        self.scheduler = config_scheduler(cfg, self.optimizer, self.total_steps, self.steps_per_epoch)
        self.augment = SimCLRAugment(self.size, **cfg.augment.kwargs())
        self.aug_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.step = 0

    # checkpoints
    def state(self) -> dict:
        return self.checkpoint(self.model.net.state_dict(), self.model.decoders.state_dict(),
                               self.optimizer.state_dict(), self.scheduler.state_dict())

    def checkpoint(self, model: dict, decoders: dict, optimizer: dict, scheduler: dict) -> dict:
        """The checkpoint format (CHECKPOINT_FORMAT) around the given state dicts: every runner's."""
        loss_scale = getattr(self, "loss_scale", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "total_steps": self.total_steps,
            "method": self.cfg.method,
            "spec": self.model.spec.name,
            "model": model,
            "decoders": decoders,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "data_order": {"seed": self.cfg.seed, "epoch": self.step // self.steps_per_epoch,
                           "position": self.step % self.steps_per_epoch},
            "rng": rng_state(self.aug_generator),
            **({"loss_scale": loss_scale.state_dict()} if loss_scale is not None else {}),
        }

    def save(self) -> Path:
        folder = self.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        path = folder / f"step-{self.step:07d}.pt"
        write_bytes_atomic(path, buffer.getvalue())
        for old in checkpoint_paths(self.out)[:-self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state["total_steps"] != self.total_steps:
            raise UserError(f"checkpoint {path} is from a run of {state['total_steps']} steps, this config makes "
                            f"{self.total_steps} (hint: resume with the run's own config)")
        self.model.net.load_state_dict(state["model"])
        self.model.decoders.load_state_dict(state["decoders"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.aug_generator)
        if self.loss_scale is not None and "loss_scale" in state:
            self.loss_scale.load_state_dict(state["loss_scale"])
        self.step = int(state["step"])

    # data
    def batches(self, start: int, stop: int):
        """(step, images) for steps start..stop-1, in the data order of each epoch."""
        def indices(step):
            epoch, position = divmod(step, self.steps_per_epoch)
            order = epoch_order(len(self.dataset), self.cfg.seed, epoch)
            return order[position * self.cfg.batch:(position + 1) * self.cfg.batch][self.rows].tolist()

        if self.cfg.data.workers == 0:
            for step in range(start, stop):
                items = [self.dataset[i] for i in indices(step)]
                yield step, torch.stack([image for image, _ in items])
            return
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[indices(s) for s in range(start, stop)],
                                             num_workers=self.cfg.data.workers,
                                             pin_memory=self.device.type == "cuda", persistent_workers=False)
        for step, (images, _) in zip(range(start, stop), loader):
            yield step, images

    # the loop
    def run(self, max_steps: int | None = None, on_step=None) -> RunResult:
        from tqdm import tqdm

        cfg = self.cfg
        stop = self.total_steps if max_steps is None else min(self.total_steps, max_steps)
        start = self.step
        writer = open_tensorboard(self.out) if cfg.tensorboard and self.writes else None
        log_path = self.out / "log.jsonl" if self.writes else Path(os.devnull)
        if self.writes:
            records = [r for r in read_log(self.out) if r["step"] <= start]  # drop steps after the checkpoint
            write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in records))
        status = "completed" if stop == self.total_steps else "max_steps"
        bar = tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True, leave=False,
                   disable=not self.writes or ((not self.progress) if self.progress is not None else None),
                   desc=f"{cfg.method} {self.model.spec.name}")
        dtype = weight_dtype(cfg.dtype)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.model.net.train()
        self.model.decoders.train()
        started = time.perf_counter()
        with Stopper() as stopper, open(log_path, "a", encoding="utf-8") as log:
            try:
                for step, images in self.batches(start, stop):
                    t0 = time.perf_counter()
                    images = images.to(self.device, dtype, non_blocking=True)
                    view1, view2 = self.views(images)
                    lr = self.optimizer.param_groups[0]["lr"]
                    for p in params:
                        p.grad = None
                    if is_segment_start(step, start, cfg.checkpoint_every):
                        self.stale.reset()
                    if self.loss_scale is not None:
                        self.method.loss_scale = self.loss_scale.scale
                    losses = self.stale.step(view1, view2)
                    self.reduce_gradients()
                    if self.loss_scale is None or self.loss_scale.unscale(params):  # float16: skip an overflow
                        self.optimizer.step()
                    self.scheduler.step()
                    losses = self.agree_losses({k: float(v) for k, v in losses.items()})
                    self.step = step + 1
                    dt = time.perf_counter() - t0
                    check_finite(losses, self.step, self.save)
                    if self.step % cfg.log_every == 0 or self.step == stop:
                        log_step(log, writer, self.step, self.step / self.steps_per_epoch, lr, losses, cfg.batch, dt)
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(losses.items())[-2:]}, refresh=False)
                    if on_step is not None:
                        on_step(self.step, losses)
                    if self.step % cfg.checkpoint_every == 0 and self.step != stop:
                        self.save()
                    if self.agree_stop(stopper.requested):
                        status = "interrupted"
                        break
            except RuntimeError:
                if not stopper.requested:  # a DataLoader worker stopped by Ctrl-C surfaces as this
                    raise
                status = "interrupted"
            finally:
                bar.close()
                if writer is not None:
                    writer.close()
        checkpoint = self.save()
        summary = None
        if self.writes:
            summary = self.summary(status, time.perf_counter() - started, checkpoint)
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return RunResult(status, self.step, self.total_steps, self.out, summary)

    # what a data-parallel replica changes (archspec.train.replica_runner)
    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views of a batch."""
        return self.augment(images, self.aug_generator), self.augment(images, self.aug_generator)

    def reduce_gradients(self) -> None:
        """Between the backward and the optimizer step: nothing in one process."""

    def agree_losses(self, losses: dict[str, float]) -> dict[str, float]:
        """The step's losses, as every process sees them."""
        return losses

    def agree_stop(self, requested: bool) -> bool:
        """Whether to stop after this step, the same in every process."""
        return requested

    def summary(self, status: str, wall: float, checkpoint: Path) -> dict:
        records = read_log(self.out)
        keys = [k for k in (records[-1] if records else {}) if k.startswith("loss/")]

        def mean(rows, key):
            values = [r[key] for r in rows if key in r]
            return sum(values) / len(values) if values else None

        window = max(1, min(10, len(records) // 5 or 1))
        speeds = [r["images_per_s"] for r in records[1:]] or [r["images_per_s"] for r in records]
        return {
            "status": status, "step": self.step, "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "epoch": round(self.step / self.steps_per_epoch, 4),
            "method": self.cfg.method, "spec": self.model.spec.name, "input_size": self.size,
            "batch": self.cfg.batch, "device": str(self.device),
            "params": {"encoder": sum(p.numel() for n in self.model.spec.stage_names
                                      for p in getattr(self.model.net, n).parameters()),
                       "decoders": sum(p.numel() for p in self.model.decoders.parameters())},
            "first_losses": {k: mean(records[:window], k) for k in keys},
            "final_losses": {k: mean(records[-window:], k) for k in keys},
            "loss_window_steps": window,
            "images_per_s": sum(speeds) / len(speeds) if speeds else None,
            "wall_s_this_session": round(wall, 2),
            "checkpoint": str(checkpoint.relative_to(self.out)),
        }


def train(cfg: TrainConfig, out: Path | str, *, max_steps: int | None = None, resume: bool = False,
          progress: bool | None = None, on_step=None) -> RunResult:
    """Train ``cfg`` into run directory ``out``; ``max_steps`` stops at that global step (the
    schedule still spans the config's epochs); ``resume`` continues from the newest checkpoint.
    ``on_step(step, losses)`` is called after every step."""
    out = Path(out)
    checkpoint = check_run_dir(cfg, out, resume)
    with torch_settings(cfg.threads, cfg.deterministic):
        runner = Runner(cfg, out, progress)
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            runner.restore(checkpoint)
        else:
            write_text_atomic(out / "config.yaml", dump_config(dataclasses.replace(cfg, output=str(out.resolve()))))
        return runner.run(max_steps=max_steps, on_step=on_step)


# Re-exported: what callers import from here (the model, the run-directory checks, the session).
__all__ = ["RESUME_FREE", "Model", "RunResult", "Runner", "build_model", "check_run_dir", "dump_config", "load_run",
           "read_log", "resolve_device", "train"]
