"""The config's ``dtype``: full precision, or mixed precision with autocast and a loss scale.

- ``float32``, ``float64``: weights, activations and gradients in that type.
- ``bfloat16``, ``float16``: mixed precision. Weights, gradients and optimizer state stay
  float32; the forward passes (every local stage, decoder and loss) run under
  ``torch.autocast`` in the 16-bit type, and every local stage's output is cast to it at the
  stage border - where the next stage's first convolution would cast it anyway - so one
  process and one process per stage (which sends it in 16 bits) compute the same thing.
  float16's 5 exponent bits underflow small gradients: its losses are multiplied by a dynamic
  :class:`LossScale` before the backward, and steps whose gradients overflow are skipped.
  bfloat16 has float32's range and needs no scale.

The backward passes run outside autocast (as PyTorch recommends); autograd gives each
gradient the type of its forward value.
"""
from __future__ import annotations

import contextlib
import math

import torch

MIXED = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def weight_dtype(name: str) -> torch.dtype:
    """The type of the weights (and of the images fed to the first stage)."""
    return torch.float32 if name in MIXED else getattr(torch, name)


class Precision:
    """``autocast()`` around forward passes and ``border(y)`` at each local stage's output."""

    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.compute = MIXED.get(name)
        self.device_type = torch.device(device).type

    @property
    def mixed(self) -> bool:
        return self.compute is not None

    def autocast(self):
        if self.compute is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)

    def border(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.compute is None else y.to(self.compute)


FULL = Precision("float32", torch.device("cpu"))


class LossScale:
    """A dynamic loss scale (as torch.amp.GradScaler: start at 2^16, halve at an overflow and
    skip that step, double after ``growth_interval`` good steps), for float16. The scale is a
    plain float that multiplies each loss before its backward; :meth:`unscale` divides the
    gradients by it and says whether the step may be taken. Data-parallel replicas call it
    after summing their gradients, so they see the same overflow and keep the same scale."""

    def __init__(self, scale: float = 2.0 ** 16, growth_interval: int = 2000):
        self.scale, self.growth_interval, self.good_steps = scale, growth_interval, 0

    def unscale(self, params) -> bool:
        grads = [p.grad for p in params if p.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if finite:
            for g in grads:
                g.mul_(1.0 / self.scale)
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale *= 2.0
        else:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
        return finite

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        if not math.isfinite(self.scale):
            raise ValueError("loss scale is not finite")
