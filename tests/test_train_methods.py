"""Where losses sit and where gradients stop (SimCLR, GIM, LoCo), checked on parameters;
LoCo's single forward per stage; NT-Xent, LARS and the schedule."""
import math

import pytest
import torch

from archspec.nn.compiler import compile_spec
from archspec.nn.decoders import DecoderConfig
from archspec.spec import loads
from archspec.train.losses import nt_xent
from archspec.train.methods import build_decoders, build_method
from archspec.train.optim import LARS, WarmupCosine, build_optimizer, param_groups

from .conftest import LABELS, MICRO

GROUPS = [["conv1", "res2"], ["res3"], ["res4"], ["res5"]]
DEC = DecoderConfig(hidden=16, out=8)

pytestmark = pytest.mark.usefixtures("one_thread")


def setup(method, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = compile_spec(loads(MICRO)).to(dtype)
    decoders = build_decoders(net, method, DEC).to(dtype)
    views = [torch.rand(6, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    return net, decoders, build_method(method, net, decoders, temperature=0.5), views


def clear(*modules):
    for m in modules:
        for p in m.parameters():
            p.grad = None


def stages_with_grad(net):
    """Local-stage labels whose parameters all received a nonzero gradient (and a check that
    no stage is half-touched)."""
    touched = []
    for label, group in zip(LABELS, GROUPS):
        flags = [p.grad is not None and bool(p.grad.abs().sum() > 0)
                 for name in group for p in getattr(net, name).parameters()]
        assert all(flags) or not any(flags), f"{label}: some parameters got gradient, some not"
        if all(flags):
            touched.append(label)
    return touched


def per_loss_gradients(method):
    """For each loss alone (the others weighted 0): which stages and decoders it reaches."""
    net, decoders, m, (v1, v2) = setup(method)
    reach = {}
    for label in decoders:
        clear(net, decoders)
        m.step(v1, v2, weights={other: float(other == label) for other in decoders})
        decs = [d for d, mod in decoders.items() if any(p.grad is not None and p.grad.abs().sum() > 0
                                                         for p in mod.parameters())]
        assert decs == [label]
        reach[label] = stages_with_grad(net)
    return reach


def test_simclr_one_loss_reaches_every_stage():
    assert per_loss_gradients("simclr") == {"res5": LABELS}


def test_gim_each_loss_reaches_only_its_own_stage():
    assert per_loss_gradients("gim") == {label: [label] for label in LABELS}


def test_loco_unit_reaches_its_two_stages_and_no_further():
    reach = per_loss_gradients("loco")
    assert reach == {"conv1+res2": ["conv1+res2"], "res3": ["conv1+res2", "res3"],
                     "res4": ["res3", "res4"], "res5": ["res4", "res5"]}
    # Read the other way: stage k gets gradient from units k and k+1 only.
    sources = {label: [u for u, stages in reach.items() if label in stages] for label in LABELS}
    assert sources == {"conv1+res2": ["conv1+res2", "res3"], "res3": ["res3", "res4"],
                       "res4": ["res4", "res5"], "res5": ["res5"]}


def run_groups(net, groups, x):
    for g in groups:
        for name in g:
            x = getattr(net, name)(x)
    return x


def test_loco_gradients_equal_recomputing_each_unit():
    """The single-forward LoCo step gives the gradients of the textbook definition: every unit
    recomputed from its detached input, its loss back-propagated through its two stages."""
    net, decoders, m, (v1, v2) = setup("loco", dtype=torch.float64)
    losses = m.step(v1, v2)
    fast = {n: p.grad.clone() for n, p in list(net.named_parameters()) + list(decoders.named_parameters())
            if p.grad is not None}
    clear(net, decoders)
    x = torch.cat([v1, v2])
    with torch.no_grad():  # inputs of every local stage (batch norm: batch statistics in train mode)
        inputs = [x]
        for g in GROUPS[:-1]:
            inputs.append(run_groups(net, [g], inputs[-1]))
    for k, label in enumerate(LABELS):
        y = run_groups(net, GROUPS[max(0, k - 1):k + 1], inputs[max(0, k - 1)])
        loss = m.loss(label, y)
        assert torch.allclose(loss, losses[label])
        loss.backward()
    slow = {n: p.grad for n, p in list(net.named_parameters()) + list(decoders.named_parameters())
            if p.grad is not None}
    assert fast.keys() == slow.keys()
    for n in fast:
        assert torch.allclose(fast[n], slow[n], rtol=1e-9, atol=1e-12), n


@pytest.mark.parametrize("method, calls", [("simclr", 1), ("gim", 1), ("loco", 1)])
def test_each_stage_runs_forward_once_per_step(method, calls):
    net, decoders, m, (v1, v2) = setup(method)
    counts = {}
    for name in net.stage_names:
        getattr(net, name).register_forward_hook(lambda mod, i, o, name=name: counts.__setitem__(
            name, counts.get(name, 0) + 1))
    for label, dec in decoders.items():
        dec.register_forward_hook(lambda mod, i, o, label=label: counts.__setitem__(
            "dec:" + label, counts.get("dec:" + label, 0) + 1))
    m.step(v1, v2)
    m.step(v1, v2)
    assert all(counts[name] == 2 * calls for name in net.stage_names), counts
    assert all(counts["dec:" + label] == 2 for label in decoders), counts


def test_losses_keyed_by_local_stage():
    for method, keys in [("simclr", ["res5"]), ("gim", LABELS), ("loco", LABELS)]:
        net, decoders, m, (v1, v2) = setup(method)
        assert list(decoders) == keys
        losses = m.step(v1, v2)
        assert list(losses) == keys and all(math.isfinite(float(v)) for v in losses.values())


def test_nt_xent_matches_definition():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = 0.3
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(10):
        j = (i + 5) % 10
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(10) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / den)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(total / 10, rel=1e-10)
    # Identical views score far better than unrelated ones.
    assert nt_xent(z1, z1, 0.1) < nt_xent(z1, z2, 0.1)


def test_lars_update_and_exclusions():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]).reshape(1, 2))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    module = torch.nn.Module()
    module.w, module.b = w, b
    groups = param_groups([module], weight_decay=0.1, exclude_bn_bias=True)
    assert [len(g["params"]) for g in groups] == [1, 1] and groups[1]["weight_decay"] == 0.0
    opt = LARS(groups, lr=0.5, momentum=0.9, trust_coefficient=0.01)
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[0.3, 1.4]])  # grad + 0.1 * w
    trust = 0.01 * 5 / float(g.norm())
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * g)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # no adaptation, no decay
    w.grad, b.grad = torch.zeros(1, 2), torch.zeros(1)
    before = w.detach().clone()
    opt.step()  # momentum carries the previous update (the decay term is adapted too)
    assert not torch.equal(w.detach(), before)
    assert isinstance(build_optimizer("sgd", groups, lr=0.1), torch.optim.SGD)
    assert isinstance(build_optimizer("adam", groups, lr=0.1), torch.optim.Adam)


def test_warmup_cosine_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = WarmupCosine(opt, total_steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[:4] == [0.5, 1.0, 1.5, 2.0]
    assert lrs[4] == 2.0 and all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    state = sched.state_dict()
    opt2 = torch.optim.SGD([p], lr=2.0)
    sched2 = WarmupCosine(opt2, total_steps=10, warmup_steps=4)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
