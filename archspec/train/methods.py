"""Where the contrastive losses sit and where gradients stop: SimCLR, GIM and LoCo.

All three train the same StagedNet. Its stages are grouped into *local stages* by
:func:`archspec.profiling.memory.local_stages` (the stem joins the first residual stage), and
every decoder, loss and log entry is keyed by the local stage's label: its stage names joined
by ``+`` (``conv1+res2``, ``res3``, ...), the labels the profiler uses too.

- **simclr**: one decoder on the last local stage; one loss; gradients flow end to end.
- **gim**: a decoder after every local stage; each local stage runs on a detached input, so
  stage k's weights get gradient from loss k only.
- **loco**: a decoder after every local stage; unit k is local stages k-1 and k (unit 0 is
  local stage 0 alone). Unit k's loss back-propagates through stage k and stage k-1 and stops
  at stage k-1's input, so stage k gets gradient from units k and k+1 and from nothing above.

LoCo computes each stage's forward once per step: stage k runs on a detached copy of stage
k-1's output. Its backward is split in two because stage k's *weights* want the sum of both
units' gradients at its output, while the gradient it passes *down* must be unit k's alone:

    a_k = dL_k/dy_k                      (decoder k's backward, at stage k's output y_k)
    b_k = J_k^T a_k                      (input-gradient-only pass through stage k, k >= 1)
    stage k's weights <- backward of y_k with a_k + b_{k+1}   (frees stage k's graph)

Only the middle stages run two backward passes; the last stage does both in one. At most two
stages' graphs are alive at once, as in the memory model of archspec.profiling.memory.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from archspec.nn.compiler import StagedNet
from archspec.nn.decoders import Decoder, DecoderConfig
from archspec.profiling.memory import local_stages
from archspec.train.losses import nt_xent
from archspec.train.precision import FULL

METHODS = ("simclr", "gim", "loco")


def decoder_labels(spec, method: str) -> list[str]:
    """Labels of the local stages that carry a decoder under ``method`` (Spec.local_stages)."""
    labels = [ls.label for ls in spec.local_stages]
    return labels[-1:] if method == "simclr" else labels


def build_decoders(net: StagedNet, method: str, config: DecoderConfig = DecoderConfig()) -> nn.ModuleDict:
    """One :class:`Decoder` per local stage that has a loss under ``method``."""
    spec = net.spec
    channels = {ls.label: spec.stage(ls.last).out_channels for ls in spec.local_stages}
    device = next(net.parameters()).device
    return nn.ModuleDict({label: Decoder(channels[label], config) for label in decoder_labels(spec, method)}).to(device)


class Method:
    """One training step's forward and backward for a method: :meth:`step` fills ``.grad``
    of the encoder and decoder parameters (the optimizer step is the caller's) and returns
    the detached losses by local-stage label.

    ``weights`` scales each local loss (default 1); a weight of 0 removes that loss's
    gradient exactly, which is how the tests check where gradients stop.
    """

    name = "?"

    def __init__(self, net: StagedNet, decoders: nn.ModuleDict, temperature: float = 0.1):
        self.net = net
        self.decoders = decoders
        self.temperature = temperature
        self.groups = local_stages(net.spec)
        self.labels = [ls.label for ls in net.spec.local_stages]
        self.contrast = nt_xent  # data parallel: the loss over every replica's rows (archspec.train.replicas)
        self.precision = FULL  # mixed precision: autocast and the stage borders (archspec.train.precision)
        self.loss_scale = 1.0  # float16: every loss is multiplied by it before its backward

    def run_group(self, k: int, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            for name in self.groups[k]:
                x = getattr(self.net, name)(x)
        return self.precision.border(x)

    def loss(self, label: str, y: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """Decoder ``label``'s contrastive loss on ``y`` (both views); ``params``: the
        decoder's parameters by name to use instead of its own (the pipelined schedule's
        snapshot of a delayed stage, archspec.train.schedule)."""
        decoder = self.decoders[label]
        with self.precision.autocast():
            z = decoder(y) if params is None else torch.func.functional_call(decoder, params, (y,))
            z1, z2 = z.chunk(2)
            return self.contrast(z1, z2, self.temperature)

    def step(self, view1: torch.Tensor, view2: torch.Tensor,
             weights: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Forward and backward for one batch of two views ([B, C, H, W] each, one forward
        of 2B images so batch norm sees both)."""
        return self._step(torch.cat([view1, view2]), dict(weights or {}))

    def _step(self, x, weights):  # pragma: no cover - abstract
        raise NotImplementedError


class SimCLR(Method):
    name = "simclr"

    def _step(self, x, weights):
        for k in range(len(self.groups)):
            x = self.run_group(k, x)
        label = self.labels[-1]
        loss = self.loss(label, x)
        (loss * (weights.get(label, 1.0) * self.loss_scale)).backward()
        return {label: loss.detach()}


class GIM(Method):
    name = "gim"

    def _step(self, x, weights):
        losses = {}
        for k, label in enumerate(self.labels):
            x = self.run_group(k, x.detach())
            loss = self.loss(label, x)
            (loss * (weights.get(label, 1.0) * self.loss_scale)).backward()  # frees local stage k's graph
            losses[label] = loss.detach()
        return losses


class LoCo(Method):
    name = "loco"

    def group_params(self, k: int) -> list[torch.Tensor]:
        return [p for name in self.groups[k] for p in getattr(self.net, name).parameters() if p.requires_grad]

    def _step(self, x, weights):
        losses = {}
        last = len(self.groups) - 1
        prev_y = prev_a = None  # stage k-1's output and its own loss's gradient there
        for k, label in enumerate(self.labels):
            inp = x.detach().requires_grad_(k > 0)
            y = self.run_group(k, inp)
            # Decoder k on a detached leaf: its backward stops at y_k and leaves a_k there.
            y_leaf = y.detach().requires_grad_(True)
            loss = self.loss(label, y_leaf)
            (loss * (weights.get(label, 1.0) * self.loss_scale)).backward()
            losses[label] = loss.detach()
            a = y_leaf.grad
            params = self.group_params(k)
            if k == last:
                # Nothing above the last stage: its weights and its input gradient in one pass.
                wanted = params + ([inp] if k > 0 else [])
                torch.autograd.backward(y, a, inputs=wanted)
                b = inp.grad if k > 0 else None
            elif k > 0:
                # Unit k's gradient for stage k-1's output, through stage k alone.
                (b,) = torch.autograd.grad(y, inp, a, retain_graph=True)
            if k > 0:
                # Stage k-1: its own unit's gradient plus unit k's; its input gradient is not
                # wanted (it went down with unit k-1), so the pass ends at its weights.
                torch.autograd.backward(prev_y, prev_a + b, inputs=self.group_params(k - 1))
            prev_y, prev_a, x = y, a, y
        return losses


def build_method(name: str, net: StagedNet, decoders: nn.ModuleDict, temperature: float = 0.1) -> Method:
    classes = {"simclr": SimCLR, "gim": GIM, "loco": LoCo}
    if name not in classes:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return classes[name](net, decoders, temperature)


def trainable_modules(net: StagedNet, decoders: nn.ModuleDict) -> list[nn.Module]:
    """What the optimizer updates: every stage and the decoders (the head's classifier is
    not trained by contrastive learning and stays out, as in the memory model)."""
    return [getattr(net, name) for name in net.stage_names] + [decoders]
