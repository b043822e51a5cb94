"""Peak training memory of one step of SimCLR, GIM or LoCo, by running the step on meta tensors.

The step is the training runner's own: the batch and its two views, then
``archspec.train.methods``' forward and backward of the method (the same code a run executes,
with its detaches, its split LoCo backward and the order in which stages free their tensors),
on the encoder and decoders built on the meta device, counted by
:class:`~archspec.profiling.tensor_memory.TensorMemory` (nothing is allocated). The optimizer step
comes after the backward and is added from its state and temporaries (torch's per-tensor
CPU implementations; see :func:`update_temporaries`). So the prediction holds, at the peak:

- what the run holds between steps: weights (encoder, the untrained head, batch-norm buffers,
  decoders) and optimizer state (created at the first step; the steady state is predicted);
- gradients as they exist at that moment: ``p.grad`` is None when a step starts, and a stage's
  gradients appear when its backward runs (GIM's and LoCo's later stages have none yet when an
  early stage peaks);
- the tensors autograd keeps for backward, the gradient buffers in flight and the batch with its
  two views.

What it leaves out: kernels' own workspaces (oneDNN, cuDNN) and the allocator's rounding and
caching; docs/profile.md gives the measured error.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from archspec.nn.decoders import DecoderConfig
from archspec.profiling.memory import OPTIMIZER_STATES
from archspec.profiling.norm_checks import lenient_norms
from archspec.profiling.tensor_memory import TensorMemory, held_bytes
from archspec.spec.schema import Spec


def update_temporaries(optimizer: str, groups: list[dict], bpe: int) -> int:
    """The most bytes an optimizer step allocates at once beyond its state, over the parameter
    groups of archspec.train.optim.param_groups, for the per-tensor implementations the CPU
    runs (torch.optim's ``_single_tensor_*`` and archspec's LARS; measured with TensorMemory):

    - sgd: ``g + wd w`` (one tensor) with weight decay, else nothing;
    - lars: ``g + wd w`` with weight decay and ``trust x g`` with adaptation, both alive at once;
    - adam: ``g + wd w``, then ``sqrt(v)`` and ``sqrt(v) / c`` together, while the previous
      tensor's denominator is still referenced (it is rebound only after the division).
    """
    peak = 0
    for group in groups:
        decay, previous = bool(group["weight_decay"]), 0
        for p in group["params"]:
            size = p.numel() * bpe
            if optimizer == "sgd":
                peak = max(peak, size * decay)
            elif optimizer == "lars":
                peak = max(peak, size * (decay + bool(group.get("adapt", True))))
            else:
                peak = max(peak, size * (2 + decay) + previous)
            previous = size
    return peak


@dataclass
class StepPeak:
    """Bytes at the peak of a step, by what holds them."""

    weights: int  # encoder (stages and head) weights and buffers
    gradients: int  # encoder gradients alive at the peak
    optimizer: int  # encoder optimizer state
    decoders: int  # decoder weights, buffers, optimizer state and gradients alive at the peak
    activations: int  # everything else alive: saved tensors, gradients in flight, the batch and views
    where: str  # the local stage (LoCo: unit) running at the peak, or "optimizer step"

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.decoders + self.activations


@contextlib.contextmanager
def _direct_autograd():
    """``torch.autograd.backward``/``grad`` and ``Tensor.backward`` as direct calls of the
    autograd engine while the step runs on meta tensors: the same passes, the same tensors, but
    without the Python shape checks of their gradient arguments, whose sympy-backed helpers
    cost ~0.5 s to import (``archspec profile`` runs this). The engine handle is private: where
    it is missing, nothing is replaced."""
    engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
    if engine is None:
        yield
        return

    def seeds(tensors, grads):
        grads = (grads,) if isinstance(grads, torch.Tensor) or grads is None else tuple(grads)
        grads = grads if len(grads) == len(tensors) else (None,) * len(tensors)
        return tuple(t.new_empty(t.shape) if g is None else g for t, g in zip(tensors, grads))

    def as_tuple(x):
        return (x,) if isinstance(x, torch.Tensor) else tuple(x or ())

    def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, grad_variables=None,
                 inputs=None):
        tensors = as_tuple(tensors)
        engine.run_backward(tensors, seeds(tensors, grad_tensors), bool(retain_graph), create_graph,
                            as_tuple(inputs), True, True)

    def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, **_):
        outputs = as_tuple(outputs)
        return engine.run_backward(outputs, seeds(outputs, grad_outputs), bool(retain_graph), create_graph,
                                   as_tuple(inputs), True, False)

    def tensor_backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        backward((self,), gradient, retain_graph, create_graph, inputs=inputs)

    saved = torch.autograd.backward, torch.autograd.grad, torch.Tensor.backward
    torch.autograd.backward, torch.autograd.grad, torch.Tensor.backward = backward, grad, tensor_backward
    try:
        yield
    finally:
        torch.autograd.backward, torch.autograd.grad, torch.Tensor.backward = saved


def step_peak(spec: Spec, method: str, batch: int, dtype: torch.dtype = torch.float32, optimizer: str = "sgd",
              decoder: DecoderConfig = DecoderConfig(), weight_decay: float = 1e-6, exclude_bn_bias: bool = True,
              net=None) -> StepPeak:
    """The peak of one steady-state training step of ``method`` at ``batch`` images (two views
    each) of ``spec``'s input size; ``weight_decay`` and ``exclude_bn_bias`` as the config's
    optimizer section (they decide the update's temporaries). ``net``: the spec's StagedNet on
    the meta device, if built."""
    from archspec.nn.compiler import StagedNet
    from archspec.train.methods import build_decoders, build_method, trainable_modules
    from archspec.train.optim import param_groups

    with torch.device("meta"):
        if net is None:
            net = StagedNet(spec).to(dtype)
        decoders = build_decoders(net, method, decoder).to(dtype)
    for p in net.parameters():
        p.grad = None  # as the runner, before every step
    runner = build_method(method, net, decoders)
    trained = [p for name in net.stage_names for p in getattr(net, name).parameters()]
    dec_params = list(decoders.parameters())
    resident = list(net.parameters()) + list(net.buffers())
    dec_resident = dec_params + list(decoders.buffers())
    bpe = torch.empty(0, dtype=dtype).element_size()
    states = OPTIMIZER_STATES[optimizer]

    tracker = TensorMemory(resident + dec_resident, record=True)
    labels = runner.labels
    run_group = runner.run_group

    def labelled(k, x):  # what runs at the peak: LoCo's unit k holds stages k-1 and k
        tracker.label = f"({labels[k - 1]}, {labels[k]})" if method == "loco" and k else labels[k]
        return run_group(k, x)

    runner.run_group = labelled
    c, (h, w) = spec.input_channels, spec.input_size
    with lenient_norms(), _direct_autograd(), tracker:  # lenient_norms: any size, even 1 value per channel
        images = torch.empty(batch, c, h, w, device="meta", dtype=dtype)
        views = (torch.empty(images.shape, device="meta", dtype=dtype), torch.empty(images.shape, device="meta", dtype=dtype))
        runner.step(*views)
    live = tracker.live_at_peak()
    grads = {tracker.number(p.grad): p.grad.untyped_storage().nbytes() for p in trained if p.grad is not None}
    dec_grads = {tracker.number(p.grad): p.grad.untyped_storage().nbytes() for p in dec_params if p.grad is not None}
    at_peak = lambda keys: sum(size for key, size in live.items() if key in keys)  # noqa: E731
    weights, dec_weights = held_bytes(resident), held_bytes(dec_resident)
    state = states * sum(p.numel() for p in trained) * bpe
    dec_state = states * sum(p.numel() for p in dec_params) * bpe
    backward = StepPeak(weights=weights, gradients=at_peak(grads), optimizer=state,
                        decoders=dec_weights + dec_state + at_peak(dec_grads),
                        activations=tracker.peak - at_peak(grads) - at_peak(dec_grads), where=tracker.peak_label)
    # The optimizer step: every gradient, the batch and views (still referenced), the update's temporaries.
    inputs = held_bytes([images, *views])
    groups = param_groups(trainable_modules(net, decoders), weight_decay, exclude_bn_bias)
    update = StepPeak(weights=weights, gradients=sum(grads.values()), optimizer=state,
                      decoders=dec_weights + dec_state + sum(dec_grads.values()),
                      activations=inputs + update_temporaries(optimizer, groups, bpe), where="optimizer step")
    return max(backward, update, key=lambda p: p.total)
