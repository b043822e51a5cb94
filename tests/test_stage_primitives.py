"""The per-stage primitives of archspec.train.methods, which the single-process step and both
schedules of one process per local stage compose: composed by hand, stage by stage with the
graph cut at every border (as between ranks), they give Method.step's gradients bitwise; what
each method sends down (LoCo: J_k^T a_k alone; SimCLR: J_k^T of the gradient from above; GIM:
nothing); the traits; the snapshot path of the pipelined schedule."""
import inspect

import pytest
import torch

from archspec.nn.compiler import compile_spec
from archspec.nn.decoders import DecoderConfig
from archspec.spec import loads
from archspec.train import schedule
from archspec.train.methods import build_decoders, build_method

from .conftest import LABELS, MICRO

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = ("simclr", "gim", "loco")


def setup(method, dtype=torch.float32):
    torch.manual_seed(0)
    net = compile_spec(loads(MICRO)).to(dtype)
    decoders = build_decoders(net, method, DecoderConfig(hidden=16, out=8)).to(dtype)
    x = torch.rand(12, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return build_method(method, net, decoders, temperature=0.5), x


def state(m):
    """Every gradient and buffer of the method's net and decoders, by name."""
    named = list(m.net.named_parameters()) + list(m.decoders.named_parameters())
    grads = {n: p.grad for n, p in named}
    return grads, {n: b for n, b in m.net.named_buffers()}


def by_hand(m, x):
    """The sync schedule's composition in one process: every stage's forward, loss and early
    gradient down on an input cut from the stage below, then the backward passes from the top,
    each stage given what the stage above sent down."""
    passes = []
    for k in range(len(m.groups)):
        inp = m.stage_input(k, x)
        y = m.run_group(k, inp)
        _, a = m.stage_loss(k, y, 1.0)
        passes.append((inp, y, a, m.grad_down_early(k, inp, y, a)))
        x = y.detach()
    sent = None  # what stage k+1 sent down
    for k in reversed(range(len(m.groups))):
        inp, y, a, early = passes[k]
        late = m.stage_backward(k, inp, y, a, sent if m.waits(k) else None, m.group_params(k))
        assert early is None or late is None, "a stage sends one gradient down"
        sent = early if early is not None else late


@pytest.mark.parametrize("method", METHODS)
def test_the_primitives_composed_stage_by_stage_give_the_steps_gradients(method):
    m, x = setup(method)
    m.step(*x.chunk(2))
    grads, buffers = state(m)
    hand, _ = setup(method)
    by_hand(hand, x)
    hand_grads, hand_buffers = state(hand)
    assert grads.keys() == hand_grads.keys()
    for name, g in grads.items():
        assert g is not None and torch.equal(g, hand_grads[name]), name
    assert all(torch.equal(b, hand_buffers[n]) for n, b in buffers.items())


def inputs(m, x):
    """Every local stage's input (no graph)."""
    with torch.no_grad():
        xs = [x]
        for k in range(len(m.groups) - 1):
            xs.append(m.run_group(k, xs[-1]))
    return xs


def input_gradient(m, k, x, grad_y=None):
    """The gradient at stage k's input of loss k (``grad_y`` None) or of <y_k, grad_y>,
    recomputed on a fresh leaf."""
    leaf = x.detach().clone().requires_grad_(True)
    y = m.run_group(k, leaf)
    if grad_y is None:
        return torch.autograd.grad(m.loss(m.labels[k], y), leaf)[0]
    return torch.autograd.grad(y, leaf, grad_y)[0]


def test_loco_sends_down_its_own_units_gradient_alone():
    m, x = setup("loco", torch.float64)
    xs, last = inputs(m, x), len(m.groups) - 1
    for k in range(1, last + 1):
        inp = m.stage_input(k, xs[k])
        y = m.run_group(k, inp)
        _, a = m.stage_loss(k, y)
        early = m.grad_down_early(k, inp, y, a)
        above = None if k == last else torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(k))
        late = m.stage_backward(k, inp, y, a, above, m.group_params(k))
        down = early if k < last else late
        assert (early is None) == (k == last) and (late is None) == (k < last)
        own = input_gradient(m, k, xs[k])  # J_k^T a_k
        assert torch.allclose(down, own, rtol=1e-10, atol=1e-13), LABELS[k]
        if above is not None:  # not J_k^T (a_k + b_{k+1}), which stage k's weights get
            assert not torch.allclose(down, input_gradient(m, k, xs[k], a + above), rtol=1e-3)
            weights = torch.autograd.grad(m.run_group(k, xs[k]), m.group_params(k), a + above)
            assert all(torch.allclose(p.grad, g, rtol=1e-10, atol=1e-13) for p, g in zip(m.group_params(k), weights))
    inp = m.stage_input(0, xs[0])  # the first stage sends nothing
    y = m.run_group(0, inp)
    _, a = m.stage_loss(0, y)
    assert not inp.requires_grad and m.grad_down_early(0, inp, y, a) is None
    assert m.stage_backward(0, inp, y, a, torch.zeros_like(y), m.group_params(0)) is None


def test_simclr_sends_down_the_gradient_from_above_through_its_stage():
    m, x = setup("simclr", torch.float64)
    xs, last = inputs(m, x), len(m.groups) - 1
    for k in range(1, last):
        inp = m.stage_input(k, xs[k])
        y = m.run_group(k, inp)
        assert m.stage_loss(k, y) == (None, None)  # no decoder below the last stage
        assert m.grad_down_early(k, inp, y, None) is None
        above = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(k))
        down = m.stage_backward(k, inp, y, None, above, m.group_params(k))
        assert torch.allclose(down, input_gradient(m, k, xs[k], above), rtol=1e-10, atol=1e-13), LABELS[k]
        assert not torch.allclose(down, input_gradient(m, k, xs[k], 2 * above), rtol=1e-3)
    inp = m.stage_input(last, xs[last])
    y = m.run_group(last, inp)
    m.stage_loss(last, y)
    down = m.stage_backward(last, inp, y, None, None, m.group_params(last))
    assert torch.allclose(down, input_gradient(m, last, xs[last]), rtol=1e-10, atol=1e-13)


def test_gim_sends_nothing_down_and_keeps_no_input_gradient():
    m, x = setup("gim")
    for k, xk in enumerate(inputs(m, x)):
        inp = m.stage_input(k, xk)
        y = m.run_group(k, inp)
        loss, a = m.stage_loss(k, y)
        assert loss is not None and a is None and not inp.requires_grad
        assert m.grad_down_early(k, inp, y, a) is None
        assert m.stage_backward(k, inp, y, a, None, m.group_params(k)) is None
        assert all(p.grad is not None for p in m.group_params(k))


@pytest.mark.parametrize("method, needs, waits", [
    ("simclr", [False, True, True, True], [True, True, True, False]),
    ("gim", [False] * 4, [False] * 4),
    ("loco", [False, True, True, True], [True, True, True, False])])
def test_traits(method, needs, waits):
    m, _ = setup(method)
    assert [m.needs_input_grad(k) for k in range(4)] == needs
    assert [m.waits(k) for k in range(4)] == waits
    assert m.sends_early == (method == "loco")  # what makes a method that sends gradients down pipelinable


def test_a_snapshot_of_the_weights_computes_what_the_weights_do():
    """The pipelined schedule's delayed stage: its forward and loss on copies of its weights
    (torch.func.functional_call); the decoder's gradient lands on the copies."""
    m, x = setup("loco")
    k, label = 1, LABELS[1]
    copy = lambda mod: {n: p.detach().clone().requires_grad_(True) for n, p in mod.named_parameters()}  # noqa: E731
    stage = {name: copy(getattr(m.net, name)) for name in m.groups[k]}
    decoder = copy(m.decoders[label])
    xk = inputs(m, x)[k]
    y = m.run_group(k, m.stage_input(k, xk))
    y_snap = m.run_group(k, m.stage_input(k, xk), stage)
    assert torch.equal(y, y_snap)
    loss, a = m.stage_loss(k, y)
    loss_snap, a_snap = m.stage_loss(k, y_snap, params=decoder)
    assert torch.equal(loss, loss_snap) and torch.equal(a, a_snap)
    for n, p in m.decoders[label].named_parameters():
        assert torch.equal(p.grad, decoder[n].grad), n


def test_the_schedules_ask_the_method_not_its_name():
    source = inspect.getsource(schedule.Schedules)
    assert "cfg.method" not in source and not any(f'"{name}"' in source for name in METHODS)
