"""Data parallelism of the whole network: N processes, each a replica of the single-process runner.

``archspec train CONFIG --data-parallel N`` (or ``torchrun --nproc-per-node N -m
archspec.train.distributed CONFIG --processes one``) starts N replicas. Replica r reads only
its rows of every batch (contiguous shards, in the data order of the single-process runner,
as DistributedSampler gives each rank its own indices), draws the whole batch's augmentation
parameters and applies its rows' (so the views equal the single-process views), and runs the
same method (SimCLR, GIM or LoCo, sync or with the pipelined schedule's delays). Batch norm and
the contrastive loss see the whole batch (:mod:`archspec.train.replicas`), the gradients are
summed over the replicas before every optimizer step, so a step equals one process on the
whole batch up to float rounding, and the replicas stay identical. Replica 0 writes the run
directory: the log, the checkpoints (the single-process format, so every runner resumes from
them) and the summary.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.distributed as dist

from archspec.errors import UserError
from archspec.train.config import TrainConfig
from archspec.train.loop import Runner, RunResult
from archspec.train.rundir import check_run_dir
from archspec.train.replicas import all_reduce_grads, convert_batchnorm, gathered_nt_xent, shard
from archspec.train.transport import Messages, raise_shared_error


def check_batch(cfg: TrainConfig, replicas: int) -> None:
    """One line when the batch does not split into ``replicas`` equal shards of two or more."""
    if cfg.batch % replicas or cfg.batch // replicas < 1:
        raise UserError(f"{cfg.where('batch')}: batch {cfg.batch} does not split into {replicas} equal shards "
                        f"(hint: a batch that {replicas} divides, e.g. {replicas * max(1, cfg.batch // replicas)})")


class ReplicaRunner(Messages, Runner):
    """Replica ``rank`` of ``world``; every method that communicates is called by all alike."""

    def __init__(self, cfg: TrainConfig, out: Path, rank: int, world: int, device: torch.device,
                 progress: bool | None = None, resume: bool = False, stop_file: str | None = None):
        self.rank, self.world, self.stop_file = rank, world, stop_file
        self.writes = rank == 0
        check_batch(cfg, world)
        self.rows = shard(cfg.batch, world, rank)
        info = {"error": None, "checkpoint": None}
        if rank == 0:
            try:
                checkpoint = check_run_dir(cfg, Path(out), resume)
                info["checkpoint"] = None if checkpoint is None else str(checkpoint)
            except UserError as err:
                info = {"error": str(err), "exit_code": err.exit_code}
        info = self._broadcast(info)
        raise_shared_error(info)
        super().__init__(cfg, out, progress, device)  # the same seed: the same weights on every replica
        convert_batchnorm(self.model.net)
        convert_batchnorm(self.model.decoders)
        self.method.contrast = functools.partial(gathered_nt_xent, group=None, index=rank, replicas=world)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if info["checkpoint"] is not None:
            self.restore(Path(info["checkpoint"]))

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = (self.rows.start, self.cfg.batch)  # this replica's rows of the whole batch's views
        return (self.augment(images, self.aug_generator, rows=rows),
                self.augment(images, self.aug_generator, rows=rows))

    def reduce_gradients(self) -> None:
        all_reduce_grads(self.params)

    def agree_losses(self, losses: dict[str, float]) -> dict[str, float]:
        """Replica 0's losses (every replica computes the same whole-batch losses, up to rounding)."""
        labels = list(losses)
        values = torch.tensor([losses[k] for k in labels], dtype=torch.float64, device=self.device)
        dist.broadcast(values, src=0)
        return dict(zip(labels, values.tolist()))

    def agree_stop(self, requested: bool) -> bool:
        """Stop when any replica was asked to (a Ctrl-C, or the spawning parent's stop file)."""
        flag = torch.tensor([float(requested or (self.stop_file is not None and os.path.exists(self.stop_file)))],
                            dtype=torch.float64, device=self.device)
        dist.all_reduce(flag)
        return bool(flag[0] > 0)

    def save(self) -> Path | None:
        """Collective: replica 0 writes the checkpoint; the others wait for it."""
        path = super().save() if self.rank == 0 else None
        dist.barrier()
        return path

    def summary(self, status: str, wall: float, checkpoint: Path) -> dict:
        return {**super().summary(status, wall, checkpoint), "processes": self.world, "data_parallel": self.world,
                "backend": dist.get_backend()}

    def run(self, max_steps: int | None = None, on_step=None) -> RunResult:
        result = super().run(max_steps=max_steps, on_step=on_step if self.rank == 0 else None)
        summary = self._broadcast(result.summary)  # replica 0's
        return RunResult(summary["status"], summary["step"], summary["total_steps"], self.out, summary)
