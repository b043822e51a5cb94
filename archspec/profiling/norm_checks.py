"""Batch, group and instance norm without torch's Python-level "more than 1 value per channel"
checks, while a profile runs.

``torch.nn.functional.batch_norm`` (in training mode), ``group_norm`` and ``instance_norm``
refuse an input with one value per channel (per group) before they reach ATen: batch 1 on a 1x1
map, e.g. ResNet-50's last stage at ``--size 32 --batch 1``. A real training step there would
compute a meaningless statistic, but a profile only counts the ops that run, their shapes and the
tensors autograd saves, and those are the same at any size. Inside :func:`lenient_norms` the
size checks pass in the calling thread, and nothing else changes: the same functions call the
same ops with the same arguments, so the traced graph, the counts and the saved bytes are exactly
those of the normal path (other checks, such as batch norm's positive ``eps`` in training, are
kept). Other threads, and real training, keep torch's checks.

The checks are torch's private helpers ``_verify_batch_size`` and ``_verify_spatial_size``, looked
up at call time; while a profile runs they are wrapped by versions that skip them in a thread
that is profiling. Where a torch lacks them, a ``TorchFunctionMode`` runs the three functions'
ops directly instead (the same ops; slower, as every torch call then passes through Python).
"""
from __future__ import annotations

import contextlib
import inspect
import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CHECKS = ("_verify_batch_size", "_verify_spatial_size")
_state = threading.local()  # .depth: lenient_norms() nesting in this thread
_lock = threading.Lock()
_installed = {"users": 0, "originals": {}}


def _lenient(name: str, original):
    def check(size):
        if getattr(_state, "depth", 0):
            return None
        return original(size)

    check.__name__ = check.__qualname__ = name
    check.__wrapped__ = original
    return check


@contextlib.contextmanager
def _wrapped_checks():
    with _lock:
        if _installed["users"] == 0:
            originals = {name: getattr(F, name) for name in _CHECKS}
            _installed["originals"] = originals
            for name, original in originals.items():
                setattr(F, name, _lenient(name, original))
        _installed["users"] += 1
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
        with _lock:
            _installed["users"] -= 1
            if _installed["users"] == 0:
                for name, original in _installed["originals"].items():
                    setattr(F, name, original)
                _installed["originals"] = {}


# -- the fallback: the norms' ops called directly (a TorchFunctionMode) ---------------------------
def _bound(func, args, kwargs):
    bound = inspect.signature(func).bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    return bound.arguments


def _batch_norm(args, kwargs):
    a = _bound(F.batch_norm, args, kwargs)
    if a["training"] and a["eps"] <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {a['eps']}")
    if a["eps"] < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {a['eps']}")
    return torch.batch_norm(a["input"], a["weight"], a["bias"], a["running_mean"], a["running_var"], a["training"],
                            a["momentum"], a["eps"], torch.backends.cudnn.enabled)


def _group_norm(args, kwargs):
    a = _bound(F.group_norm, args, kwargs)
    if a["input"].dim() < 2:
        return NotImplemented  # torch's own message
    return torch.group_norm(a["input"], a["num_groups"], a["weight"], a["bias"], a["eps"],
                            torch.backends.cudnn.enabled)


def _instance_norm(args, kwargs):
    a = _bound(F.instance_norm, args, kwargs)
    return torch.instance_norm(a["input"], a["weight"], a["bias"], a["running_mean"], a["running_var"],
                               a["use_input_stats"], a["momentum"], a["eps"], torch.backends.cudnn.enabled)


_DIRECT = {F.batch_norm: _batch_norm, F.group_norm: _group_norm, F.instance_norm: _instance_norm}


class DirectNorms(TorchFunctionMode):
    """The three norms as direct calls of their ops, skipping only the size checks."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        direct = _DIRECT.get(func)
        if direct is not None:
            out = direct(args, kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **(kwargs or {}))


def _has_checks() -> bool:
    return all(callable(getattr(F, name, None)) for name in _CHECKS)


@contextlib.contextmanager
def lenient_norms():
    """Run norms on inputs with one value per channel in this thread (profiling only; see the module)."""
    with _wrapped_checks() if _has_checks() else DirectNorms():
        yield


__all__ = ["DirectNorms", "lenient_norms"]
