"""Optimizers (LARS as in SimCLR, SGD, Adam) and the per-step warm-up + cosine schedule."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum, as SimCLR's ``LARSOptimizer``.

    Per parameter tensor ``w`` with gradient ``g``::

        g      <- g + weight_decay * w
        trust  =  eta * ||w|| / ||g||   (1 where either norm is 0, or the group has adapt=False)
        v      <- momentum * v + lr * trust * g
        w      <- w - v

    Param groups carry ``adapt`` (layer adaptation on/off) and their own ``weight_decay``;
    :func:`param_groups` puts batch-norm parameters and biases in a group with neither.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, adapt: bool = True):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS: lr, momentum and weight_decay must be >= 0, trust_coefficient > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                if group["adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g, alpha=lr)
                p.sub_(buf)
        return loss


def param_groups(modules: Iterable[nn.Module], weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    """Trainable parameters of ``modules`` in one or two groups. With ``exclude_bn_bias``,
    1-d tensors (batch-norm scales and shifts, biases) get no weight decay and no LARS
    adaptation (``adapt=False``), as in SimCLR."""
    regular, excluded, seen = [], [], set()
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (excluded if exclude_bn_bias and p.ndim <= 1 else regular).append(p)
    groups = [{"params": regular, "weight_decay": weight_decay, "adapt": True}]
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "adapt": False})
    return [g for g in groups if g["params"]]


def build_optimizer(name: str, groups: list[dict], *, lr: float, momentum: float = 0.9,
                    trust_coefficient: float = 0.001, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """``lars`` | ``sgd`` | ``adam`` over ``groups`` from :func:`param_groups` (weight decay
    per group; for SGD and Adam it is L2 added to the gradient, as in LARS)."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    plain = [{k: v for k, v in g.items() if k != "adapt"} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(plain, lr=lr, betas=tuple(betas))
    raise ValueError(f"unknown optimizer {name!r}")


class WarmupCosine:
    """Per-step learning rate: linear warm-up to the base rate, then cosine decay.

    Step ``s`` (0-based, the step about to run) uses ``base * f(s)`` with
    ``f(s) = (s + 1) / warmup`` for ``s < warmup``, then
    ``final + (1 - final) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2``
    (``decay='none'``: 1 after warm-up). Call :meth:`step` after each optimizer step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 decay: str = "cosine", final_ratio: float = 0.0):
        if decay not in ("cosine", "none"):
            raise ValueError(f"unknown decay {decay!r}")
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.decay = decay
        self.final_ratio = float(final_ratio)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "none":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()
