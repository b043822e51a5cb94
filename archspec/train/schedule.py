"""The two schedules of one process per local stage: ``sync`` and ``pipelined``.

**sync** (:meth:`Schedules.sync_step`): one batch in flight. Rank k receives x_k, runs its
stage, sends y_k (detached) on before its own backward, and (SimCLR, LoCo) waits for the
gradient rank k+1 sends back; every step ends with an all-reduce of the losses and the stop
flags. One step equals one step of the single-process runner bitwise.

**pipelined** (:meth:`Schedules.run_pipelined`, GIM and LoCo): rank k works on batch t-k while
rank k+1 works on batch t-k-1; nothing waits for a step to end.

- gim: rank k sends y_k and back-propagates its own loss; no message goes down. Each stage
  computes batch n with the weights it has after n updates: exactly the sync arithmetic.
- loco: rank k computes a_k and b_k = J_k^T a_k for batch n and sends b_k down at once. The
  update of batch n needs b_{k+1}(n) from rank k+1, which arrives while rank k already
  computes batch n+1: so rank k computes batch n+1 first, then applies the update of batch n
  (its graph kept one batch longer, on a snapshot of the weights it was computed with). Every
  stage but the last computes with weights one update old (archspec.train.stale defines the
  arithmetic, and the single-process runner reproduces it for the tests).
- the losses and the stop requests travel *up* the pipeline as small control messages
  (rank k+1 -> rank k, on a gloo group of their own) with a lag of two batches per rank;
  that lag is also the flow control: rank k runs at most two batches ahead of rank k+1.
- rank 0 decides where a *segment* ends (a checkpoint step, the last step, a Ctrl-C, a NaN)
  and sends an end marker down instead of the next batch; every rank then drains (applies
  its pending update, forwards the outstanding losses), and one all-reduce says whether the
  run goes on. Checkpoints are taken on the drained pipeline, in the single-process format.

Both compose the method's per-stage primitives (archspec.train.methods: the arithmetic) and
add the messages; nothing here depends on which method it is, only on its traits.
"""
from __future__ import annotations

import time
from collections import deque

import torch
import torch.distributed as dist

from archspec.train.transport import Outbox, injected_fault

# Rank 0's decision at the end of a segment (the first entry of the all-reduced vector).
CHECKPOINT, DONE, INTERRUPTED, NOT_FINITE = 0, 1, 2, 3
LAG = 2  # batches a rank runs ahead of the next one at most (and the lag of the loss messages per rank)


class Schedules:
    """A mixin of :class:`archspec.train.stage_runner.StageRunner`."""

    # -- sync -------------------------------------------------------------------------------------
    def sync_step(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Forward and backward of this rank's stage for one batch (``x``: both views, on rank
        0); fills ``.grad`` of this rank's parameters and returns its loss (None without a
        decoder). The arithmetic is the single-process method's, split at the stage borders."""
        k, last, m = self.stage, self.stages - 1, self.method
        inp = x if k == 0 else self._recv((self.shard_rows, *self.io_shapes[k][0]), self.peer(k - 1))
        inp = m.stage_input(k, inp)
        y = m.run_group(k, inp)
        self._check_shape(y)
        sends = [dist.isend(y.detach().contiguous(), dst=self.peer(k + 1))] if k < last else []
        loss, a = m.stage_loss(k, y)
        down = m.grad_down_early(k, inp, y, a)
        if down is not None:
            sends.append(dist.isend(down.contiguous(), dst=self.peer(k - 1)))
        above = self._recv(y.shape, self.peer(k + 1)) if m.waits(k) else None
        down = m.stage_backward(k, inp, y, a, above, self.stage_params)
        if down is not None:
            sends.append(dist.isend(down.contiguous(), dst=self.peer(k - 1)))
        for work in sends:
            work.wait()
        return None if loss is None else loss.detach()

    def _check_shape(self, y: torch.Tensor) -> None:
        expected = (self.shard_rows, *self.io_shapes[self.stage][1])
        if tuple(y.shape) != expected:
            raise RuntimeError(f"local stage {self.label} gave {tuple(y.shape)}, the spec says {expected}")

    # -- pipelined: one batch on this rank ----------------------------------------------------------
    def _snapshot(self):
        """Copies of this stage's and decoder's parameters by module, for a batch whose update
        comes one batch late (the optimizer changes the originals in place meanwhile)."""
        copy = lambda m: {n: p.detach().clone().requires_grad_(p.requires_grad)  # noqa: E731
                          for n, p in m.named_parameters()}
        net = self.model.net
        stage = {name: copy(getattr(net, name)) for name in self.groups[self.stage]}
        decoder = copy(self.model.decoders[self.label]) if self.has_decoder else None
        return stage, decoder

    def _pipelined_batch(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's work on one batch; returns its loss (detached). Applies this batch's update at once
        (a stage that waits for nothing from above) or keeps it pending until the next batch."""
        k, last, m = self.stage, self.stages - 1, self.method
        snap = self._snapshot() if self.delay else None
        inp = m.stage_input(k, x)
        y = m.run_group(k, inp, None if snap is None else snap[0])
        self._check_shape(y)
        if k < last:
            self.activations_out.send(y.detach())
        loss, a = m.stage_loss(k, y, params=None if snap is None else snap[1])
        down = m.grad_down_early(k, inp, y, a)  # goes down at once
        if down is not None:
            self.gradients_out.send(down)
        if not m.waits(k):
            down = m.stage_backward(k, inp, y, a, None, self.stage_params)
            if down is not None:
                self.gradients_out.send(down)
            self._update()
            return loss.detach()
        self._finish_pending()
        self.pending = (inp, y, a, snap)
        return loss.detach()

    def _finish_pending(self) -> None:
        """The update of the previous batch, once rank k+1's gradient for it is here (its graph
        and gradients are on the snapshot's copies of the weights)."""
        if self.pending is None:
            return
        inp, y, a, (stage, decoder) = self.pending
        self.pending = None
        above = self._recv(y.shape, self.peer(self.stage + 1))
        copies = [p for name in self.groups[self.stage] for p in stage[name].values() if p.requires_grad]
        self.method.stage_backward(self.stage, inp, y, a, above, copies)
        for p, c in zip(self.stage_params, copies):
            p.grad = c.grad
        for p, c in zip(self.decoder_params, decoder.values()):
            p.grad = c.grad
        self._update()

    def _update(self) -> None:
        self.update_lr[self.step] = self.optimizer.param_groups[0]["lr"]
        self.reduce_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        injected_fault(self.rank, self.step)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    # -- pipelined: a segment ---------------------------------------------------------------------
    def run_segment(self, decide, on_losses) -> int:
        """Every rank: run batches until rank 0 sends the end marker, then drain. ``decide(b)``
        (rank 0) gives the images of batch b or an end code; ``on_losses(step, values, lr,
        seconds)`` (rank 0) gets every step's losses when they have all come up. Returns rank
        0's end code, known to every rank."""
        k, last = self.stage, self.stages - 1
        width = self.stages + 1  # the losses of every stage, then a stop request
        header = torch.zeros(1, dtype=torch.int64)
        controls: deque = deque()  # (step, receive work, buffer) from rank k+1, oldest first
        own: dict[int, float] = {}
        code, seconds = CHECKPOINT, {}
        t_last = time.perf_counter()
        b = self.step
        while True:
            if k == 0:
                work = decide(b)
                if isinstance(work, int):
                    code = work
                    header[0] = -1
                else:
                    header[0] = b
                    x = work
            else:
                dist.recv(header, src=self.peer(k - 1), group=self.control_group)
                b = int(header[0])
            if k < last:
                self.headers_out.send(header.clone())
            if header[0] < 0:
                break
            if k > 0:
                x = self._recv((self.shard_rows, *self.io_shapes[k][0]), self.peer(k - 1))
            own[b] = self._pipelined_batch(x)
            now = time.perf_counter()
            if k == 0:
                seconds[b] = now - t_last - self.fetch_s
            t_last = now
            if k < last:  # the losses of stages k+1.. for this batch, later
                buffer = torch.zeros(width, dtype=torch.float64)
                controls.append((b, dist.irecv(buffer, src=self.peer(k + 1), group=self.control_group), buffer))
            else:
                self._pass_up(b, torch.zeros(width, dtype=torch.float64), own, on_losses, seconds)
            while controls and controls[0][0] <= b - LAG:
                step, work, buffer = controls.popleft()
                work.wait()
                self._pass_up(step, buffer, own, on_losses, seconds)
            b += 1
        self._finish_pending()
        while controls:
            step, work, buffer = controls.popleft()
            work.wait()
            self._pass_up(step, buffer, own, on_losses, seconds)
        for box in (self.activations_out, self.gradients_out, self.headers_out, self.controls_out):
            if box is not None:
                box.flush()
        flags = torch.tensor([float(code if self.rank == 0 else 0)], dtype=torch.float64)  # the replicas agree
        dist.all_reduce(flags, group=self.control_group)
        return int(flags[0])

    def _pass_up(self, step: int, buffer: torch.Tensor, own: dict, on_losses, seconds: dict) -> None:
        """Add this rank's loss (and stop request) for ``step`` to the losses from above; send
        them to rank k-1, or (rank 0) hand them over."""
        buffer[self.stage] = own.pop(step)
        buffer[-1] = max(float(buffer[-1]), float(self.stop_requested()))
        if self.stage > 0:
            self.controls_out.send(buffer)
        else:
            on_losses(step, buffer.tolist(), self.update_lr.pop(step), seconds.pop(step))


def pipelined_outboxes(runner) -> None:
    """The bounded send queues of a pipelined rank (see :class:`archspec.train.transport.Outbox`)."""
    k, last = runner.stage, runner.stages - 1
    up, down = runner.peer(k + 1), runner.peer(k - 1)
    runner.activations_out = Outbox(up, LAG) if k < last else None
    runner.gradients_out = Outbox(down, LAG) if k > 0 else None
    runner.headers_out = Outbox(up, LAG + 1, group=runner.control_group) if k < last else None
    runner.controls_out = Outbox(down, LAG + 1, group=runner.control_group) if k > 0 else None

