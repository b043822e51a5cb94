"""Measured peak tensor memory of real training steps (the runner's own), per step.

On the CPU, :class:`archspec.profiling.tensor_memory.TensorMemory` counts every storage the
run's operators create and frees (it does not see kernels' own workspaces or the allocator's
rounding); on CUDA, ``torch.cuda.max_memory_allocated`` (which does). The peak of a step is
what the run holds before it (weights, buffers, optimizer state) plus the peak of what the step
allocates. ``benchmarks/bench_memory.py`` puts it beside the profiler's prediction.
"""
from __future__ import annotations

from pathlib import Path

import torch

from archspec.profiling.tensor_memory import TensorMemory, held_bytes


def run_tensors(runner) -> list[torch.Tensor]:
    """What a run (or one rank of it) holds between steps: weights, buffers, gradients,
    optimizer state; not the meta twins of modules another rank owns."""
    model = runner.model
    tensors = [t for m in (model.net, model.decoders) for t in list(m.parameters()) + list(m.buffers())]
    tensors += [p.grad for p in tensors if isinstance(p, torch.nn.Parameter)]
    for state in runner.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return [t for t in tensors if isinstance(t, torch.Tensor) and not t.is_meta]


def measure_step_peaks(cfg, out, steps: int = 3) -> list[int]:
    """Peak tensor bytes of each of the first ``steps`` steps of ``cfg`` in one process. The
    first step creates the optimizer state, so the later ones are the steady state."""
    from archspec.train.loop import Runner
    from archspec.train.session import torch_settings

    peaks: list[int] = []
    Path(out).mkdir(parents=True, exist_ok=True)
    with torch_settings(cfg.threads, cfg.deterministic):
        runner = Runner(cfg, out, progress=False)
        cuda = runner.device.type == "cuda"
        existing = run_tensors(runner)
        tracker = TensorMemory(existing)
        held = held_bytes(existing)  # before the first step; the tracker sees the rest

        def on_step(step, _losses):
            if cuda:
                peaks.append(torch.cuda.max_memory_allocated(runner.device))
                torch.cuda.reset_peak_memory_stats(runner.device)
            else:
                peaks.append(held + tracker.peak)
                tracker.reset_peak()

        if cuda:
            torch.cuda.reset_peak_memory_stats(runner.device)
            runner.run(max_steps=steps, on_step=on_step)
        else:
            with tracker:
                runner.run(max_steps=steps, on_step=on_step)
    return peaks
