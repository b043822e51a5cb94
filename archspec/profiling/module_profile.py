"""Profile any nn.Module by named stages: the same Profile a spec gets, traced on meta tensors.

The user's module is never copied or moved: ``torch.func.functional_call`` runs it with meta
stand-ins for its parameters and buffers (no memory for them), in training mode (the saved
bytes are those of a training step), and every module's training flag is restored afterwards.
Ops that run outside every named stage (``torch.flatten`` in a forward, a residual added at the
top level) are reported in an ``unattributed`` row, never credited to a neighbour.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from archspec.errors import UserError, did_you_mean
from archspec.profiling.profiler import (DEFAULT_OPS, DTYPES, Profile, StageProfile, check_settings, is_size_overflow,
                                        size_overflow_as_error, size_overflow_error)
from archspec.profiling.traced import UNATTRIBUTED, trace


def input_shape(input_size) -> tuple[int, int, int]:
    """``224`` -> (3, 224, 224); ``(H, W)`` -> (3, H, W); ``(C, H, W)`` as given."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        dims = tuple(int(d) for d in input_size)
    except (TypeError, ValueError):
        raise UserError(f"input_size must be (C, H, W), (H, W) or one number, got {input_size!r}") from None
    if len(dims) == 2:
        dims = (3,) + dims
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"input_size must be (C, H, W), (H, W) or one number, got {input_size!r}")
    return dims


def resolve_stages(model: nn.Module, stages=None) -> "OrderedDict[str, nn.Module]":
    """Named stages of ``model``: its top-level children (default), a list of (dotted) submodule
    names, or a callable ``stages(model)`` returning names or (name, module) pairs."""
    if stages is None:
        found = OrderedDict(model.named_children())
        if not found:
            raise UserError(f"{type(model).__name__} has no child modules to use as stages "
                            "(hint: pass stages=[...] or profile it as one stage)")
        return found
    if callable(stages):
        try:
            stages = stages(model)
        except Exception as exc:
            raise UserError(f"the stages callable failed on {type(model).__name__}: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}") from None
    if isinstance(stages, str):
        stages = [s for s in stages.split(",") if s.strip()]
    elif isinstance(stages, Mapping):
        stages = list(stages.items())
    elif not isinstance(stages, Iterable):
        raise UserError(f"stages must be submodule names or (name, module) pairs, got {type(stages).__name__}")
    known = [n for n, _ in model.named_modules() if n]
    out: OrderedDict[str, nn.Module] = OrderedDict()
    for item in stages:
        if isinstance(item, tuple) and len(item) == 2:
            name, module = item
        else:
            name = str(item).strip()
            try:
                module = model.get_submodule(name)
            except AttributeError:
                hint = did_you_mean(name, known, "top-level children: "
                                    f"{', '.join(n for n, _ in model.named_children()) or 'none'}")
                raise UserError(f"{type(model).__name__} has no submodule '{name}' (hint: {hint})") from None
        if not isinstance(module, nn.Module):
            raise UserError(f"stage '{name}' is not an nn.Module")
        if name in out:
            raise UserError(f"stage '{name}' is given twice")
        out[name] = module
    if not out:
        raise UserError("no stages given (hint: name the submodules, e.g. stages=['layer1', 'layer2'])")
    names = list(out)
    for a in names:
        for b in names:
            if a != b and b.startswith(a + "."):
                raise UserError(f"stage '{b}' lies inside stage '{a}' (hint: stages must not nest)")
    return out


_KNOBS = "the batch, the input size or the channels"


def _stand_in(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A meta tensor shaped like ``t`` (floating ones in the profile's dtype)."""
    out = torch.empty(t.shape, device="meta", dtype=dtype if t.is_floating_point() else t.dtype)
    return out.requires_grad_(t.requires_grad) if out.is_floating_point() else out


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    for v in values:
        found = _first_tensor(v)
        if found is not None:
            return found
    return None


def profile_module(model: nn.Module, input_size, *, stages=None, batch: int = 1, dtype: str = "float32",
                   ops=DEFAULT_OPS, optimizer: str = "sgd", name: str | None = None) -> Profile:
    """Per-stage parameters, forward/backward MACs, activation bytes of ``model`` (any nn.Module)."""
    if not isinstance(model, nn.Module):
        raise UserError(f"expected an nn.Module, got {type(model).__name__}")
    check_settings(batch, dtype, optimizer, ops)
    shape = input_shape(input_size)
    named = resolve_stages(model, stages)
    torch_dtype = DTYPES[dtype]
    bpe = torch.empty(0, dtype=torch_dtype).element_size()
    stand_ins = {n: _stand_in(p, torch_dtype) for n, p in model.named_parameters()}
    stand_ins.update({n: _stand_in(b, torch_dtype) for n, b in model.named_buffers()})
    modes = {m: m.training for m in model.modules()}
    with size_overflow_as_error(batch, shape, _KNOBS):
        x = torch.empty(batch, *shape, device="meta", dtype=torch_dtype)

    def run(module, example):
        out = _first_tensor(torch.func.functional_call(module, stand_ins, (example,)))
        if out is None:
            raise UserError(f"{type(model).__name__}'s forward returned no tensor")
        return out

    model.train()
    try:
        traced = trace(model, named, x, run=run, frozen_tensors=list(stand_ins.values()))
    except UserError:
        raise
    except Exception as exc:  # the user's forward on this input: one line, not a traceback
        if is_size_overflow(exc):
            raise size_overflow_error(batch, shape, _KNOBS) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{type(model).__name__} fails on an input of shape {(batch, *shape)}: {first} "
                        "(hint: check input_size / --size and the channels the model expects)") from None
    finally:
        for module, training in modes.items():
            module.train(training)
    if UNATTRIBUTED in traced:  # the parameters of modules outside every stage (a stem, an fc)
        inside = {id(p) for sub in named.values() for p in sub.parameters()}
        traced[UNATTRIBUTED].params = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    rows = []
    for stage_name, t in traced.items():
        out_elems = math.prod(t.output_shape) if t.output_shape else 0
        rows.append(StageProfile(
            name=stage_name, output_shape=tuple(t.output_shape[1:]), params=t.params,
            forward={k: v // batch for k, v in t.forward.items()},
            backward={k: v // batch for k, v in t.backward.items()},
            activations={"output": out_elems * bpe, "conv_outputs": t.conv_output_elems * bpe,
                         "saved": t.saved_bytes}))
    source = {"name": name or type(model).__name__, "title": "", "input_shape": shape}
    groups = [[n] for n in traced if n != UNATTRIBUTED]
    return Profile(None, batch, dtype, optimizer, tuple(ops), rows, groups=groups, source=source,
                   unknown={n: dict(t.unknown) for n, t in traced.items() if t.unknown})
