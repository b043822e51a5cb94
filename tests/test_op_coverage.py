"""The traced counter on the layers CNNs use: every op in a named class, forward and backward,
against hand-written formulas; unknown ops listed with their call counts; ops outside every
named stage in their own 'unattributed' row."""
import pytest
import torch
from torch import nn

from archspec.profiling.traced import UNATTRIBUTED, trace

N, C, H, W = 2, 4, 8, 8
E = N * C * H * W  # elements of the test map


def traced(module, x=None, stages=None):
    module = module.to("meta")
    if x is None:
        x = torch.empty(N, C, H, W, device="meta", requires_grad=True)
    return trace(module, stages or {"m": module}, x)


def nonzero(counts):
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("layer", [nn.ReLU6(), nn.ReLU6(inplace=True), nn.Hardtanh(), nn.LeakyReLU(), nn.GELU(),
                                   nn.SiLU(), nn.SiLU(inplace=True), nn.Hardswish(), nn.Hardsigmoid(), nn.Sigmoid(),
                                   nn.Tanh(), nn.ELU(), nn.Softplus()], ids=lambda m: repr(m))
def test_activations_count_one_per_element_as_act(layer):
    class Wrap(nn.Module):  # x * 1 first, so that an in-place activation does not hit a leaf
        def __init__(self):
            super().__init__()
            self.act = layer

        def forward(self, x):
            return self.act(x + 0)

    t = traced(Wrap())["m"]
    assert nonzero(t.forward) == {"act": E, "add": E}
    assert nonzero(t.backward) == {"act": E}
    assert t.unknown == {}


def test_relu_keeps_its_own_class():
    t = traced(nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.ReLU(inplace=True)))["m"]
    assert nonzero(t.forward) == {"conv": E * C, "relu": E}


def test_conv_bias_and_depthwise_conv():
    t = traced(nn.Conv2d(C, 6, 3, padding=1))["m"]
    out = N * 6 * H * W
    assert nonzero(t.forward) == {"conv": out * C * 9, "bias": out}
    # grad input + grad weight, and the bias gradient (a sum of the output gradient)
    assert nonzero(t.backward) == {"conv": 2 * out * C * 9, "bias": out}
    dw = traced(nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False))["m"]
    assert nonzero(dw.forward) == {"conv": E * 9}  # (Cin / groups) = 1 input channel per output


def test_linear_with_bias():
    fc = nn.Linear(10, 3)
    t = traced(fc, torch.empty(N, 10, device="meta", requires_grad=True))["m"]
    assert nonzero(t.forward) == {"fc": N * 10 * 3, "bias": N * 3}
    assert nonzero(t.backward) == {"fc": 2 * N * 10 * 3, "bias": N * 3}
    assert t.unknown == {}


@pytest.mark.parametrize("layer, forward, backward", [
    (nn.AvgPool2d(2, 2), 4 * E // 4, E),  # k*k per output element; the gradient: 1 per input element
    (nn.MaxPool2d(2, 2), 4 * E // 4, E),
    (nn.AdaptiveAvgPool2d(2), E, E),  # adaptive pools: 1 per input element
    (nn.AdaptiveAvgPool2d(1), E, E),  # global: a mean, and an expand + divide in backward
    (nn.AdaptiveMaxPool2d(2), E, E),
    (nn.AdaptiveMaxPool2d(1), E, E),
], ids=lambda v: repr(v) if isinstance(v, nn.Module) else None)
def test_pools(layer, forward, backward):
    t = traced(layer)["m"]
    assert nonzero(t.forward) == {"pool": forward}
    assert nonzero(t.backward) == {"pool": backward}
    assert t.unknown == {}


@pytest.mark.parametrize("layer", [nn.LayerNorm([C, H, W]), nn.GroupNorm(2, C)], ids=["layer_norm", "group_norm"])
def test_layer_and_group_norm(layer):
    t = traced(layer)["m"]
    assert nonzero(t.forward) == {"norm": E}
    assert nonzero(t.backward) == {"norm": 2 * E}


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.Dropout2d(0.2)], ids=["dropout", "dropout2d"])
def test_dropout_counts_the_mask_product_only(layer):
    t = traced(layer)["m"]
    assert nonzero(t.forward) == {"dropout": E}
    assert nonzero(t.backward) == {"dropout": E}
    assert t.unknown == {}
    layer.eval()
    assert nonzero(traced(layer)["m"].forward) == {}


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Conv2d(C, C, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(self.pool(x)))


def test_squeeze_excitation_gate():
    t = traced(SqueezeExcite())["m"]
    assert nonzero(t.forward) == {"pool": E, "conv": N * C * C, "bias": N * C, "act": N * C, "mul": E}
    # backward: two products (grad * gate, grad * x), the broadcast gate's gradient summed (mul),
    # the sigmoid, the conv (grad input + grad weight) and its bias, the pool's expand + divide,
    # and the two gradients of x accumulated (add)
    assert nonzero(t.backward) == {"mul": 3 * E, "act": N * C, "conv": 2 * N * C * C, "bias": N * C, "pool": E,
                                   "add": E}


def test_unknown_ops_are_listed_with_their_call_counts():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(torch.cumsum(x, 1), 2).exp()

    t = traced(Odd())["m"]
    assert t.unknown["aten.cumsum"] == 2 + 2  # forward and backward (cumsum's gradient is a cumsum)
    assert "aten.exp" in t.unknown


class TwoStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(C, C, 1, bias=False)
        self.b = nn.Conv2d(C, C, 1, bias=False)

    def forward(self, x):
        x = self.a(x)
        x = torch.sigmoid(x) * 2  # outside both stages
        return self.b(x)


def test_ops_between_stages_are_unattributed_forward_and_backward():
    model = TwoStages().to("meta")
    x = torch.empty(N, C, H, W, device="meta")
    result = trace(model, {"a": model.a, "b": model.b}, x)
    assert list(result) == ["a", "b", UNATTRIBUTED]
    conv = E * C
    assert nonzero(result["a"].forward) == {"conv": conv}
    assert nonzero(result["b"].forward) == {"conv": conv}
    assert nonzero(result["a"].backward) == {"conv": conv}  # grad weight only: the input needs none
    assert nonzero(result["b"].backward) == {"conv": 2 * conv}
    between = result[UNATTRIBUTED]
    assert nonzero(between.forward) == {"act": E, "mul": E}
    assert nonzero(between.backward) == {"mul": E, "act": E}
    # the sigmoid saves its output (for backward): charged to the unattributed row, not to a or b
    assert between.saved_bytes == E * 4
    assert result["a"].saved_bytes == E * 4  # a's input
    assert result["b"].saved_bytes == E * 4  # b's input (the product)


def test_no_unattributed_row_when_stages_cover_everything():
    model = TwoStages().to("meta")
    x = torch.empty(N, C, H, W, device="meta")
    result = trace(model, {"all": model}, x)
    assert list(result) == ["all"]


def test_every_op_of_the_shipped_specs_has_a_rule():
    from archspec.profiling.profiler import profile
    from archspec.spec import available, load_spec

    for name in available():
        assert profile(load_spec(name), batch=2, training=False).unknown == {}, name
