"""Traced counts: run a module on meta tensors under a dispatch mode and count what runs.

Nothing is allocated, so tracing costs the same at batch 1 and batch 256. Per stage we get:
MACs by op class in the forward and in the backward pass (the real autograd graph, not a
fixed factor), and the exact bytes autograd saves for backward (parameters and buffers
excluded, each storage counted once). The op classes and their costs are those of
archspec.profile.analytic, so the two can be held equal.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from archspec.profile.analytic import OP_CLASSES

aten = torch.ops.aten


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _conv_macs(out_shape, weight) -> int:
    # every output element: (Cin / groups) * prod(kernel) multiply-adds
    return math.prod(out_shape) * math.prod(weight.shape[1:])


def _conv(args, kwargs, out):
    return "conv", _conv_macs(out.shape, args[1])


def _conv_backward(args, kwargs, out):
    grad_output, _, weight = args[0], args[1], args[2]
    mask = args[-1]
    per_grad = _conv_macs(grad_output.shape, weight)
    return "conv", per_grad * (int(mask[0]) + int(mask[1]))  # grad_input and grad_weight


def _matmul(args, kwargs, out):
    a, b = args[-2], args[-1]  # addmm(bias, a, b) or mm(a, b)
    return "fc", a.shape[0] * a.shape[1] * b.shape[1]


def _per_out(cls, factor=1):
    return lambda args, kwargs, out: (cls, factor * _numel(out if isinstance(out, torch.Tensor) else out[0]))


def _per_in(cls, factor=1):
    return lambda args, kwargs, out: (cls, factor * _numel(args[0]))


def _max_pool(args, kwargs, out):
    kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
    return "pool", _numel(out[0]) * math.prod(kernel if len(kernel) == 2 else (kernel[0], kernel[0]))


def _add(args, kwargs, out):
    # 0-dim adds are bookkeeping (batch norm's num_batches_tracked), not arithmetic on features
    return ("add", _numel(out)) if out.dim() > 0 else None


def _mean(args, kwargs, out):
    return "pool", _numel(args[0])


# Each rule maps an aten op to (op class, MACs). Forward costs follow analytic.py; backward
# costs: conv and fc exact (grad input + grad weight), batch norm 2 per element, ReLU 1 per
# element, gradient accumulation 1 per element, pooling 1 per input element, bilinear 4 per
# output element of the forward.
RULES = {
    aten.convolution: _conv,
    aten.convolution_backward: _conv_backward,
    aten.addmm: _matmul,
    aten.mm: _matmul,
    aten.native_batch_norm: _per_in("bn"),
    aten._native_batch_norm_legit: _per_in("bn"),
    aten._native_batch_norm_legit_no_training: _per_in("bn"),
    aten._batch_norm_with_update: _per_in("bn"),
    aten.native_batch_norm_backward: _per_in("bn", 2),
    aten.batch_norm_backward: _per_in("bn", 2),
    aten.relu: _per_out("relu"),
    aten.relu_: _per_out("relu"),
    aten.threshold_backward: _per_out("relu"),
    aten.add: _add,
    aten.add_: _add,
    aten.max_pool2d_with_indices: _max_pool,
    aten.max_pool2d_with_indices_backward: _per_out("pool"),
    aten.mean: _mean,
    aten.upsample_bilinear2d: _per_out("interp", 4),
    aten.upsample_bilinear2d_backward: _per_in("interp", 4),
}
# The global average pool's backward: expand the gradient, divide by H*W (1 per input element).
BACKWARD_ONLY = {aten.div: _per_out("pool")}


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    # batch norm keeps its saved mean and inverse std in float32 for half types (as on CUDA)
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _bn_shapes(args):
    x, training = args[0], args[5]
    stats = x.new_empty((x.shape[1],) if training else (0,), dtype=_stat_dtype(x))
    return x.new_empty(x.shape), stats, stats.new_empty(stats.shape)


def _bn_backward_shapes(args):
    x, weight, mask = args[1], args[2], args[-1]
    grads = (x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape))
    return tuple(g if m else None for g, m in zip(grads, mask))


def _elementwise(args):
    """Equal shapes and dtypes in, the same shape out; anything else goes to PyTorch."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    first = tensors[0]
    if all(t.shape == first.shape and t.dtype == first.dtype for t in tensors):
        return first.new_empty(first.shape)
    return NotImplemented


def _mean_shape(args):
    """aten.mean / aten.sum over dims (no dtype argument); anything else goes to PyTorch."""
    if len(args) < 2 or not isinstance(args[1], (list, tuple)) or not args[1]:
        return NotImplemented
    x, dims = args[0], [d % args[0].dim() for d in args[1]]
    keep = len(args) > 2 and args[2]
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keep or i not in dims]
    return x.new_empty(shape) if len(args) <= 3 else NotImplemented  # no dtype argument


def _in_place(args):
    return args[0]


def _pair(v) -> tuple[int, int]:
    return (v[0], v[-1]) if isinstance(v, (list, tuple)) else (v, v)


def _window_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv_shape(args):
    """aten.convolution(input, weight, bias, stride, padding, dilation, transposed, ...)."""
    x, weight, stride, padding, dilation, transposed = args[0], args[1], args[3], args[4], args[5], args[6]
    if transposed or x.dim() != 4:
        return NotImplemented
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = weight.shape[2:]
    return x.new_empty((x.shape[0], weight.shape[0], _window_out(x.shape[2], kh, sh, ph, dh),
                        _window_out(x.shape[3], kw, sw, pw, dw)))


def _conv_backward_shapes(args):
    """aten.convolution_backward(grad_out, input, weight, bias_sizes, ..., transposed, ..., mask)."""
    x, weight, bias_sizes, transposed, mask = args[1], args[2], args[3], args[7], args[-1]
    if transposed:
        return NotImplemented
    bias = weight.new_empty(tuple(bias_sizes)) if bias_sizes is not None else weight.new_empty((weight.shape[0],))
    grads = (x.new_empty(x.shape), weight.new_empty(weight.shape), bias)
    return tuple(g if m else None for g, m in zip(grads, mask))


def _max_pool_shapes(args):
    """aten.max_pool2d_with_indices(input, kernel, stride, padding, dilation, ceil_mode)."""
    x = args[0]
    kernel = _pair(args[1])
    stride = _pair(args[2]) if len(args) > 2 and args[2] else kernel
    padding = _pair(args[3]) if len(args) > 3 else (0, 0)
    dilation = _pair(args[4]) if len(args) > 4 else (1, 1)
    if (len(args) > 5 and args[5]) or x.dim() != 4:
        return NotImplemented  # ceil_mode
    shape = (*x.shape[:2], *(_window_out(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i])
                             for i in range(2)))
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


# On the meta device PyTorch runs convolutions, pooling, batch norm, bilinear resizing and even
# additions through Python meta functions (whose checks import sympy and torch._dynamo on first
# use: ~1.5 s in all). Only shapes
# matter there, so the counter answers these ops itself; autograd, above this mode, records
# the same graph and saves the same tensors (tests compare with a real run, byte for byte).
_META_SHORTCUTS = {
    aten.add: _elementwise,
    aten.addmm: lambda args: args[1].new_empty((args[1].shape[0], args[2].shape[1])),
    aten.mm: lambda args: args[0].new_empty((args[0].shape[0], args[1].shape[1])),
    aten.div: _elementwise,
    aten.mean: _mean_shape,
    aten.sum: _mean_shape,
    aten.threshold_backward: _elementwise,
    aten.relu: _elementwise,
    aten.relu_: _in_place,
    aten.add_: _in_place,
    aten.upsample_bilinear2d: lambda args: args[0].new_empty((*args[0].shape[:2], *args[1])),
    aten.upsample_bilinear2d_backward: lambda args: args[0].new_empty(tuple(args[2])),
    aten.native_batch_norm: _bn_shapes,
    aten.native_batch_norm_backward: _bn_backward_shapes,
    aten.convolution: _conv_shape,
    aten.convolution_backward: _conv_backward_shapes,
    aten.max_pool2d_with_indices: _max_pool_shapes,
    aten.max_pool2d_with_indices_backward: lambda args: args[1].new_empty(args[1].shape),
}


@dataclass
class TracedStage:
    """Counts for one stage at the traced batch size (whole batch, not per image)."""

    name: str
    params: int = 0
    forward: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 0))
    backward: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OP_CLASSES, 0))
    saved_bytes: int = 0  # autograd's saved tensors, each storage once, params/buffers excluded
    saved_tensors: int = 0
    output_shape: tuple = ()
    conv_output_elems: int = 0


class _Counter(TorchDispatchMode):
    def __init__(self, stages: dict[str, TracedStage]):
        super().__init__()
        self.stages = stages
        self.current: str | None = None
        self.backward = False

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch wraps modes' __torch_dispatch__ to keep torch.compile out of them, which
        # imports torch._dynamo (~0.5 s). This mode never runs under torch.compile.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        shortcut = _META_SHORTCUTS.get(func.overloadpacket)
        out = shortcut(args) if shortcut is not None and args[0].device.type == "meta" else NotImplemented
        if out is NotImplemented:
            out = func(*args, **kwargs)
        rule = RULES.get(func.overloadpacket)
        if rule is None and self.backward:
            rule = BACKWARD_ONLY.get(func.overloadpacket)
        if rule is not None and self.current is not None:
            counted = rule(args, kwargs, out)
            if counted is not None:
                stage = self.stages[self.current]
                (stage.backward if self.backward else stage.forward)[counted[0]] += counted[1]
                if func.overloadpacket is aten.convolution:
                    stage.conv_output_elems += _numel(out)
        return out


def _run_backward(out: torch.Tensor) -> None:
    """``out.backward(ones)``. On meta tensors the seed's values do not matter, and the autograd
    engine is called directly: ``Tensor.backward`` checks the seed's shape with sympy-backed
    helpers whose first import costs ~0.5 s (a third of ``archspec profile``'s budget)."""
    if not out.is_meta:
        out.backward(torch.ones_like(out))
        return
    seed = out.new_empty(out.shape)
    engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
    if engine is None:  # a PyTorch without the private engine handle
        out.backward(seed)
        return
    engine.run_backward((out,), (seed,), False, False, (), True, True)


def trace(module: nn.Module, stages: Mapping[str, nn.Module], example: torch.Tensor,
          backward: bool = True, run=None) -> "OrderedDict[str, TracedStage]":
    """Trace ``run(module, example)`` (default: ``module(example)``) on the meta device.

    ``stages`` names the submodules that run in sequence (e.g. ``net.stages``); every op
    is attributed to the stage running it, in the backward pass too: a hook on each stage's
    output switches attribution when the gradient reaches it. ``module`` and ``example``
    must live on the meta device. The backward pass starts from a gradient of ones on the
    output (no loss function is counted).
    """
    result = OrderedDict((name, TracedStage(name)) for name in stages)
    counter = _Counter(result)
    frozen = {StorageWeakRef(t.untyped_storage()) for t in list(module.parameters()) + list(module.buffers())}
    seen: set = set()

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = StorageWeakRef(storage)
        if counter.current is not None and key not in frozen and key not in seen:
            seen.add(key)
            stage = result[counter.current]
            stage.saved_bytes += storage.nbytes()
            stage.saved_tensors += 1
        return t

    handles = []
    for name, sub in stages.items():
        result[name].params = sum(p.numel() for p in sub.parameters())

        def enter(mod, inputs, name=name):
            counter.current = name

        def leave(mod, inputs, output, name=name):
            result[name].output_shape = tuple(output.shape)
            if output.requires_grad:
                output.register_hook(lambda grad, name=name: setattr(counter, "current", name))

        handles.append(sub.register_forward_pre_hook(enter))
        handles.append(sub.register_forward_hook(leave))
    try:
        with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = run(module, example) if run is not None else module(example)
            if backward and out.requires_grad:
                counter.backward = True
                counter.current = next(reversed(result))
                _run_backward(out)
    finally:
        for h in handles:
            h.remove()
    return result
