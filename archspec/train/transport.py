"""Messages between the ranks of one process per local stage (torch.distributed).

Everything the ranks send each other goes through :class:`Messages`: python objects (a
checkpoint's parts, the setup's result) as ``torch.save`` bytes, activation and gradient
tensors whose shapes both sides know from the spec, and :class:`Outbox`, the bounded queue of
non-blocking sends that lets a pipelined rank run ahead of its neighbour by a fixed number of
batches, never more (so its memory stays bounded). A lost peer is turned into one line by
:func:`peer_failure`.
"""
from __future__ import annotations

import io
import os
from collections import deque

import torch
import torch.distributed as dist

from archspec.errors import UserError


def raise_shared_error(info: dict) -> None:
    """Every rank raises the error rank 0 found and broadcast in ``info`` (``error``, ``exit_code``), so
    that all of them stop with the same one line."""
    if info.get("error") is not None:
        err = UserError(info["error"])
        err.exit_code = info["exit_code"]
        raise err


def default_timeout_s() -> float:
    """Seconds a rank waits for a message or a collective before it fails: 600, or
    $ARCHSPEC_DIST_TIMEOUT. A peer that dies closes its sockets and is noticed at once; this
    bounds the wait for one that hangs (torch's own default is 30 minutes)."""
    return float(os.environ.get("ARCHSPEC_DIST_TIMEOUT", 600))


def injected_fault(rank: int, step: int) -> None:
    """For the tests of a rank that fails: $ARCHSPEC_TEST_KILL="RANK:STEP" kills rank RANK with
    SIGKILL after its update of step STEP, as a crash or the OOM killer would; "RANK:STEP:bug"
    raises a RuntimeError there instead, as a bug in the code would."""
    setting = os.environ.get("ARCHSPEC_TEST_KILL", "")
    if setting == f"{rank}:{step}:bug":
        raise RuntimeError(f"injected bug on rank {rank} at step {step}")
    if setting == f"{rank}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def to_cpu(value):
    """Tensors (also inside dicts) detached and on the CPU, for checkpoints."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value


def peer_failure(exc: BaseException, rank: int, label: str) -> UserError | None:
    """The one-line error of a rank whose peer died or hung (gloo, NCCL), else None."""
    text = str(exc)
    markers = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe",
               "NCCL communicator was aborted", "Socket Timeout", "Connection refused")
    if not isinstance(exc, RuntimeError) or not any(m in text for m in markers):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    err = UserError(f"rank {rank} ({label}) lost contact with another rank: {first[-160:]} (hint: another "
                    f"rank died or hung; its own error is the first one reported)")
    err.exit_code = 1
    err.secondary = True  # the cause is elsewhere: prefer a rank's own error when reporting
    return err


class Messages:
    """Point-to-point and broadcast messages of one rank; needs ``self.device`` and
    ``self.wire_dtype`` (the type of the activations and gradients sent)."""

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

    def _recv(self, shape, src: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=dtype or self.wire_dtype, device=self.device)
        dist.recv(buffer, src=src)
        return buffer


class Outbox:
    """Non-blocking sends to one peer, at most ``depth`` in flight: a new send first waits for
    the oldest, so the sender runs at most ``depth`` messages ahead of the receiver and keeps
    at most ``depth`` of them alive (isend needs its tensor until the send completes)."""

    def __init__(self, dst: int, depth: int, group=None):
        self.dst, self.depth, self.group = dst, depth, group
        self.works: deque = deque()

    def send(self, tensor: torch.Tensor) -> None:
        while len(self.works) >= self.depth:
            self.works.popleft()[0].wait()
        tensor = tensor.contiguous()
        self.works.append((dist.isend(tensor, dst=self.dst, group=self.group), tensor))

    def flush(self) -> None:
        while self.works:
            self.works.popleft()[0].wait()
