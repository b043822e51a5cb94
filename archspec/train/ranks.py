"""What a rank needs before it runs: the stage plan, its device, the model.

Shared by :mod:`archspec.train.stage_runner` and :mod:`archspec.train.distributed`.
"""
from __future__ import annotations

import sys

import torch

from archspec.errors import UserError
from archspec.train.config import TrainConfig
from archspec.train.model import Model
from archspec.train.precision import weight_dtype


def stage_plan(spec) -> tuple[list[list[str]], list[str], list[tuple[tuple, tuple]]]:
    """Local stages, their labels and (input, output) shapes (C, H, W) from the spec."""
    from archspec.profiling.memory import local_stages
    from archspec.spec.validate import infer_shapes

    groups = local_stages(spec)
    shapes = {s.name: s for s in infer_shapes(spec)}
    io_shapes = [(tuple(shapes[g[0]].in_shape), tuple(shapes[g[-1]].out_shape)) for g in groups]
    return groups, [ls.label for ls in spec.local_stages], io_shapes


def rank_device(name: str, local_rank: int, local_world: int) -> torch.device:
    """The device of a rank: CUDA (``cuda:LOCAL_RANK``) when this machine has a GPU for every
    local rank and the config allows it, else the CPU."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        raise UserError("device 'mps' cannot run one process per local stage (hint: set device: cpu, cuda or auto)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count >= local_world:
        return torch.device("cuda", local_rank)
    if name == "auto":
        return torch.device("cpu")
    raise UserError(f"device '{name}' with one process per local stage needs {local_world} CUDA devices on this "
                    f"machine, it has {count} (hint: set device: auto or cpu)")


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss there would include the
    parent's memory at the fork of a spawned process), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not on Windows

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _build_model(cfg: TrainConfig, spec, device) -> Model:
    """:func:`archspec.train.model.build_model` (same seed, same order of initialisation, so the
    same weights) without its meta-device shape check, which costs each process about a second
    of imports; :meth:`StageRunner.sync_step` checks every stage's output shape instead."""
    from archspec.nn.compiler import compile_spec
    from archspec.train.methods import build_decoders

    device = torch.device(device)
    dtype = weight_dtype(cfg.dtype)
    torch.manual_seed(cfg.seed)
    net = compile_spec(spec, device=device, check=False).to(dtype)
    decoders = build_decoders(net, cfg.method, cfg.decoders.decoder_config()).to(dtype)
    return Model(cfg, spec, net, decoders, device)


def check_stage_dtype(cfg: TrainConfig) -> None:
    """One process per stage trains in full precision or bfloat16, not float16."""
    if cfg.dtype == "float16":
        raise UserError(f"{cfg.where('dtype')}: float16 needs a loss scale that the ranks' gradient messages "
                        f"would have to share; one process per stage trains in bfloat16 (hint: dtype: bfloat16, "
                        f"or float16 with --processes one)")
