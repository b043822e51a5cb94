"""Traced counts: run a module on meta tensors under a dispatch mode and count what runs.

Nothing is allocated, so tracing costs the same at batch 1 and batch 256. Per stage we get:
MACs by op class in the forward and in the backward pass (the real autograd graph, not a
fixed factor), and the exact bytes autograd saves for backward (parameters and buffers
excluded, each storage counted once). The op classes and their costs are those of
archspec.profiling.analytic, so the two can be held equal.
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

from archspec.profiling.analytic import OP_CLASSES
from archspec.profiling.meta_shapes import META_SHORTCUTS as _META_SHORTCUTS

aten = torch.ops.aten


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _conv_macs(out_shape, weight) -> int:
    # every output element: (Cin / groups) * prod(kernel) multiply-adds
    return math.prod(out_shape) * math.prod(weight.shape[1:])


def _conv(args, kwargs, out):
    counts = [("conv", _conv_macs(out.shape, args[1]))]
    if len(args) > 2 and args[2] is not None:
        counts.append(("bias", _numel(out)))  # the bias: one addition per output element
    return counts


def _conv_backward(args, kwargs, out):
    grad_output, _, weight = args[0], args[1], args[2]
    mask = args[-1]
    per_grad = _conv_macs(grad_output.shape, weight)
    counts = [("conv", per_grad * (int(mask[0]) + int(mask[1])))]  # grad_input and grad_weight
    if mask[2]:
        counts.append(("bias", _numel(grad_output)))  # the bias gradient sums the output gradient
    return counts


def _matmul(args, kwargs, out):
    a, b = args[-2], args[-1]  # addmm(bias, a, b) or mm(a, b)
    fc = ("fc", a.shape[0] * a.shape[1] * b.shape[1])
    return [fc, ("bias", _numel(out))] if len(args) == 3 else fc


def _sum_backward(args, kwargs, out):
    # In the backward pass a sum reduces a gradient: over the rows for a linear layer's bias
    # (dims [0]), or over the broadcast dims of a product such as squeeze-excitation's gate (mul).
    dims = args[1] if len(args) > 1 else None
    return ("bias" if list(dims or ()) == [0] else "mul", _numel(args[0]))


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


def _avg_pool(args, kwargs, out):
    kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
    return "pool", _numel(out) * math.prod(kernel if len(kernel) == 2 else (kernel[0], kernel[0]))


# Activations other than ReLU (op class 'act'): forward and backward, 1 per element.
_ACTIVATIONS = ("hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "gelu", "gelu_", "silu", "silu_",
                "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_", "tanh", "tanh_",
                "elu", "elu_", "mish", "mish_", "softplus")
_ACTIVATION_BACKWARDS = ("hardtanh_backward", "leaky_relu_backward", "gelu_backward", "silu_backward",
                         "hardswish_backward", "hardsigmoid_backward", "sigmoid_backward", "tanh_backward",
                         "elu_backward", "softplus_backward")


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
    aten.avg_pool2d: _avg_pool,
    aten.avg_pool2d_backward: _per_out("pool"),
    aten._adaptive_avg_pool2d: _per_in("pool"),
    aten._adaptive_avg_pool2d_backward: _per_out("pool"),
    aten.adaptive_max_pool2d: _per_in("pool"),
    aten.adaptive_max_pool2d_backward: _per_out("pool"),
    aten.native_layer_norm: _per_in("norm"),
    aten.native_layer_norm_backward: _per_in("norm", 2),
    aten.native_group_norm: _per_in("norm"),
    aten.native_group_norm_backward: _per_in("norm", 2),
    aten.mul: _per_out("mul"),
    aten.mul_: _per_out("mul"),
    **{getattr(aten, name): _per_out("act") for name in _ACTIVATIONS + _ACTIVATION_BACKWARDS},
}
# The global average pool's backward: expand the gradient, divide by H*W (1 per input element).
BACKWARD_ONLY = {aten.div: _per_out("pool"), aten.sum: _sum_backward}

# Ops that move or make tensors without arithmetic on features: counted as zero, never listed as
# unknown. (Dropout's mask is drawn by bernoulli_ and scaled by div_; the product with the mask
# is what 'dropout' counts, see _Counter.)
ZERO_COST = frozenset(getattr(aten, name) for name in """
    detach alias view _unsafe_view reshape expand t transpose permute squeeze unsqueeze flatten slice select
    as_strided split split_with_sizes unbind chunk narrow contiguous clone copy_ _to_copy lift_fresh
    empty empty_like empty_strided new_empty new_zeros new_ones zeros zeros_like ones ones_like full full_like
    fill_ zero_ scalar_tensor constant_pad_nd cat stack repeat bernoulli_ _local_scalar_dense
    max_pool2d_with_indices_backward slice_backward select_backward
""".split() if hasattr(aten, name))


UNATTRIBUTED = "unattributed"  # the row of ops that ran outside every named stage


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
    unknown: dict[str, int] = field(default_factory=dict)  # ops no rule counts: name -> calls (fwd + bwd)

    @property
    def empty(self) -> bool:
        return not (any(self.forward.values()) or any(self.backward.values()) or self.saved_bytes or self.unknown)


class _Counter(TorchDispatchMode):
    def __init__(self, stages: dict[str, TracedStage]):
        super().__init__()
        self.stages = stages
        self.current: str | None = None  # None: outside every stage ('unattributed')
        self.backward = False
        self.masks: set = set()  # storages of dropout masks (bernoulli_ outputs)

    @property
    def stage(self) -> TracedStage:
        return self.stages[self.current if self.current is not None else UNATTRIBUTED]

    def _dropout(self, func, args) -> bool | None:
        """Dropout on CPU and meta is bernoulli_ (the mask), div_ (scaled by 1/(1-p)) and a product
        with the mask, forward and backward: the product is 'dropout', the rest free. None: not
        dropout's."""
        packet = func.overloadpacket
        if packet is aten.bernoulli_:
            self.masks.add(StorageWeakRef(args[0].untyped_storage()))
            return False
        if packet in (aten.div_, aten.mul):
            if any(isinstance(a, torch.Tensor) and StorageWeakRef(a.untyped_storage()) in self.masks for a in args):
                return packet is aten.mul
        return None

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
        packet = func.overloadpacket
        stage = self.stage
        counts = stage.backward if self.backward else stage.forward
        dropout = self._dropout(func, args)
        if dropout is not None:
            if dropout:
                counts["dropout"] += _numel(out)
            return out
        rule = RULES.get(packet)
        if rule is None and self.backward:
            rule = BACKWARD_ONLY.get(packet)
        if rule is None:
            if packet not in ZERO_COST:
                name = str(packet)
                stage.unknown[name] = stage.unknown.get(name, 0) + 1
            return out
        counted = rule(args, kwargs, out)
        for op, n in ([counted] if isinstance(counted, tuple) else counted or ()):
            counts[op] += n
        if packet is aten.convolution:
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
          backward: bool = True, run=None, frozen_tensors=None) -> "OrderedDict[str, TracedStage]":
    """Trace ``run(module, example)`` (default: ``module(example)``) on the meta device.

    ``stages`` names the submodules that run in sequence (e.g. ``net.stages``); every op is
    attributed to the stage running it, in the backward pass too: a hook on each stage's output
    switches attribution to it when the gradient reaches it, and a hook on its input switches
    away when the gradient leaves it. Ops that run outside every stage are counted in an extra
    entry named ``unattributed`` at the end, present only when something ran there.
    ``module`` and ``example`` must live on the meta device; ``frozen_tensors`` (default: the
    module's parameters and buffers) are not charged as saved activations. The backward pass
    starts from a gradient of ones on the output (no loss function is counted).
    """
    result = OrderedDict((name, TracedStage(name)) for name in stages)
    result[UNATTRIBUTED] = TracedStage(UNATTRIBUTED)
    counter = _Counter(result)
    if frozen_tensors is None:
        frozen_tensors = list(module.parameters()) + list(module.buffers())
    frozen = {StorageWeakRef(t.untyped_storage()) for t in frozen_tensors}
    seen: set = set()

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = StorageWeakRef(storage)
        if key not in frozen and key not in seen:
            seen.add(key)
            stage = counter.stage
            stage.saved_bytes += storage.nbytes()
            stage.saved_tensors += 1
        return t

    def left(name):  # the gradient has left stage ``name``: outside every stage, unless another took over
        if counter.current == name:
            counter.current = None

    handles = []
    for name, sub in stages.items():
        result[name].params = sum(p.numel() for p in sub.parameters())

        def enter(mod, inputs, name=name):
            counter.current = name
            first = inputs[0] if inputs else None
            if isinstance(first, torch.Tensor) and first.requires_grad:
                first.register_hook(lambda grad, name=name: left(name))

        def leave(mod, inputs, output, name=name):
            counter.current = None
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
                counter.current = None  # the output's hook names the stage that produced it
                _run_backward(out)
    finally:
        for h in handles:
            h.remove()
    if result[UNATTRIBUTED].empty:
        del result[UNATTRIBUTED]
    return result
