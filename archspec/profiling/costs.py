"""The cost of every layer op (archspec.spec.walk.Layer), one table (fvcore keeps its op
handlers the same way): parameters and multiply-accumulates per image by op class.

MACs (FLOPs = 2 x MACs), see docs/profile.md:

    conv     Cout * Hout * Wout * (Cin / groups) * k * k   (depthwise convs too; the bias is 'bias')
    fc       in_features * out_features                    (the bias is 'bias')
    bias     1 per output element of a conv or fc that has a bias
    bn       1 per element (batch norm's per-channel scale and shift)
    norm     1 per element (layer norm, group norm; instance norm runs as batch norm: 'bn')
    relu     1 per element (ReLU)
    act      1 per element (every other activation: ReLU6/Hardtanh, LeakyReLU, GELU, SiLU,
             Hardswish, Hardsigmoid, Sigmoid, Tanh, ELU, Softplus)
    add      1 per element (residual additions)
    mul      1 per element (elementwise products: squeeze-excitation's gating)
    pool     k * k per output element (max and average pools with a window); 1 per input element
             (global and adaptive pools)
    interp   4 per output element (bilinear: a weighted sum of 4 neighbours)
    dropout  1 per element (the mask's product; training mode only)

Every cost is plain arithmetic on the layer's sizes, so it works on ints (a spec) and on numpy
arrays (the design evaluator's thousands of candidates at once). The traced profile
(archspec.profiling.traced) counts the same classes from the ops torch runs, independently.
"""
from __future__ import annotations

# The op classes every count is broken down by, in the order tables show them.
OP_CLASSES = ("conv", "fc", "bias", "bn", "norm", "relu", "act", "add", "mul", "pool", "interp", "dropout")


def _elems(shape) -> object:
    c, h, w = shape
    return c * h * w


def act_class(activation: str) -> str:
    """The op class an activation's cost goes to."""
    return "relu" if activation == "relu" else "act"


def _conv(layer):
    cin, cout = layer.shape_in[0], layer.shape_out[0]
    n = _elems(layer.shape_out)
    params = layer.kernel * layer.kernel * (cin // layer.groups) * cout + (cout if layer.bias else 0)
    macs = {"conv": n * (cin // layer.groups) * layer.kernel * layer.kernel}
    if layer.bias:
        macs["bias"] = n
    return params, macs


def _fc(layer):
    cin, cout = layer.shape_in[0], layer.shape_out[0]
    return cin * cout + (cout if layer.bias else 0), {"fc": cin * cout, **({"bias": cout} if layer.bias else {})}


COSTS = {  # op -> (layer -> (parameters, {op class: MACs}))
    "conv": _conv,
    "fc": _fc,
    "bn": lambda layer: (2 * layer.shape_out[0], {"bn": _elems(layer.shape_out)}),
    "act": lambda layer: (0, {act_class(layer.activation): _elems(layer.shape_out)}),
    "add": lambda layer: (0, {"add": _elems(layer.shape_out)}),
    "mul": lambda layer: (0, {"mul": _elems(layer.shape_out)}),
    "pool": lambda layer: (0, {"pool": _elems(layer.shape_out) * layer.kernel * layer.kernel}),
    "gpool": lambda layer: (0, {"pool": _elems(layer.shape_in)}),
    "interp": lambda layer: (0, {"interp": 4 * _elems(layer.shape_out)}),
    "dropout": lambda layer: (0, {"dropout": _elems(layer.shape_in)}),
}


def layer_cost(layer):
    """(parameters, {op class: MACs}) of one layer, times the times it runs."""
    params, macs = COSTS[layer.op](layer)
    if isinstance(layer.times, int) and layer.times == 1:
        return params, macs
    return params * layer.times, {op: value * layer.times for op, value in macs.items()}
