"""Checkpoints of one process per local stage, in the single-process format.

Each rank owns a part of the model: its local stage's modules, its decoder and their optimizer
state. :meth:`StageCheckpoints.save` gathers the parts to rank 0, which writes one checkpoint
exactly as :class:`archspec.train.loop.Runner` would (``archspec eval``, ``archspec plot`` and
either runner's ``--resume`` read it); at the start, rank 0 cuts a checkpoint (or the freshly
initialised model) into parts and sends each rank its own. Parameters are matched by name
("net.res3.0.conv1.weight", "decoders.res3.mlp.0.weight") to their index in the single-process
optimizer state. Data-parallel replicas hold equal copies: replica 0's ranks stand for all.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.distributed as dist

from archspec.io import write_bytes_atomic
from archspec.train.checkpoints import checkpoint_paths
from archspec.train.rng import set_rng_state
from archspec.train.transport import to_cpu


class StageCheckpoints:
    """A mixin of :class:`archspec.train.stage_runner.StageRunner`: ownership of parameters by
    local stage, the parts of a checkpoint, and saving and loading them."""

    # -- ownership and names -------------------------------------------------------------------
    def own_modules(self) -> list[torch.nn.Module]:
        mods = [getattr(self.model.net, name) for name in self.groups[self.stage]]
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
        part = {"model": {f"{name}.{k}": to_cpu(v) for name in self.groups[r]
                          for k, v in getattr(net, name).state_dict().items()}, "decoders": {}}
        if r in self.loss_ranks:
            label = self.labels[r]
            part["decoders"] = {f"{label}.{k}": to_cpu(v) for k, v in decoders[label].state_dict().items()}
        return part

    def _part_from_state(self, r: int, state: dict) -> dict:
        label = self.labels[r]
        model = {k: v for k, v in state["model"].items() if self._stage_rank(k.split(".", 1)[0]) == r}
        decs = {k: v for k, v in state["decoders"].items() if r in self.loss_ranks and k.split(".", 1)[0] == label}
        by_index = {i: name for name, i in self.full_index.items()}
        opt = {by_index[int(i)]: s for i, s in state["optimizer"]["state"].items()
               if self._param_rank(by_index[int(i)]) == r}
        part = {"model": model, "decoders": decs, "optimizer": opt, "scheduler": state["scheduler"],
                "step": int(state["step"])}
        if r == 0:  # the first stages (of every replica) make the views: the RNGs
            part["rng"] = state["rng"]
        return part

    def _load_weights(self, part: dict) -> None:
        net, decoders = self.model.net, self.model.decoders
        for name in self.groups[self.stage]:
            prefix = name + "."
            getattr(net, name).load_state_dict({k[len(prefix):]: v for k, v in part["model"].items()
                                                if k.startswith(prefix)})
        if self.has_decoder:
            prefix = self.label + "."
            decoders[self.label].load_state_dict({k[len(prefix):]: v for k, v in part["decoders"].items()
                                                  if k.startswith(prefix)})

    def _load_training_state(self, part: dict) -> None:
        own = self.optimizer.state_dict()
        saved = part["optimizer"]
        self.optimizer.load_state_dict({
            "state": {i: saved[name] for i, name in enumerate(self.param_names) if name in saved},
            "param_groups": own["param_groups"]})
        self.scheduler.load_state_dict({"last_step": part["scheduler"]["last_step"],
                                        "base_lrs": self.scheduler.base_lrs})
        self.step = part["step"]
        if "rng" in part:  # a first stage: the RNGs, as Runner.restore
            set_rng_state(part["rng"], self.aug_generator)

    # -- checkpoints -------------------------------------------------------------------------------
    def _part(self) -> dict:
        """This rank's share of a checkpoint: its stage and decoder state dicts and its
        optimizer state by parameter name (on the CPU)."""
        part = self._part_from_model(self.stage)
        states = self.optimizer.state
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        part["optimizer"] = {name: to_cpu(states[p]) for name, p in zip(self.param_names, params) if p in states}
        return part

    def state(self, parts: list[dict] | None = None) -> dict:
        """The single-process checkpoint, assembled on rank 0 from every rank's part."""
        merged, decs, opt = {}, {}, {}
        for part in parts:
            merged.update(part["model"])
            decs.update(part["decoders"])
            for name, s in part["optimizer"].items():
                opt[self.full_index[name]] = s
        merged.update({f"head.{k}": to_cpu(v) for k, v in self.model.net.head.state_dict().items()})
        lr = self.optimizer.param_groups[0]["lr"]
        return self.checkpoint({k: merged[k] for k in self.model_keys}, {k: decs[k] for k in self.decoder_keys},
                               {"state": dict(sorted(opt.items())),
                                "param_groups": [{**g, "lr": lr} for g in self.full_param_groups]},
                               {"last_step": self.scheduler.last_step, "base_lrs": list(self.full_base_lrs)})

    def save(self) -> Path | None:
        """Collective: every rank's part to rank 0 (one at a time), which writes the checkpoint
        atomically."""
        path = None
        if self.rank != 0 and self.replica == 0:
            self._send_object(self._part(), 0)
        elif self.rank == 0:
            parts = [self._part()] + [self._recv_object(r) for r in range(1, self.stages)]
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

