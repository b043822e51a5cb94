"""What the pipelined schedule changes in the arithmetic, and that arithmetic in one process.

In the pipelined schedule (docs/training.md, archspec.train.schedule) rank k works on batch
t-k while rank k+1 works on batch t-k-1. Each local stage k has a *delay* d_k: the number of
updates its weights lag behind the synchronous schedule when it computes a batch.

- **gim**: d_k = 0 for every stage. A stage needs nothing from the stages above it, so it
  computes batch n with the weights it has after n updates, exactly as the sync runner: the
  pipelined GIM run equals the single-process GIM run.
- **loco**: d_k = 1 for every local stage but the last, d = 0 for the last. Stage k's update for
  batch n needs b_{k+1}, the gradient of unit k+1's loss at stage k's output, which rank k+1
  computes one tick later. Rank k does not wait for it: it computes batch n+1 first (with the
  weights before the update of batch n), then applies the update of batch n. So stage k (and
  its decoder) computes batch n - forward, loss and both backward passes - with the weights
  it had *one update ago* (after n-1 updates), and the update is applied one batch late to the
  current weights: ``W_{n+1} = W_n - step(g_n(W_{n-1}))``, a one-step-delayed gradient. The
  last stage has nothing above it and stays exact.
- The delay restarts at every *segment*: the first step of a run, of a resumed run and after
  every checkpoint (``checkpoint_every``) is computed with the current weights, because the
  pipeline drains there so that a checkpoint holds one consistent state.

:class:`StaleWeights` applies the same delays around a :class:`~archspec.train.methods.Method`
in one process; with ``pipeline: pipelined`` the single-process runner uses it, so it is the
reference the pipelined runs are tested against (bitwise on the CPU) and a pipelined run
resumes in either runner.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from archspec.train.methods import Method


def stage_delays(method: str, stages: int, pipeline: str) -> list[int]:
    """d_k per local stage: how many updates stage k's weights lag when it computes a batch."""
    if pipeline == "sync" or method == "gim":
        return [0] * stages
    if method == "loco":
        return [1] * (stages - 1) + [0]
    raise ValueError(f"{method} has no pipelined schedule")


def is_segment_start(step: int, start: int, checkpoint_every: int) -> bool:
    """True where the pipeline starts full of fresh weights: a run's (or resume's) first step
    and every checkpoint step."""
    return step == start or step % checkpoint_every == 0


class StaleWeights:
    """Run ``method.step`` with every delayed stage's (and its decoder's) parameters set to their
    values before the previous update; the gradients stay in ``.grad`` of the current
    parameters, which the optimizer then updates. Batch-norm buffers are not swapped: the
    pipelined ranks update them in batch order, as here."""

    def __init__(self, method: Method, delays: list[int]):
        self.method = method
        self.params: list[torch.Tensor] = []
        for k, (label, delay) in enumerate(zip(method.labels, delays)):
            if delay:
                self.params += [p for name in method.groups[k] for p in getattr(method.net, name).parameters()
                                if p.requires_grad]
                if label in method.decoders:
                    self.params += [p for p in method.decoders[label].parameters() if p.requires_grad]
        self.previous: list[torch.Tensor] | None = None

    def reset(self) -> None:
        """A segment starts: the next step uses the current weights."""
        self.previous = None

    def step(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.params:
            return self.method.step(view1, view2)
        current = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            if self.previous is not None:
                for p, old in zip(self.params, self.previous):
                    p.copy_(old)
        losses = self.method.step(view1, view2)
        with torch.no_grad():
            for p, now in zip(self.params, current):
                p.copy_(now)
        self.previous = current
        return losses
