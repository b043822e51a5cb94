"""The traced counter on the layers CNNs use: every op in a named class, forward and backward,
against hand-written formulas; unknown ops listed with their call counts; ops outside every
named stage in their own 'unattributed' row."""
import pytest
import torch
from torch import nn

from archspec.profiling.traced import UNATTRIBUTED, trace

N, C, H, W = 2, 4, 8, 8
E = N * C * H * W  # elements of the test map


def traced(module, x=None, stages=None, device="meta"):
    module = module.to(device)
    if x is None:
        x = torch.empty(N, C, H, W, device=device, requires_grad=True)
    return trace(module, stages or {"m": module}, x)


def nonzero(counts):
    return {k: v for k, v in counts.items() if v}


class Wrap(nn.Module):
    """``layer(x + 0)``: the add keeps an in-place layer off the leaf input."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x + 0)


ACTIVATIONS = [nn.ReLU6(), nn.ReLU6(inplace=True), nn.Hardtanh(), nn.LeakyReLU(), nn.LeakyReLU(inplace=True),
               nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.SiLU(inplace=True), nn.Hardswish(), nn.Hardsigmoid(),
               nn.Sigmoid(), nn.Tanh(), nn.ELU(), nn.ELU(inplace=True), nn.Mish(), nn.Mish(inplace=True),
               nn.Softplus()]


@pytest.mark.parametrize("layer", ACTIVATIONS, ids=repr)
def test_activations_count_one_per_element_as_act(layer):
    t = traced(Wrap(layer))["m"]
    assert nonzero(t.forward) == {"act": E, "add": E}
    assert nonzero(t.backward) == {"act": E}  # the gradient, 1 per element (the add's backward is free)
    assert t.unknown == {}


def test_mish_backward_counts_once_and_leaves_gradient_accumulation_counted():
    """On meta, Mish's backward decomposes into a dozen ops (softplus, tanh, sigmoid, products,
    a sum): one 'act' per element all the same. Its input is used twice, so autograd adds the
    two gradients after Mish's backward, under its node: that add still counts."""

    class MishSkip(nn.Module):
        def forward(self, x):
            x = x + 0
            return nn.functional.mish(x) + x

    for device in ("meta", "cpu"):  # on CPU mish_backward is a single op
        t = traced(MishSkip(), device=device)["m"]
        assert nonzero(t.forward) == {"act": E, "add": 2 * E}, device
        assert nonzero(t.backward) == {"act": E, "add": E}, device
        assert t.unknown == {}, device


def test_relu_keeps_its_own_class():
    t = traced(nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.ReLU(inplace=True)))["m"]
    assert nonzero(t.forward) == {"conv": E * C, "relu": E}
    assert nonzero(t.backward) == {"conv": 2 * E * C, "relu": E}


def test_conv_bias_and_depthwise_conv():
    t = traced(nn.Conv2d(C, 6, 3, padding=1))["m"]
    out = N * 6 * H * W
    assert nonzero(t.forward) == {"conv": out * C * 9, "bias": out}
    # grad input + grad weight, and the bias gradient (a sum of the output gradient)
    assert nonzero(t.backward) == {"conv": 2 * out * C * 9, "bias": out}
    assert t.conv_output_elems == out
    dw = traced(nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False))["m"]
    assert nonzero(dw.forward) == {"conv": E * 9}  # (Cin / groups) = 1 input channel per output
    assert nonzero(dw.backward) == {"conv": 2 * E * 9}
    grouped = traced(nn.Conv2d(C, 8, 1, groups=2, bias=False))["m"]
    assert nonzero(grouped.forward) == {"conv": N * 8 * H * W * (C // 2)}


def test_conv_without_input_gradient_counts_grad_weight_only():
    x = torch.empty(N, C, H, W, device="meta")  # no requires_grad: no grad input
    t = traced(nn.Conv2d(C, 6, 3, padding=1), x)["m"]
    out = N * 6 * H * W
    assert nonzero(t.backward) == {"conv": out * C * 9, "bias": out}


def test_transposed_conv():
    # weight (Cin, Cout / groups, k, k): every input element, (Cout / groups) * k * k multiply-adds
    t = traced(nn.ConvTranspose2d(C, 6, 3, stride=2, groups=2))["m"]
    macs = E * (6 // 2) * 9
    out = N * 6 * 17 * 17
    assert nonzero(t.forward) == {"conv": macs, "bias": out}
    assert nonzero(t.backward) == {"conv": 2 * macs, "bias": out}


def test_linear_with_bias():
    fc = nn.Linear(10, 3)
    t = traced(fc, torch.empty(N, 10, device="meta", requires_grad=True))["m"]
    assert nonzero(t.forward) == {"fc": N * 10 * 3, "bias": N * 3}
    # mm for grad input, mm for grad weight, the bias gradient: a sum of the output gradient over rows
    assert nonzero(t.backward) == {"fc": 2 * N * 10 * 3, "bias": N * 3}
    assert t.unknown == {}
    t = traced(nn.Linear(10, 3, bias=False), torch.empty(N, 10, device="meta", requires_grad=True))["m"]
    assert nonzero(t.forward) == {"fc": N * 10 * 3}
    assert nonzero(t.backward) == {"fc": 2 * N * 10 * 3}


@pytest.mark.parametrize("layer, forward, backward", [
    (nn.AvgPool2d(2, 2), 4 * E // 4, E),  # k*k per output element; the gradient: 1 per input element
    (nn.AvgPool2d(3, 1, 1), 9 * E, E),
    (nn.MaxPool2d(2, 2), 4 * E // 4, E),
    (nn.MaxPool2d(3, 2, 1), 9 * N * C * 4 * 4, E),
    (nn.AdaptiveAvgPool2d(2), E, E),  # adaptive pools: 1 per input element
    (nn.AdaptiveAvgPool2d(1), E, E),  # global: a mean, and an expand + divide in backward
    (nn.AdaptiveMaxPool2d(2), E, E),
    (nn.AdaptiveMaxPool2d(1), E, E),
], ids=lambda v: repr(v) if isinstance(v, nn.Module) else "")
def test_pools(layer, forward, backward):
    t = traced(layer)["m"]
    assert nonzero(t.forward) == {"pool": forward}
    assert nonzero(t.backward) == {"pool": backward}
    assert t.unknown == {}


@pytest.mark.parametrize("layer", [nn.LayerNorm([C, H, W]), nn.GroupNorm(2, C), nn.GroupNorm(C, C, affine=False)],
                         ids=["layer_norm", "group_norm", "instance_like_group_norm"])
def test_layer_and_group_norm(layer):
    t = traced(layer)["m"]
    assert nonzero(t.forward) == {"norm": E}
    assert nonzero(t.backward) == {"norm": 2 * E}
    assert t.unknown == {}


def test_batch_norm_bookkeeping_is_free():
    t = traced(nn.BatchNorm2d(C))["m"]  # num_batches_tracked += 1 is a 0-dim add: not counted
    assert nonzero(t.forward) == {"bn": E}
    assert nonzero(t.backward) == {"bn": 2 * E}
    assert t.unknown == {}


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.Dropout2d(0.2)], ids=["dropout", "dropout2d"])
def test_dropout_counts_the_mask_product_only(layer):
    # on CPU and meta, dropout is bernoulli_ (the mask), div_ (its scale) and the product
    for device in ("meta", "cpu"):
        t = traced(layer, device=device)["m"]
        assert nonzero(t.forward) == {"dropout": E}, device
        assert nonzero(t.backward) == {"dropout": E}, device
        assert t.unknown == {}, device
    layer.eval()
    t = traced(layer)["m"]
    assert nonzero(t.forward) == nonzero(t.backward) == {}


def test_fused_dropout():
    """native_dropout (what dropout runs on CUDA) and its backward: 1 per element each."""

    class Fused(nn.Module):
        def forward(self, x):
            return torch.native_dropout(x, 0.5, True)[0]

    t = traced(Fused())["m"]
    assert nonzero(t.forward) == {"dropout": E}
    assert nonzero(t.backward) == {"dropout": E}
    assert t.unknown == {}


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
    assert t.unknown == {}


def test_broadcast_add_gradient_is_an_add():
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = nn.Parameter(torch.zeros(C, 1, 1))

        def forward(self, x):
            return x + self.shift

    t = traced(Shift())["m"]
    assert nonzero(t.forward) == {"add": E}
    assert nonzero(t.backward) == {"add": E}  # the shift's gradient: the output gradient summed
    assert t.unknown == {}


@pytest.mark.parametrize("layer", [Wrap(nn.Mish()), nn.Conv2d(C, 6, 3, padding=1), SqueezeExcite(),
                                   nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, 3)), nn.LayerNorm([C, H, W]),
                                   nn.GroupNorm(2, C), nn.AvgPool2d(2), nn.AdaptiveMaxPool2d(2),
                                   nn.ConvTranspose2d(C, 6, 3, stride=2)], ids=lambda m: type(m).__name__)
def test_cpu_and_meta_count_the_same(layer):
    cpu = traced(layer, device="cpu")["m"]  # a real run first: a module on meta has no values to move back
    layer.zero_grad(set_to_none=True)  # else the meta run accumulates into the CPU run's .grad (adds)
    meta = traced(layer)["m"]
    assert meta.forward == cpu.forward and meta.backward == cpu.backward
    assert meta.unknown == cpu.unknown == {}


def test_unknown_ops_are_listed_with_their_call_counts():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(torch.cumsum(x, 1), 2).exp()

    t = traced(Odd())["m"]
    # forward: 2 cumsums and an exp; backward: each cumsum's gradient is flip, cumsum, flip
    # (exp's gradient is a product with its output: 'mul')
    assert t.unknown == {"aten.cumsum": 2 + 2, "aten.exp": 1, "aten.flip": 4}
    assert nonzero(t.forward) == {}
    assert nonzero(t.backward) == {"mul": E}

    class Sorted(nn.Module):
        def forward(self, x):
            return torch.sort(x, 1).values

    t = traced(Sorted())["m"]
    assert t.unknown == {"aten.sort": 1, "aten.scatter": 1}


class TwoStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(C, C, 1, bias=False)
        self.b = nn.Conv2d(C, C, 1, bias=False)

    def forward(self, x):
        x = self.a(x)
        x = torch.sigmoid(x) * 2 + 1  # outside both stages
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
    assert nonzero(between.forward) == {"act": E, "mul": E, "add": E}
    assert nonzero(between.backward) == {"mul": E, "act": E}  # the add's gradient passes through
    assert between.unknown == {} and between.params == 0
    # the sigmoid saves its output (for backward): charged to the unattributed row, not to a or b
    assert between.saved_bytes == E * 4 and between.saved_tensors == 1
    assert result["a"].saved_bytes == E * 4  # a's input
    assert result["b"].saved_bytes == E * 4  # b's input (the sum)
    assert result["a"].output_shape == result["b"].output_shape == (N, C, H, W)


def test_ops_before_the_first_and_after_the_last_stage_are_unattributed():
    class Around(TwoStages):
        def forward(self, x):
            x = x * 3  # before every stage
            x = self.b(self.a(x))  # adjacent stages: b's input is a's output
            return torch.cumsum(x, 1)  # after every stage

    model = Around().to("meta")
    x = torch.empty(N, C, H, W, device="meta", requires_grad=True)
    result = trace(model, {"a": model.a, "b": model.b}, x)
    conv = E * C
    assert nonzero(result["a"].forward) == nonzero(result["b"].forward) == {"conv": conv}
    assert nonzero(result["a"].backward) == nonzero(result["b"].backward) == {"conv": 2 * conv}
    assert result["a"].unknown == result["b"].unknown == {}
    out = result[UNATTRIBUTED]
    assert nonzero(out.forward) == {"mul": E}
    assert nonzero(out.backward) == {"mul": E}  # x * 3's gradient, after a's backward is done
    assert out.unknown == {"aten.cumsum": 2, "aten.flip": 2}


def test_no_unattributed_row_when_stages_cover_everything():
    model = TwoStages().to("meta")
    x = torch.empty(N, C, H, W, device="meta")
    result = trace(model, {"all": model}, x)
    assert list(result) == ["all"]
    assert result["all"].saved_bytes == 3 * E * 4


def test_every_op_of_the_shipped_specs_has_a_rule():
    from archspec.profiling.profiler import profile
    from archspec.spec import available, load_spec

    for name in available():
        assert profile(load_spec(name), batch=2, training=False).unknown == {}, name
