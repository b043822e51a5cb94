"""Traced counts: run a module on meta tensors under a dispatch mode and count what runs.

Nothing is allocated, so tracing costs the same at batch 1 and batch 256. Per stage we get:
MACs by op class in the forward and in the backward pass (the real autograd graph, not a
fixed factor), and the exact bytes autograd saves for backward (parameters and buffers
excluded, each storage counted once). The op classes and their costs are those of
archspec.profiling.analytic, so the two can be held equal. Every aten op is either counted by a
rule (RULES, BACKWARD_NODE_RULES, COMPOSITE_BACKWARDS, dropout's mask product), known to cost
nothing (ZERO_COST), or tallied per stage in ``TracedStage.unknown``: nothing is dropped silently.
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
from archspec.profiling.norm_checks import lenient_norms

aten = torch.ops.aten


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _conv_macs(x, out_shape, weight, transposed) -> int:
    # every output element: (Cin / groups) * prod(kernel) multiply-adds (depthwise: 1 * prod(kernel));
    # a transposed conv: every input element, (Cout / groups) * prod(kernel) (weight: Cin, Cout/g, k, k)
    return math.prod(x.shape if transposed else out_shape) * math.prod(weight.shape[1:])


def _conv(args, kwargs, out):
    counts = [("conv", _conv_macs(args[0], out.shape, args[1], args[6]))]
    if len(args) > 2 and args[2] is not None:
        counts.append(("bias", _numel(out)))  # the bias: one addition per output element
    return counts


def _conv_backward(args, kwargs, out):
    grad_output, x, weight, transposed, mask = args[0], args[1], args[2], args[7], args[-1]
    per_grad = _conv_macs(x, grad_output.shape, weight, transposed)
    counts = [("conv", per_grad * (int(mask[0]) + int(mask[1])))]  # grad_input and grad_weight
    if mask[2]:
        counts.append(("bias", _numel(grad_output)))  # the bias gradient sums the output gradient
    return counts


def _matmul(args, kwargs, out):
    a, b = args[-2], args[-1]  # addmm(bias, a, b) or mm(a, b)
    fc = ("fc", a.shape[0] * a.shape[1] * b.shape[1])
    return [fc, ("bias", _numel(out))] if len(args) == 3 else fc


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


# Activations other than ReLU (op class 'act'): forward and backward, 1 per element (ReLU6 and
# Hardtanh run as hardtanh; mish_backward on CPU; on meta it decomposes, see COMPOSITE_BACKWARDS).
_ACTIVATIONS = ("hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "gelu", "gelu_", "silu", "silu_",
                "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_", "tanh", "tanh_",
                "elu", "elu_", "mish", "mish_", "softplus")
_ACTIVATION_BACKWARDS = ("hardtanh_backward", "leaky_relu_backward", "gelu_backward", "silu_backward",
                         "hardswish_backward", "hardsigmoid_backward", "sigmoid_backward", "tanh_backward",
                         "elu_backward", "softplus_backward", "mish_backward")


# Each rule maps an aten op to (op class, MACs), or a list of them. Forward costs follow
# analytic.py; backward costs: conv and fc exact (grad input + grad weight; a conv's bias
# gradient 1 per grad-output element, as 'bias'), batch/layer/group norm 2 per element,
# activations 1 per element of the gradient, gradient accumulation 1 per element, pools 1 per
# input element, bilinear 4 per output element of the forward, dropout 1 per element.
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
    aten.native_dropout: _per_out("dropout"),  # the fused dropout (CUDA); CPU and meta: see _Counter._dropout
    aten.native_dropout_backward: _per_out("dropout"),
    aten.mul: _per_out("mul"),
    aten.mul_: _per_out("mul"),
    **{getattr(aten, name): _per_out("act") for name in _ACTIVATIONS + _ACTIVATION_BACKWARDS if hasattr(aten, name)},
}

# Reductions autograd runs inside another op's backward, classed by the autograd node running
# them: (aten op, node) -> class, 1 per element of the gradient reduced or divided. Elsewhere
# (a sum or a division in the forward, or under any other node) they are unknown ops.
BACKWARD_NODE_RULES = {
    (aten.sum, "AddmmBackward0"): "bias",  # nn.Linear's bias gradient: the output gradient summed over rows
    (aten.sum, "MulBackward0"): "mul",  # a broadcast factor's gradient (squeeze-excitation's gate)
    (aten.sum, "AddBackward0"): "add",  # a broadcast addend's gradient
    (aten.sum, "SubBackward0"): "add",
    (aten.div, "MeanBackward0"): "pool",  # the global average pool: the gradient expanded, / (H*W)
    (aten.div, "MeanBackward1"): "pool",
}

# Autograd nodes whose backward op has no meta kernel and decomposes into a dozen aten ops there
# (on CPU it is one op, counted by RULES): the node counts once, 1 per element of the gradient,
# and the ops it runs are free. Their forward ops, seen first, mark the graph for a walk.
COMPOSITE_BACKWARDS = {"MishBackward0": "act"}
_COMPOSITE_FORWARDS = {aten.mish, aten.mish_}

# Ops that move, view or make tensors without arithmetic on features: counted as zero, never
# listed as unknown. Built from what the specs' networks and the layers of
# tests/test_op_coverage.py dispatch, forward and backward, on meta and CPU: views and reshapes,
# copies, padding and concatenation, allocation and filling, the gradient seed (ones_like on
# CPU, new_empty on meta), autograd's detach of saved outputs and accumulated gradients (and the
# new_empty_strided + copy_ with which it stores a gradient it cannot steal), the backward of
# slicing, and dropout's mask (drawn by bernoulli_, scaled by div_; the product with the mask is
# what 'dropout' counts, see _Counter._dropout).
ZERO_COST = frozenset(getattr(aten, name) for name in """
    detach alias view _unsafe_view _reshape_alias reshape expand t transpose permute squeeze unsqueeze flatten
    slice select as_strided split split_with_sizes unbind chunk narrow contiguous clone copy_ _to_copy
    lift_fresh lift_fresh_copy empty empty_like empty_strided empty_permuted new_empty new_empty_strided new_zeros
    new_ones new_full zeros zeros_like ones ones_like full full_like fill_ zero_ scalar_tensor constant_pad_nd
    cat stack repeat bernoulli_ _local_scalar_dense slice_backward select_backward
""".split() if hasattr(aten, name))

_NODE_RULE_OPS = {op for op, _ in BACKWARD_NODE_RULES}
_current_node = getattr(torch._C, "_current_autograd_node", lambda: None)  # the node autograd is running


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
        self.composites = False  # a forward op whose backward is in COMPOSITE_BACKWARDS ran
        self.started: set = set()  # composite backward nodes counted ...
        self.finished: set = set()  # ... and done (what runs under them now is gradient accumulation)

    @property
    def stage(self) -> TracedStage:
        return self.stages[self.current if self.current is not None else UNATTRIBUTED]

    def _dropout(self, func, args) -> bool | None:
        """Dropout on CPU and meta is bernoulli_ (the mask), div_ (scaled by 1/(1-p)) and a product
        with the mask, forward and backward: the product is 'dropout', the rest free. None: not
        dropout's. (A StorageWeakRef keeps its storage's address from being reused.)"""
        packet = func.overloadpacket
        if packet is aten.bernoulli_:
            self.masks.add(StorageWeakRef(args[0].untyped_storage()))
            return False
        if packet in (aten.div_, aten.mul) and self.masks:
            if any(isinstance(a, torch.Tensor) and StorageWeakRef(a.untyped_storage()) in self.masks for a in args):
                return packet is aten.mul
        return None

    def _composite(self, counts, args) -> bool:
        """Whether this backward op runs inside a COMPOSITE_BACKWARDS node (counted on its first op)."""
        node = _current_node()
        cls = None if node is None or node in self.finished else COMPOSITE_BACKWARDS.get(node.name())
        if cls is not None and node not in self.started:
            self.started.add(node)
            counts[cls] += _numel(next(a for a in args if isinstance(a, torch.Tensor)))
        return cls is not None

    def hook_composites(self, root) -> None:
        """Mark each composite node done when it returns: the gradient accumulation autograd runs
        after it, still under its name, is counted as usual."""
        stack, seen = [root], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node.name() in COMPOSITE_BACKWARDS:
                node.register_hook(lambda grads_in, grads_out, node=node: self.finished.add(node))
            stack.extend(n for n, _ in node.next_functions)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch wraps modes' __torch_dispatch__ to keep torch.compile out of them, which
        # imports torch._dynamo (~0.5 s). This mode never runs under torch.compile.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        shortcut = _META_SHORTCUTS.get(packet)
        out = shortcut(args) if shortcut is not None and args[0].device.type == "meta" else NotImplemented
        if out is NotImplemented:
            out = func(*args, **kwargs)
        stage = self.stage
        counts = stage.backward if self.backward else stage.forward
        if self.backward and self.composites and self._composite(counts, args):
            return out
        self.composites = self.composites or packet in _COMPOSITE_FORWARDS
        dropout = self._dropout(func, args)
        if dropout is not None:
            if dropout:
                counts["dropout"] += _numel(out)
            return out
        rule = RULES.get(packet)
        if rule is None and self.backward and packet in _NODE_RULE_OPS:
            node = _current_node()
            cls = BACKWARD_NODE_RULES.get((packet, node.name() if node is not None else None))
            if cls is not None:
                counts[cls] += _numel(args[0])
                return out
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
    attributed to the stage running it. Forward: a pre-hook enters the stage, a hook on leaving
    it resets attribution to none. Backward: a hook on each stage's output switches attribution
    to the stage when its gradient arrives; a hook on its input (when that requires grad) resets
    it to none once the gradient w.r.t. the input is done, unless another stage took over (a
    tensor's hooks run in registration order, so when stage k's input is stage k-1's output,
    k-1's output hook has already switched to k-1). Ops, saved tensors and unknown ops outside
    every stage go to an extra entry named ``unattributed`` (UNATTRIBUTED), at the end, present
    only when something ran there. Gradient accumulation for a tensor used twice runs before
    that tensor's hooks, so it is credited to the stage whose backward finished it.
    ``module`` and ``example`` must live on the meta device (CPU runs too, for tests);
    ``frozen_tensors`` (default: the module's parameters and buffers) are not charged as saved
    activations. The backward pass starts from a gradient of ones on the output (no loss
    function is counted).
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
            counter.current = None  # what runs next, until another stage is entered, is unattributed
            if not isinstance(output, torch.Tensor):
                return
            result[name].output_shape = tuple(output.shape)
            if output.requires_grad:
                output.register_hook(lambda grad, name=name: setattr(counter, "current", name))

        handles.append(sub.register_forward_pre_hook(enter))
        handles.append(sub.register_forward_hook(leave))
    try:
        # lenient_norms: batch 1 on a 1x1 map is counted like any other size (a profile needs no statistic)
        with lenient_norms(), counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = run(module, example) if run is not None else module(example)
            if backward and out.requires_grad:
                counter.backward = True
                counter.current = None  # the output's hook names the stage that produced it
                if counter.composites:
                    counter.hook_composites(out.grad_fn)
                _run_backward(out)
    finally:
        for h in handles:
            h.remove()
    if result[UNATTRIBUTED].empty:
        del result[UNATTRIBUTED]
    return result
