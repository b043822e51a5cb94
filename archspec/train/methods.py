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

Each method is defined once, per local stage k, by primitives that the single-process step
(:meth:`Method.step`), the sync and the pipelined schedule of one process per local stage
(archspec.train.schedule, which only adds the messages) compose:

    stage_input(k, x)              its input, cut from the stage below; a leaf that keeps its
                                   gradient where stage k sends one down (needs_input_grad)
    run_group(k, x, params)        its forward (params: a snapshot of its weights)
    stage_loss(k, y)               its loss (None without a decoder) and the gradient it leaves
                                   at y_k: LoCo a_k; SimCLR and GIM back-propagate it through
    grad_down_early(k, inp, y, a)  the gradient it sends down before the one from above
                                   arrives: LoCo b_k (middle stages)
    stage_backward(k, inp, y, a, above, params)
                                   its weights' backward given the gradient from above (waits)
                                   and the gradient it sends down now: SimCLR J_k^T above;
                                   LoCo's last stage b_k
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

    The primitives below are GIM's; SimCLR and LoCo override what differs.
    """

    name = "?"
    sends_down = False  # a stage above the first sends the gradient at its input down
    sends_early = False  # ... and it is the stage's own loss's alone, sent before the one from above arrives

    def __init__(self, net: StagedNet, decoders: nn.ModuleDict, temperature: float = 0.1):
        self.net = net
        self.decoders = decoders
        self.temperature = temperature
        self.groups = local_stages(net.spec)
        self.labels = [ls.label for ls in net.spec.local_stages]
        self.contrast = nt_xent  # data parallel: the loss over every replica's rows (archspec.train.replicas)
        self.precision = FULL  # mixed precision: autocast and the stage borders (archspec.train.precision)
        self.loss_scale = 1.0  # float16: every loss is multiplied by it before its backward

    # -- traits ------------------------------------------------------------------------------------
    def needs_input_grad(self, k: int) -> bool:
        """Stage k sends the gradient at its input down, so its input keeps one."""
        return self.sends_down and k > 0

    def waits(self, k: int) -> bool:
        """Stage k's weights need the gradient that stage k+1 sends down."""
        return self.sends_down and k < len(self.groups) - 1

    def group_params(self, k: int) -> list[torch.Tensor]:
        return [p for name in self.groups[k] for p in getattr(self.net, name).parameters() if p.requires_grad]

    # -- the primitives of one local stage --------------------------------------------------------
    def stage_input(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return x.detach().requires_grad_(self.needs_input_grad(k))

    def run_group(self, k: int, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """Stage k's forward; ``params``: its parameters by module and name to use instead of
        its own (the pipelined schedule's snapshot of a delayed stage, archspec.train.schedule)."""
        with self.precision.autocast():
            for name in self.groups[k]:
                module = getattr(self.net, name)
                x = module(x) if params is None else torch.func.functional_call(module, params[name], (x,))
        return self.precision.border(x)

    def loss(self, label: str, y: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """Decoder ``label``'s contrastive loss on ``y`` (both views); ``params`` as in run_group."""
        decoder = self.decoders[label]
        with self.precision.autocast():
            z = decoder(y) if params is None else torch.func.functional_call(decoder, params, (y,))
            z1, z2 = z.chunk(2)
            return self.contrast(z1, z2, self.temperature)

    def _backward(self, loss: torch.Tensor, weight: float | None) -> None:
        """``weight``: the single-process step's loss weight (times the loss scale); the per-stage
        runners pass none (no weights, and float16's loss scale is refused there)."""
        (loss if weight is None else loss * (weight * self.loss_scale)).backward()

    def stage_loss(self, k: int, y: torch.Tensor, weight: float | None = None,
                   params: dict | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Stage k's loss (None without a decoder) and the gradient it leaves at y_k: none here,
        the loss is back-propagated through the stage (and whatever graph lies below y_k)."""
        label = self.labels[k]
        if label not in self.decoders:
            return None, None
        loss = self.loss(label, y, params)
        self._backward(loss, weight)
        return loss, None

    def grad_down_early(self, k: int, inp: torch.Tensor, y: torch.Tensor,
                        a: torch.Tensor | None) -> torch.Tensor | None:
        """The gradient stage k sends down before the one from above arrives."""
        return None

    def stage_backward(self, k: int, inp: torch.Tensor, y: torch.Tensor, a: torch.Tensor | None,
                       above: torch.Tensor | None, params: list[torch.Tensor]) -> torch.Tensor | None:
        """Stage k's weights' backward given ``above``, the gradient from stage k+1 at y_k (None
        where stage k does not wait for one); fills ``.grad`` of ``params`` (stage k's parameters
        or the pipelined schedule's copies of them) and returns the gradient it sends down now."""
        return None

    # -- one process -------------------------------------------------------------------------------
    def step(self, view1: torch.Tensor, view2: torch.Tensor,
             weights: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Forward and backward for one batch of two views ([B, C, H, W] each, one forward
        of 2B images so batch norm sees both)."""
        return self._step(torch.cat([view1, view2]), dict(weights or {}))

    def _step(self, x, weights):
        """Stage after stage; a waiting stage's backward runs once the stage above has computed
        what it sends down (early, or in its own backward), so at most two graphs are alive."""
        losses, below = {}, None  # below: (inp, y, a) of stage k-1 while it waits
        for k, label in enumerate(self.labels):
            inp = self.stage_input(k, x)
            x = y = self.run_group(k, inp)
            if not self.sends_down:
                inp = None  # GIM: no reference the graph does not hold (step_memory profiles this step)
            loss, a = self.stage_loss(k, y, weights.get(label, 1.0))
            if loss is not None:
                losses[label] = loss.detach()
            if self.waits(k):
                down = self.grad_down_early(k, inp, y, a)
            else:
                down = self.stage_backward(k, inp, y, a, None, self.group_params(k))
            if below is not None:
                self.stage_backward(k - 1, *below, down, self.group_params(k - 1))
            below = (inp, y, a) if self.waits(k) else None
        return losses


class SimCLR(Method):
    """One loss, on the last stage; a stage sends down J_k^T of the gradient from above."""

    name = "simclr"
    sends_down = True

    def stage_backward(self, k, inp, y, a, above, params):
        """(SimCLR is never delayed: the backward fills the stage's own parameters.)"""
        if above is not None:
            torch.autograd.backward(y, above)  # into the weights and the input
        return inp.grad if k > 0 else None

    def _step(self, x, weights):
        """In one process the stages stay one graph: autograd carries J_k^T of the gradient
        from above down, as stage_backward does at a border between processes."""
        for k in range(len(self.groups)):
            x = self.run_group(k, x)
        label = self.labels[-1]
        loss, _ = self.stage_loss(len(self.groups) - 1, x, weights.get(label, 1.0))
        return {label: loss.detach()}


class GIM(Method):
    """A loss on every stage, back-propagated through that stage alone; nothing goes down."""

    name = "gim"


class LoCo(Method):
    """A loss on every stage; stage k's weights get a_k + b_{k+1}, stage k-1 gets b_k alone."""

    name = "loco"
    sends_down = sends_early = True

    def stage_loss(self, k, y, weight=None, params=None):
        """Decoder k on a detached leaf: its backward stops at y_k and leaves a_k there."""
        y_leaf = y.detach().requires_grad_(True)
        loss = self.loss(self.labels[k], y_leaf, params)
        self._backward(loss, weight)
        return loss, y_leaf.grad

    def grad_down_early(self, k, inp, y, a):
        """b_k = J_k^T a_k through stage k alone (a middle stage; the last sends it from its
        backward, the first has nothing below)."""
        if not 0 < k < len(self.groups) - 1:
            return None
        (b,) = torch.autograd.grad(y, inp, a, retain_graph=True)
        return b

    def stage_backward(self, k, inp, y, a, above, params):
        if above is None:  # the last stage: its weights and its input gradient in one pass
            torch.autograd.backward(y, a, inputs=params + ([inp] if k > 0 else []))
            return inp.grad if k > 0 else None
        # Its own unit's gradient plus unit k+1's; b_k went down already, so the pass ends at its weights.
        torch.autograd.backward(y, a + above, inputs=params)
        return None


def build_method(name: str, net: StagedNet, decoders: nn.ModuleDict, temperature: float = 0.1) -> Method:
    classes = {"simclr": SimCLR, "gim": GIM, "loco": LoCo}
    if name not in classes:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return classes[name](net, decoders, temperature)


def trainable_modules(net: StagedNet, decoders: nn.ModuleDict) -> list[nn.Module]:
    """What the optimizer updates: every stage and the decoders (the head's classifier is
    not trained by contrastive learning and stays out, as in the memory model)."""
    return [getattr(net, name) for name in net.stage_names] + [decoders]
