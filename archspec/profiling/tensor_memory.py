"""Live tensor bytes, counted as operators create storages and as the storages are freed.

:class:`TensorMemory` is a ``TorchDispatchMode``: every ATen operator of a forward, a backward
or an optimizer step passes through it, and every storage an operator returns that it has not
seen is counted, with a weakref finalizer that subtracts it when the storage is freed (PyTorch
keeps a storage's Python object alive as long as the storage lives, so this also follows the
tensors only autograd holds). Views and in-place results share a storage and count once. On
the meta device nothing is allocated and the count is the same: that is how the profiler
predicts a training step's peak (archspec.profiling.step_memory), and, on the CPU, how
``benchmarks/bench_memory.py`` measures a real one. Not seen: memory a kernel allocates and
frees inside itself (oneDNN / cuDNN workspaces) and the allocator's rounding and caching.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_key(tensor: torch.Tensor) -> int:
    """The identity of a tensor's storage (its StorageImpl, shared by views), on any device."""
    return tensor.untyped_storage()._cdata


def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (anything not a tensor skipped)."""
    sizes = {storage_key(t): t.untyped_storage().nbytes() for t in tensors if isinstance(t, torch.Tensor)}
    return sum(sizes.values())


def _cat(args, kwargs):
    """aten.cat(tensors, dim): on meta its Python kernel imports torch._dynamo; only the shape matters."""
    tensors = [t for t in args[0] if t.dim() > 1 or t.numel()]  # cat skips legacy empty 1-d tensors
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % tensors[0].dim()
    shape = list(tensors[0].shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return tensors[0].new_empty(shape)


def _vector_norm(args, kwargs):
    """aten.linalg_vector_norm(x, ord, dim, keepdim): F.normalize's norm (a Python meta kernel that imports sympy)."""
    x = args[0]
    dims = args[2] if len(args) > 2 and args[2] is not None else list(range(x.dim()))
    dims = {d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)}
    keep = len(args) > 3 and args[3]
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keep or i not in dims]
    return x.new_empty(shape)


def _like_first(args, kwargs=None):
    """Ops whose result is shaped and typed as their first argument (given a tensor first)."""
    return args[0].new_empty(args[0].shape)


def _broadcast(args, dtype=None):
    """The broadcast of the tensors' shapes (by hand: torch.broadcast_shapes imports sympy)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    rank = max(t.dim() for t in tensors)
    shape = [1] * rank
    for t in tensors:
        for i, n in enumerate(t.shape, start=rank - t.dim()):
            if n != 1:
                if shape[i] not in (1, n):
                    return NotImplemented
                shape[i] = n
    return tensors[0].new_empty(shape, dtype=dtype or tensors[0].dtype)


def _nll_loss_forward(args, kwargs):
    x = args[0]
    return x.new_empty(()), x.new_empty(())


aten = torch.ops.aten
# NT-Xent's ops (normalize, the masked similarity matrix, cross entropy) and a few others run
# Python meta kernels that import sympy and torch._dynamo (~1.5 s); their outputs' shapes are
# simple, and memory is all that is counted here.
_SHORTCUTS = {
    aten.cat: _cat,
    aten.linalg_vector_norm: _vector_norm,
    aten.clamp_min: _like_first,
    aten.neg: _like_first,
    aten._log_softmax: _like_first,
    aten._log_softmax_backward_data: _like_first,
    aten.nll_loss_forward: _nll_loss_forward,
    aten.nll_loss_backward: lambda args, kw: args[1].new_empty(args[1].shape),
    aten.masked_fill: lambda args, kw: _broadcast(args[:2]),
    aten.masked_fill_: lambda args, kw: args[0],
    aten.div: lambda args, kw: _broadcast(args[:2]) if isinstance(args[1], torch.Tensor) else _like_first(args),
    aten.mul: lambda args, kw: _broadcast(args[:2]) if isinstance(args[1], torch.Tensor) else _like_first(args),
    aten.where: lambda args, kw: _broadcast(args[1:]) if isinstance(args[1], torch.Tensor) else NotImplemented,
    **{op: (lambda args, kw: _broadcast(args[:2], torch.bool)) for op in (aten.eq, aten.ne, aten.ge, aten.gt, aten.le,
                                                                           aten.lt)},
    **{op: (lambda args, kw: args[0].new_empty(args[0].shape, dtype=kw.get("dtype") or args[0].dtype))
       for op in (aten.ones_like, aten.zeros_like, aten.empty_like)},
    aten.eye: lambda args, kw: torch.empty((args[0], args[1] if len(args) > 1 else args[0]), device="meta",
                                          dtype=kw.get("dtype") or torch.get_default_dtype()),
    aten.arange: lambda args, kw: _arange(args, kw),
    aten.scalar_tensor: lambda args, kw: torch.empty((), device="meta", dtype=kw.get("dtype") or torch.float32),
}


def _arange(args, kwargs):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1)
    n = max(0, -(-(end - start) // step))
    default = torch.int64 if all(isinstance(v, int) for v in (start, end, step)) else torch.get_default_dtype()
    return torch.empty((n,), device="meta", dtype=kwargs.get("dtype") or default)


class TensorMemory(TorchDispatchMode):
    """``current``: bytes of the live storages created under the mode; ``peak``: their maximum
    since :meth:`reset_peak`; ``events``: (+bytes or -bytes, key) in order, when ``record``.
    ``existing``: tensors whose storages were there before (weights, ...), which in-place
    updates return and which must not count."""

    def __init__(self, existing=(), record: bool = False):
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.ids: dict[int, int] = {}  # live storage key -> its number (keys are reused after a free)
        self.existing = {storage_key(t) for t in existing if isinstance(t, torch.Tensor)}
        self.current = self.peak = self.made = 0
        self.record = record
        self.events: list[tuple[int, int]] = []  # (+bytes or -bytes, storage number)
        self.peak_event = -1  # index into events where the peak was reached
        self.label, self.peak_label = None, None  # what the caller says is running, then at the peak

    def reset_peak(self) -> None:
        self.peak = self.current

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if size == 0 or key in self.sizes or key in self.existing:
            return
        self.sizes[key] = size
        self.made += 1
        self.ids[key] = number = self.made
        self.current += size
        if self.record:
            self.events.append((size, number))
        if self.current > self.peak:
            self.peak, self.peak_event, self.peak_label = self.current, len(self.events) - 1, self.label
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        size = self.sizes.pop(key, 0)
        number = self.ids.pop(key, None)
        self.current -= size
        if self.record and size:
            self.events.append((-size, number))

    def number(self, tensor: torch.Tensor) -> int | None:
        """The number of a live tensor's storage (None if the mode did not make it)."""
        return self.ids.get(storage_key(tensor))

    def live_at_peak(self) -> dict[int, int]:
        """Storage number -> bytes of what was alive at the peak (``record`` must be on)."""
        live: dict[int, int] = {}
        for size, number in self.events[:self.peak_event + 1]:
            if size > 0:
                live[number] = size
            else:
                live.pop(number, None)
        return live

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # as archspec.profiling.traced._Counter: keeps torch._dynamo from being imported
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from archspec.profiling.meta_shapes import META_SHORTCUTS as _META_SHORTCUTS

        kwargs = kwargs or {}
        first = args[0] if args and not isinstance(args[0], (list, tuple)) else (args[0][0] if args and args[0] else None)
        meta = getattr(first, "is_meta", False) or str(kwargs.get("device")) == "meta"
        out = NotImplemented
        if meta and func.overloadpacket in _META_SHORTCUTS and isinstance(first, torch.Tensor):
            out = _META_SHORTCUTS[func.overloadpacket](args)
        if out is NotImplemented and meta and func.overloadpacket in _SHORTCUTS:
            out = _SHORTCUTS[func.overloadpacket](args, kwargs)
        if out is NotImplemented:
            out = func(*args, **kwargs)
        # Only a return that aliases nothing is a new storage: views and in-place results
        # (alias annotations in the schema) share one that exists already, perhaps made
        # before the mode was entered (a data set's images, indexed).
        returns = func._schema.returns
        results = out if isinstance(out, (tuple, list)) and len(returns) == len(out) and len(returns) > 1 else [out]
        for result, ret in zip(results, returns):
            if ret.alias_info is None:
                for leaf in tree_leaves(result):
                    if isinstance(leaf, torch.Tensor):
                        self.track(leaf)
        return out
