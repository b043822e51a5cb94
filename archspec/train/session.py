"""The process around a training run: the device it trains on, torch's thread count and
deterministic algorithms for its duration (restored afterwards), and Ctrl-C, which asks the loop
to stop after the current step and save. Apart from the runner (archspec.train.loop) because
the per-stage and distributed runners and the memory measurement use them too.
"""
from __future__ import annotations

import contextlib
import signal

import torch

from archspec.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' is not available here (hint: set device: auto or cpu)")
    return device


class Stopper:
    """The first SIGINT asks the loop to stop after the current step (and save); a second
    one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C arrives as KeyboardInterrupt
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


@contextlib.contextmanager
def torch_settings(threads: int | None, deterministic: bool):
    """Torch's thread count and deterministic algorithms for a run, restored afterwards. The
    eager-mode switch is set directly where torch has it: ``torch.use_deterministic_algorithms``
    also sets a flag of the compiler (torch._inductor), which training never uses, and importing
    it costs every process about 1.7 s."""
    switch = getattr(torch._C, "_set_deterministic_algorithms", None) or torch.use_deterministic_algorithms
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
