"""One process per local stage: the model-parallel runner (torch.distributed).

Rank k owns local stage k (its stages' modules, optimizer and schedule) and the decoder on it
(SimCLR: only the last rank has one). Rank 0 also does everything the single-process runner
(:mod:`archspec.train.loop`) does around the network: it reads the data in the same order,
makes the two augmented views with the same generator, writes ``log.jsonl``, the checkpoints
and ``summary.json`` in the same formats. One step of this runner equals one step of the
single-process runner: the same losses and the same updated weights (the tests compare them;
on the CPU with the same thread count they are bitwise equal).

Start it either way::

    archspec train CONFIG --processes stage            # spawns one process per local stage
    torchrun --nproc-per-node N -m archspec.train.distributed CONFIG [--out DIR] [--max-steps S]

Per step, with x_k the input of local stage k (x_0 = both views, 2B images) and y_k its output:

- forward: rank k receives x_k from rank k-1 (shapes known from the spec), runs its stage once
  and sends y_k (detached) to rank k+1 before its own backward, so rank k+1's forward overlaps
  it;
- **gim**: rank k back-propagates its decoder's loss through its stage; no gradient messages;
- **loco**: unit k = stages k-1 and k. Rank k computes ``a_k = dL_k/dy_k`` (decoder k),
  ``b_k = J_k^T a_k`` (the gradient of unit k's loss at x_k = y_{k-1}) and sends b_k to rank
  k-1; rank k-1 back-propagates ``a_{k-1} + b_k`` into its stage's *weights only*, so unit
  k's gradient stops at stage k-1's input, exactly as ``archspec.train.methods.LoCo``;
- **simclr**: the last rank back-propagates the loss to its input and sends that gradient to
  rank k-1, which continues the backward with it and sends on: end-to-end backpropagation;
- every rank steps its own optimizer (same optimizer, learning rate and schedule as the
  single-process runner; the updates of LARS, SGD and Adam are per tensor, so splitting the
  parameters over processes changes nothing), then one all-reduce of a small vector brings every
  loss and every rank's Ctrl-C flag to all ranks: they log (rank 0), stop on a NaN and stop
  after a Ctrl-C at the same step.

Checkpoints gather the stages' state dicts and optimizer states to rank 0, which writes one
file in the single-process format (``archspec eval``, ``archspec plot`` and either runner's
``--resume`` read it); resuming scatters it back. Only rank 0 touches the run directory.
There is no micro-batching: within a step the ranks wait for each other (a pipeline with
one batch in flight), so this runner divides the memory, not the time; see docs/training.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from archspec.errors import UserError
from archspec.io import write_bytes_atomic, write_text_atomic
from archspec.train.config import TrainConfig
from archspec.train.loop import (
    CHECKPOINT_FORMAT, Model, Runner, RunResult, _load_checkpoint, _Stopper, _tensorboard, _torch_settings,
    _tuples, check_finite, check_run_dir, checkpoint_paths, dump_config, log_step, read_log, result_line)


def default_timeout_s() -> float:
    """Seconds a rank waits for a message or a collective before it fails: torch's default
    of 30 minutes, or $ARCHSPEC_DIST_TIMEOUT."""
    return float(os.environ.get("ARCHSPEC_DIST_TIMEOUT", 1800))


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another launcher) started with RANK and WORLD_SIZE."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def stage_plan(spec) -> tuple[list[list[str]], list[str], list[tuple[tuple, tuple]]]:
    """Local stages, their labels and (input, output) shapes (C, H, W) from the spec."""
    from archspec.profile.memory import local_stages
    from archspec.spec.validate import infer_shapes

    groups = local_stages(spec)
    shapes = {s.name: s for s in infer_shapes(spec)}
    io_shapes = [(tuple(shapes[g[0]].in_shape), tuple(shapes[g[-1]].out_shape)) for g in groups]
    return groups, ["+".join(g) for g in groups], io_shapes


def rank_device(name: str, local_rank: int, local_world: int) -> torch.device:
    """The device of a rank: CUDA (``cuda:LOCAL_RANK``) when this machine has a GPU for every
    local rank and the config allows it, else the CPU."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        raise UserError("device 'mps' cannot run one process per local stage (hint: set device: cpu, cuda or auto)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count >= local_world:
        return torch.device("cuda", local_rank)
    if name == "auto":
        return torch.device("cpu")
    raise UserError(f"device '{name}' with one process per local stage needs {local_world} CUDA devices on this "
                    f"machine, it has {count} (hint: set device: auto or cpu)")


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss there would include the
    parent's memory at the fork of a spawned process), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not on Windows

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _rank_settings(threads: int | None, deterministic: bool):
    """:func:`archspec.train.loop._torch_settings` for one rank. It sets the same eager-mode
    switch: ``torch.use_deterministic_algorithms`` also sets a flag of the compiler
    (torch._inductor), which this runner never uses, and importing it costs every process
    about 1.7 s, so the switch is set directly when torch has it."""
    switch = getattr(torch._C, "_set_deterministic_algorithms", None)
    if switch is None:
        with _torch_settings(threads, deterministic):
            yield
        return
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            switch(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        switch(old_det, warn_only=old_warn)


def _build_model(cfg: TrainConfig, spec, device) -> Model:
    """:func:`archspec.train.loop.build_model` (same seed, same order of initialisation, so the
    same weights) without its meta-device shape check, which costs each process about a second
    of imports; :meth:`StageRunner.train_step` checks every stage's output shape instead."""
    from archspec.nn.compiler import compile_spec
    from archspec.train.methods import build_decoders

    device = torch.device(device)
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(cfg.seed)
    net = compile_spec(spec, device=device, check=False).to(dtype)
    decoders = build_decoders(net, cfg.method, cfg.decoders.decoder_config()).to(dtype)
    return Model(cfg, spec, net, decoders, device)


class StageRunner(Runner):
    """The runner of one rank. Inherits the data order (:meth:`Runner.batches`) and the summary
    from the single-process :class:`Runner`; everything that touches the run directory runs on
    rank 0 only. Every method that communicates must be called by all ranks alike."""

    def __init__(self, cfg: TrainConfig, out: Path, rank: int, world: int, device: torch.device,
                 progress: bool | None = None, resume: bool = False, stop_file: str | None = None):
        from archspec.train.augment import SimCLRAugment
        from archspec.train.config import load_training_spec
        from archspec.train.data import build_dataset
        from archspec.train.methods import build_method, trainable_modules
        from archspec.train.optim import WarmupCosine, build_optimizer, param_groups

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.rank, self.world, self.device = rank, world, device
        self.stop_file = stop_file  # spawned runs: the parent creates it at a Ctrl-C
        self.dtype = getattr(torch, cfg.dtype)
        spec = load_training_spec(cfg)
        self.groups, self.labels, self.io_shapes = stage_plan(spec)
        if world != len(self.groups):
            raise UserError(f"{cfg.source}: spec '{spec.name}' has {len(self.groups)} local stages "
                            f"({', '.join(self.labels)}): one process per local stage needs {len(self.groups)} "
                            f"processes, not {world} (hint: torchrun --nproc-per-node {len(self.groups)})")
        self.loss_ranks = [world - 1] if cfg.method == "simclr" else list(range(world))
        self.label = self.labels[rank]
        self.has_decoder = rank in self.loss_ranks

        # Rank 0 builds the whole model exactly as the single-process runner (same seed, same
        # device) and hands every rank its stage; the others build a memory-free twin.
        self.model = _build_model(cfg, spec, device if rank == 0 else "meta")
        self.size = self.model.spec.input_size[0]
        info, state = {"error": None}, None
        if rank == 0:
            try:
                checkpoint = check_run_dir(cfg, self.out, resume)
                self.dataset = build_dataset(cfg.data.data_config(self.size), "train")
                channels = getattr(self.dataset, "channels", spec.input_channels)
                if channels != spec.input_channels:
                    raise UserError(f"{cfg.source}: the data has {channels} channel(s), spec '{spec.name}' takes "
                                    f"{spec.input_channels} (hint: set data.channels)")
                if len(self.dataset) // cfg.batch < 1:
                    raise UserError(f"{cfg.where('batch')}: batch {cfg.batch} is larger than the "
                                    f"{len(self.dataset)} training images (hint: lower 'batch')")
                info["images"] = len(self.dataset)
                if checkpoint is not None:
                    state = _load_checkpoint(checkpoint)
                    total = cfg.epochs * (len(self.dataset) // cfg.batch)
                    if state["total_steps"] != total:
                        raise UserError(f"checkpoint {checkpoint} is from a run of {state['total_steps']} steps, "
                                        f"this config makes {total} (hint: resume with the run's own config)")
            except UserError as err:
                info = {"error": str(err), "exit_code": err.exit_code}
        info = self._broadcast(info)
        if info["error"] is not None:
            err = UserError(info["error"])
            err.exit_code = info["exit_code"]
            raise err
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
            reference = build_optimizer(o.name, full, lr=o.effective_lr(cfg.batch), momentum=o.momentum,
                                        trust_coefficient=o.trust_coefficient, betas=o.betas)
            self.full_param_groups = reference.state_dict()["param_groups"]
            self.full_base_lrs = [g["lr"] for g in reference.param_groups]
            del reference
        del full

        # Every rank gets its stage (and decoder): from the initialised model or the checkpoint,
        # one rank at a time (an object scatter would pad every part to the largest).
        if rank == 0:
            part = self._part_from_state(0, state) if state is not None else {}
            for r in range(1, world):
                self._send_object(self._part_from_state(r, state) if state is not None else
                                  self._part_from_model(r), r)
        else:
            part = self._recv_object(0)
        own = self.own_modules()
        if rank == 0:
            for r in range(1, world):  # free what rank r owns
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
        self.optimizer = build_optimizer(o.name, groups, lr=o.effective_lr(cfg.batch), momentum=o.momentum,
                                         trust_coefficient=o.trust_coefficient, betas=o.betas)
        self.param_names = [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        self.scheduler = WarmupCosine(self.optimizer, self.total_steps, cfg.schedule.warmup(self.steps_per_epoch),
                                      cfg.schedule.decay, cfg.schedule.final_lr_ratio)
        self.method = build_method(cfg.method, net, decoders, cfg.temperature)
        self.stage_params = [p for name in self.groups[rank] for p in getattr(net, name).parameters()
                             if p.requires_grad]
        if rank == 0:
            self.augment = SimCLRAugment(self.size, **cfg.augment.kwargs())
            self.aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
        self.step = 0
        if "optimizer" in part:
            self._load_training_state(part, state if rank == 0 else None)

    # -- ownership and names -------------------------------------------------------------------
    def own_modules(self) -> list[torch.nn.Module]:
        mods = [getattr(self.model.net, name) for name in self.groups[self.rank]]
        return mods + ([self.model.decoders[self.label]] if self.has_decoder else [])

    def _param_names(self) -> dict[int, str]:
        names = {id(p): f"net.{n}" for n, p in self.model.net.named_parameters()}
        names.update({id(p): f"decoders.{n}" for n, p in self.model.decoders.named_parameters()})
        return names

    def _stage_rank(self, stage: str) -> int | None:
        """The rank owning a stage (None for the head)."""
        return next((r for r, g in enumerate(self.groups) if stage in g), None)

    def _param_rank(self, name: str) -> int:
        """The rank owning a parameter ("net.res3.0.conv1.weight", "decoders.res3.mlp.0.weight")."""
        where, rest = name.split(".", 1)
        if where == "decoders":
            return self.labels.index(rest.split(".", 1)[0])
        return self._stage_rank(rest.split(".", 1)[0])

    def _part_from_model(self, r: int) -> dict:
        net, decoders = self.model.net, self.model.decoders
        part = {"model": {f"{name}.{k}": _cpu(v) for name in self.groups[r]
                          for k, v in getattr(net, name).state_dict().items()}, "decoders": {}}
        if r in self.loss_ranks:
            label = self.labels[r]
            part["decoders"] = {f"{label}.{k}": _cpu(v) for k, v in decoders[label].state_dict().items()}
        return part

    def _part_from_state(self, r: int, state: dict) -> dict:
        label = self.labels[r]
        model = {k: v for k, v in state["model"].items() if self._stage_rank(k.split(".", 1)[0]) == r}
        decs = {k: v for k, v in state["decoders"].items() if r in self.loss_ranks and k.split(".", 1)[0] == label}
        by_index = {i: name for name, i in self.full_index.items()}
        opt = {by_index[int(i)]: s for i, s in state["optimizer"]["state"].items()
               if self._param_rank(by_index[int(i)]) == r}
        return {"model": model, "decoders": decs, "optimizer": opt, "scheduler": state["scheduler"],
                "step": int(state["step"])}

    def _load_weights(self, part: dict) -> None:
        net, decoders = self.model.net, self.model.decoders
        for name in self.groups[self.rank]:
            prefix = name + "."
            getattr(net, name).load_state_dict({k[len(prefix):]: v for k, v in part["model"].items()
                                                if k.startswith(prefix)})
        if self.has_decoder:
            prefix = self.label + "."
            decoders[self.label].load_state_dict({k[len(prefix):]: v for k, v in part["decoders"].items()
                                                  if k.startswith(prefix)})

    def _load_training_state(self, part: dict, state: dict | None) -> None:
        own = self.optimizer.state_dict()
        saved = part["optimizer"]
        self.optimizer.load_state_dict({
            "state": {i: saved[name] for i, name in enumerate(self.param_names) if name in saved},
            "param_groups": own["param_groups"]})
        self.scheduler.load_state_dict({"last_step": part["scheduler"]["last_step"],
                                        "base_lrs": self.scheduler.base_lrs})
        self.step = part["step"]
        if state is not None:  # rank 0: the RNGs, as Runner.restore
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            name, keys, *rest = rng["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
            random.setstate(_tuples(rng["python"]))
            self.aug_generator.set_state(rng["augment"])

    # -- communication ---------------------------------------------------------------------------
    def _broadcast(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _send_object(self, obj, dst: int) -> None:
        """A dict of tensors and plain values to one rank (torch.save format: its size, then its bytes)."""
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = torch.frombuffer(buffer.getbuffer(), dtype=torch.uint8).to(self.device)
        dist.send(torch.tensor([data.numel()], dtype=torch.int64, device=self.device), dst=dst)
        dist.send(data, dst=dst)
        del data

    def _recv_object(self, src: int):
        size = torch.empty(1, dtype=torch.int64, device=self.device)
        dist.recv(size, src=src)
        data = torch.empty(int(size), dtype=torch.uint8, device=self.device)
        dist.recv(data, src=src)
        return torch.load(io.BytesIO(data.cpu().numpy()), map_location="cpu", weights_only=True)

    # -- checkpoints -------------------------------------------------------------------------------
    def _part(self) -> dict:
        """This rank's share of a checkpoint: its stage and decoder state dicts and its
        optimizer state by parameter name (on the CPU)."""
        part = self._part_from_model(self.rank)
        states = self.optimizer.state
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        part["optimizer"] = {name: _cpu(states[p]) for name, p in zip(self.param_names, params) if p in states}
        return part

    def state(self, parts: list[dict] | None = None) -> dict:
        """The single-process checkpoint, assembled on rank 0 from every rank's part."""
        merged, decs, opt = {}, {}, {}
        for part in parts:
            merged.update(part["model"])
            decs.update(part["decoders"])
            for name, s in part["optimizer"].items():
                opt[self.full_index[name]] = s
        merged.update({f"head.{k}": _cpu(v) for k, v in self.model.net.head.state_dict().items()})
        lr = self.optimizer.param_groups[0]["lr"]
        np_state = np.random.get_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "total_steps": self.total_steps,
            "method": self.cfg.method,
            "spec": self.model.spec.name,
            "model": {k: merged[k] for k in self.model_keys},
            "decoders": {k: decs[k] for k in self.decoder_keys},
            "optimizer": {"state": dict(sorted(opt.items())),
                          "param_groups": [{**g, "lr": lr} for g in self.full_param_groups]},
            "scheduler": {"last_step": self.scheduler.last_step, "base_lrs": list(self.full_base_lrs)},
            "data_order": {"seed": self.cfg.seed, "epoch": self.step // self.steps_per_epoch,
                           "position": self.step % self.steps_per_epoch},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "python": random.getstate(),
                "augment": self.aug_generator.get_state(),
            },
        }

    def save(self) -> Path | None:
        """Collective: every rank's part to rank 0 (one at a time), which writes the checkpoint
        atomically."""
        path = None
        if self.rank != 0:
            self._send_object(self._part(), 0)
        else:
            parts = [self._part()] + [self._recv_object(r) for r in range(1, self.world)]
            folder = self.out / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            torch.save(self.state(parts), buffer)
            path = folder / f"step-{self.step:07d}.pt"
            write_bytes_atomic(path, buffer.getvalue())
            for old in checkpoint_paths(self.out)[:-self.cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)
        dist.barrier()  # nobody leaves (or fails) while rank 0 is still writing
        return path

    # -- one step ----------------------------------------------------------------------------------
    def _recv(self, shape, src: int) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
        dist.recv(buffer, src=src)
        return buffer

    def train_step(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Forward and backward of this rank's stage for one batch (``x``: both views, on rank
        0); fills ``.grad`` of this rank's parameters and returns its loss (None without a
        decoder). The arithmetic is the single-process method's, split at the stage borders."""
        k, last, method = self.rank, self.world - 1, self.cfg.method
        n = 2 * self.cfg.batch
        in_shape, out_shape = self.io_shapes[k]
        inp = x if k == 0 else self._recv((n, *in_shape), k - 1)
        inp.requires_grad_(k > 0 and method in ("simclr", "loco"))
        y = self.method.run_group(k, inp)
        if tuple(y.shape) != (n, *out_shape):
            raise RuntimeError(f"local stage {self.label} gave {tuple(y.shape)}, the spec says {(n, *out_shape)}")
        sends = [dist.isend(y.detach().contiguous(), dst=k + 1)] if k < last else []
        loss = None
        if method == "gim":
            loss = self.method.loss(self.label, y)
            loss.backward()
        elif method == "simclr":
            if k == last:
                loss = self.method.loss(self.label, y)
                loss.backward()
            else:
                torch.autograd.backward(y, self._recv(y.shape, k + 1))
            if k > 0:
                sends.append(dist.isend(inp.grad.contiguous(), dst=k - 1))
        else:  # loco, as methods.LoCo._step
            y_leaf = y.detach().requires_grad_(True)
            loss = self.method.loss(self.label, y_leaf)
            loss.backward()
            a = y_leaf.grad
            if k == last:
                torch.autograd.backward(y, a, inputs=self.stage_params + ([inp] if k > 0 else []))
                if k > 0:
                    sends.append(dist.isend(inp.grad.contiguous(), dst=k - 1))
            else:
                if k > 0:  # unit k's gradient at stage k-1's output, through stage k alone
                    (b,) = torch.autograd.grad(y, inp, a, retain_graph=True)
                    sends.append(dist.isend(b.contiguous(), dst=k - 1))
                b_up = self._recv(y.shape, k + 1)  # unit k+1's gradient at y_k
                torch.autograd.backward(y, a + b_up, inputs=self.stage_params)
        for work in sends:
            work.wait()
        return None if loss is None else loss.detach()

    # -- the loop ------------------------------------------------------------------------------------
    def _fetch(self, batches, stopper):
        """Rank 0: the next (step, images); None when a DataLoader worker died of a Ctrl-C."""
        try:
            return next(batches)
        except RuntimeError:
            if not stopper.requested:
                raise
            return None

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
            writer = _tensorboard(self.out) if cfg.tensorboard else None
            log_path = self.out / "log.jsonl"
            records = [r for r in read_log(self.out) if r["step"] <= start]  # drop steps after the checkpoint
            write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in records))
            bar = tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True, leave=False,
                       disable=(not self.progress) if self.progress is not None else None,
                       desc=f"{cfg.method} {self.model.spec.name} x{self.world}")
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.model.net.train()
        self.model.decoders.train()
        flags = torch.zeros(self.world + 1, dtype=torch.float64, device=self.device)
        started = time.perf_counter()
        with _Stopper() as stopper, (open(log_path, "a", encoding="utf-8") if rank0 else
                                     contextlib.nullcontext()) as log:
            try:
                batches = iter(self.batches(start, stop)) if rank0 else None
                batch = self._fetch(batches, stopper) if rank0 and start < stop else None
                flags.zero_()  # rank 0 could not read the first batch (Ctrl-C): nobody starts
                flags[-1] = float(rank0 and start < stop and batch is None)
                dist.all_reduce(flags)
                step = start
                if flags[-1] > 0:
                    step, status = stop, "interrupted"
                while step < stop:
                    x, t0 = None, time.perf_counter()
                    if rank0:
                        images = batch[1].to(self.device, self.dtype, non_blocking=True)
                        view1 = self.augment(images, self.aug_generator)
                        view2 = self.augment(images, self.aug_generator)
                        x = torch.cat([view1, view2])
                    lr = self.optimizer.param_groups[0]["lr"]
                    for p in params:
                        p.grad = None
                    loss = self.train_step(x)
                    self.optimizer.step()
                    self.scheduler.step()
                    fetch_s, data_stop = 0.0, False
                    if rank0 and step + 1 < stop and not self._stop_flag(stopper):
                        t1 = time.perf_counter()  # the next batch, before the all-reduce: its failure stops all
                        batch = self._fetch(batches, stopper)
                        data_stop = batch is None
                        fetch_s = time.perf_counter() - t1
                    flags.zero_()
                    if loss is not None:
                        flags[self.rank] = loss
                    flags[-1] = float(self._stop_flag(stopper) or data_stop)
                    dist.all_reduce(flags)
                    values = flags.tolist()
                    losses = {self.labels[r]: values[r] for r in self.loss_ranks}
                    self.step = step = step + 1
                    dt = time.perf_counter() - t0 - fetch_s
                    check_finite(losses, self.step, self.save)
                    if rank0:
                        if self.step % cfg.log_every == 0 or self.step == stop:
                            log_step(log, writer, self.step, self.step / self.steps_per_epoch, lr, losses, cfg.batch,
                                     dt)
                        bar.update(1)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in list(losses.items())[-2:]}, refresh=False)
                        if on_step is not None:
                            on_step(self.step, losses)
                    if self.step % cfg.checkpoint_every == 0 and self.step != stop:
                        self.save()
                    if values[-1] > 0:
                        status = "interrupted"
                        break
            finally:
                if bar is not None:
                    bar.close()
                if writer is not None:
                    writer.close()
        rss_training = peak_rss_bytes()  # before the final checkpoint, which rank 0 assembles
        checkpoint = self.save()
        rss = [None] * self.world if rank0 else None
        dist.gather_object((rss_training, peak_rss_bytes()), rss, dst=0)
        summary = None
        if rank0:
            summary = self.summary(status, time.perf_counter() - started, checkpoint)
            summary.update({"processes": self.world, "backend": dist.get_backend(),
                            "max_rss_bytes": dict(zip(self.labels, (r[1] for r in rss))),
                            "max_rss_bytes_training": dict(zip(self.labels, (r[0] for r in rss)))})
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        summary = self._broadcast(summary)
        return RunResult(summary["status"], summary["step"], summary["total_steps"], self.out, summary)


# -- running one rank ---------------------------------------------------------------------------------
def run_rank(cfg: TrainConfig, out: Path | str, rank: int, world: int, *, local_rank: int | None = None,
             local_world: int | None = None, init_method: str = "env://", max_steps: int | None = None,
             resume: bool = False, progress: bool | None = None, on_step=None, timeout_s: float | None = None,
             stop_file: str | None = None) -> RunResult:
    """Join the process group as ``rank`` of ``world``, train, leave. Every rank calls this."""
    out = Path(out)
    local_rank = rank if local_rank is None else local_rank
    local_world = world if local_world is None else local_world
    device = rank_device(cfg.device, local_rank, local_world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # N processes share the machine's cores unless the config says otherwise.
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // local_world)
    timeout = datetime.timedelta(seconds=timeout_s or default_timeout_s())
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, timeout=timeout)
    try:
        with _rank_settings(threads, cfg.deterministic):
            runner = StageRunner(cfg, out, rank, world, device, progress, resume, stop_file)
            if rank == 0 and not resume:
                out.mkdir(parents=True, exist_ok=True)
                write_text_atomic(out / "config.yaml",
                                  dump_config(dataclasses.replace(cfg, output=str(out.resolve()))))
            return runner.run(max_steps=max_steps, on_step=on_step)
    finally:
        dist.destroy_process_group()


def _spawned(index: int, world: int, init_method: str, cfg: TrainConfig, out: Path, max_steps, resume, progress,
             timeout_s, talk: str) -> None:
    """One spawned rank. ``talk``: the parent's folder for the stop file and the error lines
    (files, so that nothing needs a semaphore or an interpreter teardown)."""
    import multiprocessing
    import threading

    from tqdm import tqdm

    parent = multiprocessing.parent_process()
    if parent is not None:  # a rank whose parent died (killed, or a Ctrl-C before it could wait) goes too
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a semaphore os._exit would leak
    code = 0
    try:
        run_rank(cfg, out, index, world, init_method=init_method, max_steps=max_steps, resume=resume,
                 progress=progress, timeout_s=timeout_s, stop_file=os.path.join(talk, "stop"))
    except UserError as err:  # to the parent as one line
        write_text_atomic(Path(talk) / f"error-{index:04d}.json", json.dumps([str(err), err.exit_code]))
        code = err.exit_code
    # Everything is written (rank 0 closed and renamed its files); skip the interpreter's
    # teardown, which takes about 2 s with torch loaded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# What a rank imports anyway: torch._dynamo comes with the first optimizer (torch's
# Optimizer.__init__ imports it), torch._meta_registrations with the first meta tensor.
PRELOAD = ["torch", "torch._dynamo", "torch._meta_registrations", "archspec.train.distributed",
           "archspec.train.augment", "archspec.train.data", "archspec.train.methods", "archspec.train.optim"]


def _start_method() -> str:
    """``forkserver`` where there is one: a clean server process (it has run nothing, so no
    thread pools) imports torch and the runner once, then forks every rank, so no rank imports
    them again and a later run from the same process reuses the server; else ``spawn``."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    return "forkserver"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_all(context) -> None:
    for p in context.processes:
        if p.is_alive():
            p.terminate()
    for p in context.processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def train_distributed(cfg: TrainConfig, out: Path | str, *, max_steps: int | None = None, resume: bool = False,
                      progress: bool | None = None, on_step=None, timeout_s: float | None = None,
                      deadline_s: float | None = None) -> RunResult:
    """Train ``cfg`` into ``out`` with one process per local stage; arguments as
    :func:`archspec.train.loop.train`. In a process started by torchrun (RANK and WORLD_SIZE
    set) this process is one rank; otherwise it spawns one process per local stage on this
    machine (a free port on 127.0.0.1) and waits for them. ``timeout_s``: how long a rank
    waits for a message before failing (default 1800 s, or $ARCHSPEC_DIST_TIMEOUT);
    ``deadline_s``: spawned runs only, stop every process and fail after this many seconds.
    ``on_step`` runs on rank 0 and only under torchrun."""
    out = Path(out)
    if launched_by_torchrun():
        env = os.environ
        world = int(env["WORLD_SIZE"])
        return run_rank(cfg, out, int(env["RANK"]), world, local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
                        local_world=int(env.get("LOCAL_WORLD_SIZE", world)), max_steps=max_steps, resume=resume,
                        progress=progress, on_step=on_step, timeout_s=timeout_s)
    if on_step is not None:
        raise UserError("on_step needs the ranks in this process: start the run with torchrun")
    from archspec.train.config import load_training_spec

    world = len(stage_plan(load_training_spec(cfg))[0])
    check_run_dir(cfg, out, resume)  # fail here, with one line, before starting any process
    import shutil
    import tempfile

    timeout_s = timeout_s or default_timeout_s()  # read here: a forkserver's ranks have the server's environment

    import torch.multiprocessing as tmp

    talk = tempfile.mkdtemp(prefix="archspec-ranks-")
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    interrupts, context = [], None

    def on_sigint(signum, frame):  # the first Ctrl-C: every rank stops after its current step
        interrupts.append(signum)
        Path(talk, "stop").touch()
        if len(interrupts) > 1:  # the second: at once
            if context is not None:
                _stop_all(context)
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        previous = None
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    try:
        context = tmp.start_processes(_spawned, args=(world, init_method, cfg, out, max_steps, resume, progress,
                                                      timeout_s, talk),
                                      nprocs=world, join=False, start_method=_start_method())
        while not context.join(timeout=0.1, grace_period=10):
            if deadline is not None and time.monotonic() > deadline:
                _stop_all(context)
                raise UserError(f"the {world} processes did not finish within {deadline_s:g} s (hint: a rank is "
                                f"stuck or the machine is overloaded)")
    except (tmp.ProcessRaisedException, tmp.ProcessExitedException):
        reported = sorted(Path(talk).glob("error-*.json"))
        if reported:  # the lowest rank's line
            message, code = json.loads(reported[0].read_text())
            err = UserError(message)
            err.exit_code = code
            raise err from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        shutil.rmtree(talk, ignore_errors=True)
    summary = json.loads((out / "summary.json").read_text())
    return RunResult(summary["status"], summary["step"], summary["total_steps"], out, summary)


def _command():
    import click

    @click.command("python -m archspec.train.distributed")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.option("--out", "out_dir", type=click.Path(file_okay=False),
                  help="Run directory (default: the config's 'output', else runs/<config name>).")
    @click.option("--max-steps", type=click.IntRange(min=1), help="Stop at this global step.")
    @click.option("--resume", is_flag=True, help="Continue the run from its newest checkpoint.")
    @click.option("--memory-budget", metavar="SIZE", help="Refuse to start if the estimated peak memory exceeds SIZE.")
    @click.option("--progress/--no-progress", default=None, help="Progress bar on rank 0.")
    def command(config, out_dir, max_steps, resume, memory_budget, progress):
        """``archspec train CONFIG --processes stage``: one process per local stage. Under
        torchrun, rank 0 validates the config and prints; every rank trains its stage."""
        from archspec.train.config import default_output, load_config, parse_bytes, validate_config

        rank0 = int(os.environ.get("RANK", "0")) == 0
        cfg = load_config(config)
        if rank0:  # the others wait for it in the process group (torchrun stops them if it fails)
            validate_config(cfg, memory_budget=parse_bytes(memory_budget) if memory_budget else None)
        out = Path(out_dir) if out_dir else default_output(cfg)
        result = train_distributed(cfg, out, max_steps=max_steps, resume=resume, progress=progress)
        s = result.summary
        if rank0:
            click.echo(result_line(result, cfg.method, s["processes"]))
        if result.status == "interrupted":
            if rank0:
                click.echo(f"interrupted: checkpoint {out / s['checkpoint']} saved (continue with --resume)", err=True)
            raise click.exceptions.Exit(130)

    return command


def main(argv=None) -> int:
    """``python -m archspec.train.distributed CONFIG [options]`` (under torchrun, or spawning
    its own processes): errors as one line on rank 0, exit code 2."""
    import click

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        code = _command().main(args=argv, standalone_mode=False)
    except UserError as err:
        if rank0:
            click.echo(f"error: {err}", err=True)
        return err.exit_code
    except click.ClickException as err:
        if rank0:
            click.echo(f"error: {err.format_message()}", err=True)
        return err.exit_code
    except click.Abort:
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
