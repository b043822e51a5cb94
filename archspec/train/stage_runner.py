"""The runner of one rank when every local stage has a process of its own.

:class:`StageRunner` sets a rank up (its stage's modules from the initialised model or the
checkpoint, its optimizer and schedule over its own parameters, as the single-process runner
would have them), runs the loop of the config's schedule (:mod:`archspec.train.schedule`) and
writes the log, checkpoints (:mod:`archspec.train.stage_checkpoint`) and summary on rank 0.
:mod:`archspec.train.distributed` starts the ranks.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from archspec.errors import UserError
from archspec.io import write_text_atomic
from archspec.train.config import TrainConfig
from archspec.train.checkpoints import load_checkpoint
from archspec.train.loop import Runner, RunResult, config_optimizer, config_scheduler, training_data
from archspec.train.rundir import check_run_dir
from archspec.train.session import Stopper
from archspec.train.runlog import check_finite, finite, log_step, not_finite, open_tensorboard, read_log
from archspec.train.precision import MIXED, Precision, weight_dtype
from archspec.train.ranks import _build_model, check_stage_dtype, peak_rss_bytes, stage_plan
from archspec.train.replica_runner import check_batch
from archspec.train.replicas import all_reduce_grads, convert_batchnorm, gathered_nt_xent, shard
from archspec.train.schedule import CHECKPOINT, DONE, INTERRUPTED, NOT_FINITE, Schedules, pipelined_outboxes
from archspec.train.stage_checkpoint import StageCheckpoints
from archspec.train.stale import stage_delays
from archspec.train.transport import Messages, injected_fault, raise_shared_error


class StageRunner(StageCheckpoints, Schedules, Messages, Runner):
    """The runner of one rank. Inherits the data order (:meth:`Runner.batches`) and the summary
    from the single-process :class:`Runner`; everything that touches the run directory runs on
    rank 0 only. Every method that communicates must be called by all ranks alike.

    Its constructor is its own, not Runner's, because a rank holds one stage, not the model; what
    both build alike (the checked training data, the optimizer, the schedule) comes from the same
    functions of archspec.train.loop."""

    def __init__(self, cfg: TrainConfig, out: Path, rank: int, world: int, device: torch.device,
                 progress: bool | None = None, resume: bool = False, stop_file: str | None = None):
        from archspec.train.augment import SimCLRAugment
        from archspec.train.config import load_training_spec
        from archspec.train.methods import build_method, decoder_labels, trainable_modules
        from archspec.train.optim import param_groups

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.rank, self.world, self.device = rank, world, device
        self.stop_file = stop_file  # spawned runs: the parent creates it at a Ctrl-C
        check_stage_dtype(cfg)
        self.dtype = weight_dtype(cfg.dtype)  # weights and images
        self.wire_dtype = MIXED.get(cfg.dtype, self.dtype)  # activations and gradients between ranks
        spec = load_training_spec(cfg)
        self.groups, self.labels, self.io_shapes = stage_plan(spec)
        self.stages = len(self.groups)
        if world % self.stages:
            raise UserError(f"{cfg.source}: spec '{spec.name}' has {len(self.groups)} local stages "
                            f"({', '.join(self.labels)}): one process per local stage needs {len(self.groups)} "
                            f"processes (or a multiple, for data-parallel replicas), not {world} (hint: torchrun "
                            f"--nproc-per-node {len(self.groups)})")
        # rank = replica x stages + stage: replica r's pipeline is ranks r*S .. r*S+S-1
        self.replicas = world // self.stages
        self.replica, self.stage = divmod(rank, self.stages)
        self.reader = self.stage == 0  # reads the data and makes the views of its replica's rows
        check_batch(cfg, self.replicas)
        self.rows = shard(cfg.batch, self.replicas, self.replica)
        self.shard_rows = 2 * (cfg.batch // self.replicas)  # images (both views) through each rank per step
        with_loss = decoder_labels(spec, cfg.method)  # the stages whose decoder has a loss, as in one process
        self.loss_ranks = [k for k, label in enumerate(self.labels) if label in with_loss]
        self.label = self.labels[self.stage]
        self.has_decoder = self.stage in self.loss_ranks

        # Rank 0 builds the whole model exactly as the single-process runner (same seed, same
        # device) and hands every rank its stage; the others build a memory-free twin.
        self.model = _build_model(cfg, spec, device if rank == 0 else "meta")
        self.size = self.model.spec.input_size[0]
        info, state = {"error": None}, None
        if rank == 0:
            try:
                checkpoint = check_run_dir(cfg, self.out, resume)
                self.dataset = training_data(cfg, spec)
                info["images"] = len(self.dataset)
                info["checkpoint"] = checkpoint
                if checkpoint is not None:
                    state = load_checkpoint(checkpoint)
                    total = cfg.epochs * (len(self.dataset) // cfg.batch)
                    if state["total_steps"] != total:
                        raise UserError(f"checkpoint {checkpoint} is from a run of {state['total_steps']} steps, "
                                        f"this config makes {total} (hint: resume with the run's own config)")
            except UserError as err:
                info = {"error": str(err), "exit_code": err.exit_code}
        info = self._broadcast(info)
        raise_shared_error(info)
        if self.reader and rank != 0:  # another replica's first stage: its own rows of the data
            self.dataset = training_data(cfg, spec)
        self.steps_per_epoch = info["images"] // cfg.batch
        self.total_steps = cfg.epochs * self.steps_per_epoch

        net, decoders = self.model.net, self.model.decoders
        self.model_keys = list(net.state_dict().keys())
        self.decoder_keys = list(decoders.state_dict().keys())
        # Every parameter by name ("net.res3.0.conv1.weight", "decoders.res3.mlp.0.weight") and
        # its index in the single-process runner's optimizer state (the checkpoint format).
        o = cfg.optimizer
        full = param_groups(trainable_modules(net, decoders), o.weight_decay, o.exclude_bn_bias)
        names = self._param_names()
        self.full_index = {names[id(p)]: i for i, p in enumerate(p for g in full for p in g["params"])}
        if rank == 0:
            reference = config_optimizer(cfg, full)
            self.full_param_groups = reference.state_dict()["param_groups"]
            self.full_base_lrs = [g["lr"] for g in reference.param_groups]
            del reference
        del full

        # Every rank gets its stage (and decoder): from the initialised model or the checkpoint,
        # one rank at a time (an object scatter would pad every part to the largest).
        if rank == 0:
            part = self._part_from_state(0, state) if state is not None else {}
            for r in range(1, world):
                k = r % self.stages
                self._send_object(self._part_from_state(k, state) if state is not None else
                                  self._part_from_model(k), r)
        else:
            part = self._recv_object(0)
        own = self.own_modules()
        if rank == 0:
            for r in range(1, self.stages):  # free what the other stages' ranks own
                for name in self.groups[r]:
                    getattr(net, name).to("meta")
            for label in decoders:
                if label != self.label or not self.has_decoder:
                    decoders[label].to("meta")
        else:
            for module in own:
                module.to_empty(device=device)
        if rank != 0 or state is not None:
            self._load_weights(part)

        # The optimizer and schedule over this rank's parameters, as the single-process runner's.
        names = self._param_names()
        groups = param_groups(own, o.weight_decay, o.exclude_bn_bias)
        self.optimizer = config_optimizer(cfg, groups)
        self.param_names = [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        self.scheduler = config_scheduler(cfg, self.optimizer, self.total_steps, self.steps_per_epoch)
        self.method = build_method(cfg.method, net, decoders, cfg.temperature)
        self.method.precision = Precision(cfg.dtype, device)
        self.stage_params = [p for name in self.groups[self.stage] for p in getattr(net, name).parameters()
                             if p.requires_grad]
        self.decoder_params = [p for _, p in decoders[self.label].named_parameters()] if self.has_decoder else []
        # the pipelined schedule (archspec.train.schedule): its own gloo group for the small messages
        self.delay = stage_delays(cfg.method, self.stages, cfg.pipeline)[self.stage]
        self.control_group = dist.new_group(backend="gloo") if cfg.pipeline == "pipelined" else None
        self.pending, self.update_lr, self.fetch_s, self._stopper = None, {}, 0.0, None
        self._replicate(own)
        if self.reader:
            self.augment = SimCLRAugment(self.size, **cfg.augment.kwargs())
            self.aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
        self.step = 0
        if "optimizer" in part:
            self._load_training_state(part)

    def peer(self, stage: int) -> int:
        """The rank of ``stage`` in this rank's replica."""
        return self.replica * self.stages + stage

    def _replicate(self, own) -> None:
        """Data parallel: the group of this stage's replicas (and of the first stages' replicas,
        on gloo, for their stop decisions); batch norm and the loss over the whole batch."""
        self.stage_group = self.reader_group = None
        if self.replicas == 1:
            return
        for k in range(self.stages):  # every rank creates every group, in the same order
            group = dist.new_group([k + self.stages * r for r in range(self.replicas)])
            if k == self.stage:
                self.stage_group = group
        readers = dist.new_group([self.stages * r for r in range(self.replicas)], backend="gloo")
        self.reader_group = readers if self.reader else None
        for module in own:
            convert_batchnorm(module, self.stage_group)
        self.method.contrast = functools.partial(gathered_nt_xent, group=self.stage_group, index=self.replica,
                                                 replicas=self.replicas)

    def reduce_gradients(self) -> None:
        """Data parallel: this stage's gradients summed over its replicas."""
        if self.replicas > 1:
            all_reduce_grads([p for g in self.optimizer.param_groups for p in g["params"]], self.stage_group)

    def _views(self, images: torch.Tensor) -> torch.Tensor:
        """A first stage: both augmented views of its replica's rows (the whole batch's draws),
        one tensor of 2 x rows images."""
        images = images.to(self.device, self.dtype, non_blocking=True)
        rows = (self.rows.start, self.cfg.batch)
        return torch.cat([self.augment(images, self.aug_generator, rows=rows),
                          self.augment(images, self.aug_generator, rows=rows)])

    # -- the loop ------------------------------------------------------------------------------------
    def _fetch(self, batches, stopper):
        """Rank 0: the next (step, images); None when a DataLoader worker died of a Ctrl-C."""
        try:
            return next(batches)
        except RuntimeError:
            if not stopper.requested:
                raise
            return None

    def stop_requested(self) -> bool:
        """A Ctrl-C (or the parent's stop file) on this rank, during :meth:`run`."""
        return self._stopper is not None and self._stop_flag(self._stopper)

    def _stop_flag(self, stopper) -> bool:
        return stopper.requested or (self.stop_file is not None and os.path.exists(self.stop_file))

    def run(self, max_steps: int | None = None, on_step=None) -> RunResult:
        from tqdm import tqdm

        cfg, rank0 = self.cfg, self.rank == 0
        stop = self.total_steps if max_steps is None else min(self.total_steps, max_steps)
        start = self.step
        status = "completed" if stop == self.total_steps else "max_steps"
        writer = bar = None
        if rank0:
            writer = open_tensorboard(self.out) if cfg.tensorboard else None
            log_path = self.out / "log.jsonl"
            records = [r for r in read_log(self.out) if r["step"] <= start]  # drop steps after the checkpoint
            write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in records))
            bar = tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True, leave=False,
                       disable=(not self.progress) if self.progress is not None else None,
                       desc=f"{cfg.method} {self.model.spec.name} x{self.world} {cfg.pipeline}")
        self.model.net.train()
        self.model.decoders.train()
        started = time.perf_counter()
        # $ARCHSPEC_MEASURE_MEMORY=1: this rank's peak of tensor memory (benchmarks/bench_memory.py)
        tracker, held = None, 0
        if os.environ.get("ARCHSPEC_MEASURE_MEMORY") == "1":
            from archspec.profiling.tensor_memory import TensorMemory, held_bytes
            from archspec.train.measure import run_tensors

            existing = run_tensors(self)
            tracker, held = TensorMemory(existing), held_bytes(existing)
        with Stopper() as stopper, (open(log_path, "a", encoding="utf-8") if rank0 else
                                     contextlib.nullcontext()) as log:
            self._stopper = stopper

            def record(step, losses, lr, seconds):  # rank 0: a finished step
                if step % cfg.log_every == 0 or step == stop:
                    log_step(log, writer, step, step / self.steps_per_epoch, lr, losses, cfg.batch, seconds)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(losses.items())[-2:]}, refresh=False)
                if on_step is not None:
                    on_step(step, losses)

            try:
                loop = self._run_pipelined if cfg.pipeline == "pipelined" else self._run_sync
                with tracker or contextlib.nullcontext():
                    if loop(start, stop, stopper, record):
                        status = "interrupted"
            finally:
                if bar is not None:
                    bar.close()
                if writer is not None:
                    writer.close()
        rss_training = peak_rss_bytes()  # before the final checkpoint, which rank 0 assembles
        checkpoint = self.save()
        rss = [None] * self.world if rank0 else None
        dist.gather_object((rss_training, peak_rss_bytes(), None if tracker is None else held + tracker.peak), rss,
                           dst=0)
        summary = None
        if rank0:
            summary = self.summary(status, time.perf_counter() - started, checkpoint)
            summary.update({"processes": self.world, "backend": dist.get_backend(), "pipeline": cfg.pipeline,
                            "data_parallel": self.replicas,  # replica 0's ranks below
                            "max_rss_bytes": dict(zip(self.labels, (r[1] for r in rss))),
                            "max_rss_bytes_training": dict(zip(self.labels, (r[0] for r in rss)))})
            if tracker is not None:
                summary["tensor_peak_bytes"] = dict(zip(self.labels, (r[2] for r in rss)))
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        summary = self._broadcast(summary)
        return RunResult(summary["status"], summary["step"], summary["total_steps"], self.out, summary)

    def _run_sync(self, start: int, stop: int, stopper, record) -> bool:
        """One batch in flight, an all-reduce of losses and stop flags after every step. True
        when a Ctrl-C (or a failed read) stopped the run."""
        rank0, reader = self.rank == 0, self.reader
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        flags = torch.zeros(self.world + 1, dtype=torch.float64, device=self.device)
        batches = iter(self.batches(start, stop)) if reader else None
        batch = self._fetch(batches, stopper) if reader and start < stop else None
        flags[-1] = float(reader and start < stop and batch is None)  # a reader could not read the first batch
        dist.all_reduce(flags)
        if flags[-1] > 0:
            return True
        step = start
        while step < stop:
            t0 = time.perf_counter()
            x = self._views(batch[1]) if reader else None
            lr = self.optimizer.param_groups[0]["lr"]
            for p in params:
                p.grad = None
            loss = self.sync_step(x)
            self.reduce_gradients()
            self.optimizer.step()
            self.scheduler.step()
            fetch_s, data_stop = 0.0, False
            if reader and step + 1 < stop and not self._stop_flag(stopper):
                t1 = time.perf_counter()  # the next batch, before the all-reduce: its failure stops all
                batch = self._fetch(batches, stopper)
                data_stop = batch is None
                fetch_s = time.perf_counter() - t1
            flags.zero_()
            if loss is not None and self.replica == 0:  # replicas compute the same whole-batch losses
                flags[self.stage] = loss
            flags[-1] = float(self._stop_flag(stopper) or data_stop)
            dist.all_reduce(flags)
            values = flags.tolist()
            losses = {self.labels[r]: values[r] for r in self.loss_ranks}
            self.step = step = step + 1
            injected_fault(self.rank, self.step)
            dt = time.perf_counter() - t0 - fetch_s
            check_finite(losses, self.step, self.save)
            if rank0:
                record(self.step, losses, lr, dt)
            if self.step % self.cfg.checkpoint_every == 0 and self.step != stop:
                self.save()
            if values[-1] > 0:
                return True
        return False

    def _run_pipelined(self, start: int, stop: int, stopper, record) -> bool:
        """Segments of the pipelined schedule (archspec.train.schedule) up to ``stop``, with a
        checkpoint between segments. True when a Ctrl-C (or a failed read) stopped the run."""
        cfg, rank0 = self.cfg, self.rank == 0
        pipelined_outboxes(self)
        batches = iter(self.batches(start, stop)) if self.reader else None
        seen = {"stop": False, "bad": None}

        def decide(b):  # a first stage: the next batch's views, or why the segment ends
            self.fetch_s = 0.0
            if b >= stop:
                return DONE
            if b != first and b % cfg.checkpoint_every == 0:
                return CHECKPOINT
            why, batch = 0, None
            if seen["bad"] is not None:
                why = NOT_FINITE
            elif seen["stop"] or self._stop_flag(stopper):
                why = INTERRUPTED
            else:
                t = time.perf_counter()
                batch = self._fetch(batches, stopper)
                self.fetch_s = time.perf_counter() - t
                why = INTERRUPTED if batch is None else 0
            if self.replicas > 1:  # the replicas' first stages stop together
                agreed = torch.tensor([float(why)])
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=self.reader_group)
                why = int(agreed[0])
            return why or self._views(batch[1])

        def on_losses(step, values, lr, seconds):  # a first stage: step's losses from every stage
            losses = {self.labels[r]: values[r] for r in self.loss_ranks}
            seen["stop"] = seen["stop"] or values[-1] > 0
            if seen["bad"] is None and not finite(losses):
                seen["bad"] = (step + 1, losses)
            if rank0:
                record(step + 1, losses, lr, seconds)

        while True:
            first = self.step
            code = self.run_segment(decide, on_losses)
            if code == NOT_FINITE:
                self.save()
                step, losses = self._broadcast(seen["bad"])
                raise not_finite(losses, step, f"checkpoint saved at step {self.step}")
            if code != CHECKPOINT:
                return code == INTERRUPTED
            self.save()
