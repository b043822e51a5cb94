"""archspec.train.replicas: 2 replicas (gloo, CPU) on halves of a batch equal one process on it.

One module fixture spawns the 2 processes once; each runs every case on its half and saves
what it got, and the tests compare with one process on the whole batch here. Tolerances:
float64 rtol 1e-10 / atol 1e-12; float32 rtol 1e-4 / atol 1e-5 (the replicas sum in another
order than nn.BatchNorm2d's kernel and nt_xent's matmul, so float32 differs in the last bits).
"""
from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
from torch import nn

from archspec.errors import UserError
from archspec.train.augment import SimCLRAugment
from archspec.train.losses import nt_xent
from archspec.train.replicas import ReplicaBatchNorm2d, all_reduce_grads, convert_batchnorm, gathered_nt_xent, shard

WORLD, BATCH = 2, 8
DTYPES = (torch.float64, torch.float32)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}
BN_CASES = [(dtype, momentum, affine) for dtype in DTYPES for momentum, affine in ((0.1, True), (None, True),
                                                                                  (0.3, False))]
TEMPERATURE = 0.5


def _bn_inputs(dtype):
    """Two steps' inputs and output gradients, far from zero mean (the two-pass variance matters)."""
    g = torch.Generator().manual_seed(1)
    xs = [(3.0 + 2.0 * torch.randn(BATCH, 3, 5, 4, generator=g, dtype=torch.float64)).to(dtype) for _ in range(2)]
    gys = [torch.randn(BATCH, 3, 5, 4, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]
    return xs, gys


def _bn(dtype, momentum, affine) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3, momentum=momentum, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))
    return bn


def _run_bn(bn, xs, gys, rows=slice(None)):
    """Two training steps (forward, backward of <y, gy>), then an eval forward of the first input."""
    outs, grads = [], []
    for x, gy in zip(xs, gys):
        x = x[rows].clone().requires_grad_()
        y = bn(x)
        (y * gy[rows]).sum().backward()
        outs.append(y.detach())
        grads.append(x.grad)
    bn.eval()
    with torch.no_grad():
        outs.append(bn(xs[0][rows]))
    return outs, grads


def _net(dtype) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8)).to(dtype)


def _views(dtype):
    g = torch.Generator().manual_seed(2)
    return [torch.rand(BATCH, 3, 9, 9, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]


def _worker(rank: int, world: int, init_method: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        rows = shard(BATCH, world, rank)
        result = {"bn": {}, "net": {}}
        for case in BN_CASES:
            bn = ReplicaBatchNorm2d(3, momentum=case[1], affine=case[2]).to(case[0])
            bn.load_state_dict(_bn(*case).state_dict())
            xs, gys = _bn_inputs(case[0])
            outs, grads = _run_bn(bn, xs, gys, rows)
            all_reduce_grads(bn.parameters())
            result["bn"][case] = {"outs": outs, "grads": grads, "state": bn.state_dict(),
                                  "param_grads": [p.grad for p in bn.parameters()]}
        for dtype in DTYPES:
            net = _net(dtype)
            opt = torch.optim.SGD(net.parameters(), lr=0.1)  # built before the conversion: same Parameters
            convert_batchnorm(net, None)
            v1, v2 = (v[rows] for v in _views(dtype))
            loss = gathered_nt_xent(net(v1), net(v2), TEMPERATURE, None, rank, world)
            loss.backward()
            all_reduce_grads(net.parameters())
            grads = {name: p.grad.clone() for name, p in net.named_parameters()}
            opt.step()
            result["net"][dtype] = {"loss": loss.detach(), "grads": grads, "state": net.state_dict()}
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    import torch.multiprocessing as tmp

    out = tmp_path_factory.mktemp("replicas")
    context = tmp.start_processes(_worker, args=(WORLD, f"tcp://127.0.0.1:{_free_port()}", str(out)),
                                  nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=0.1):
            assert time.monotonic() < deadline, "the replicas did not finish within 120 s"
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(a, b, dtype, what):
    assert a.dtype == b.dtype, what
    torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.distributed
@pytest.mark.parametrize("case", BN_CASES, ids=lambda c: f"{str(c[0])[6:]}-momentum{c[1]}-affine{c[2]}")
def test_batchnorm_over_replicas_equals_one_batchnorm(replicas, case):
    dtype = case[0]
    bn = _bn(*case)
    xs, gys = _bn_inputs(dtype)
    outs, grads = _run_bn(bn, xs, gys)
    got = [r["bn"][case] for r in replicas]
    for step in range(3):  # 2 training steps, then eval with the running statistics
        _close(torch.cat([g["outs"][step] for g in got]), outs[step], dtype, f"output of step {step}")
    for step in range(2):
        _close(torch.cat([g["grads"][step] for g in got]), grads[step], dtype, f"grad_input of step {step}")
    for g in got:
        assert list(g["state"]) == list(bn.state_dict())
        for key, value in bn.state_dict().items():  # running statistics after 2 steps
            if value.is_floating_point():
                _close(g["state"][key], value, dtype, key)
            else:
                assert torch.equal(g["state"][key], value), key
        for mine, p in zip(g["param_grads"], bn.parameters()):  # summed over the replicas
            _close(mine, p.grad, dtype, "weight/bias grad")
    assert int(got[0]["state"]["num_batches_tracked"]) == 2


@pytest.mark.distributed
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_converted_net_with_gathered_loss_equals_the_whole_batch(replicas, dtype):
    net = _net(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    v1, v2 = _views(dtype)
    loss = nt_xent(net(v1), net(v2), TEMPERATURE)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    opt.step()
    for r in replicas:
        got = r["net"][dtype]
        _close(got["loss"], loss.detach(), dtype, "loss")
        assert list(got["grads"]) == list(grads)
        for name, grad in grads.items():
            _close(got["grads"][name], grad, dtype, f"grad of {name}")
        for key, value in net.state_dict().items():  # after one SGD step: weights and running stats
            if value.is_floating_point():
                _close(got["state"][key], value, dtype, key)
            else:
                assert torch.equal(got["state"][key], value), key


def test_shard():
    assert [shard(8, 2, i) for i in range(2)] == [slice(0, 4), slice(4, 8)]
    assert shard(6, 1, 0) == slice(0, 6)
    for args, words in [((7, 2, 0), "multiple of 2"), ((2, 4, 0), "multiple of 4"), ((8, 2, 2), "index"),
                        ((8, 0, 0), "replicas"), ((8, 2, -1), "index")]:
        with pytest.raises(UserError, match=words) as err:
            shard(*args)
        assert "\n" not in str(err.value) and "hint:" in str(err.value)


def test_convert_batchnorm_shares_parameters_and_keeps_the_state_dict():
    net = _net(torch.float32)
    net[1].train()
    net[4].eval()
    before = net.state_dict()
    params = {name: p for name, p in net.named_parameters()}
    buffers = {name: b for name, b in net.named_buffers()}
    assert convert_batchnorm(net, None) is net
    assert isinstance(net[1], ReplicaBatchNorm2d) and isinstance(net[4], ReplicaBatchNorm2d)
    assert net[1].training and not net[4].training
    assert list(net.state_dict()) == list(before)
    assert all(p is params[name] for name, p in net.named_parameters())
    assert all(b is buffers[name] for name, b in net.named_buffers())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2
    alone = convert_batchnorm(nn.BatchNorm2d(3, affine=False, track_running_stats=False), None)
    assert isinstance(alone, ReplicaBatchNorm2d) and alone.weight is None and alone.running_mean is None


def test_replica_batchnorm_without_a_process_group_is_batchnorm():
    x = _bn_inputs(torch.float64)[0][0]
    bn, mine = _bn(torch.float64, 0.1, True), ReplicaBatchNorm2d(3).double()
    mine.load_state_dict(bn.state_dict())
    assert torch.equal(mine(x), bn(x)) and torch.equal(mine.running_var, bn.running_var)
    assert gathered_nt_xent(x[:, 0, 0], x[:, 1, 0], 0.5, None, 0, 1) == nt_xent(x[:, 0, 0], x[:, 1, 0], 0.5)


@pytest.mark.parametrize("channels", [3, 1])
def test_augment_rows_draw_the_whole_batch(channels):
    """A shard with ``rows=(start, total)`` gets the full batch's views, and leaves the generator
    where the full call does. Bitwise, except one-channel blur: there a blur of exactly one
    image is a conv2d with groups=1, a different kernel from the depthwise one, so the last bit
    may differ when a shard and the full batch blur different numbers of images."""
    x = torch.rand(10, channels, 20, 24, generator=torch.Generator().manual_seed(0))
    aug = SimCLRAugment(16, jitter_p=0.9, gray_p=0.5, blur_p=0.5)
    for start, stop in [(0, 5), (5, 10), (3, 4), (2, 9), (0, 10)]:
        g_full, g_part = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        full = aug(x, g_full)[start:stop]
        part = aug(x[start:stop], g_part, rows=(start, len(x)))
        if channels == 3:
            assert torch.equal(part, full), (start, stop)
        else:
            torch.testing.assert_close(part, full, rtol=0, atol=1e-6)
        assert torch.equal(g_full.get_state(), g_part.get_state())
    with pytest.raises(ValueError, match="rows"):
        aug(x[:4], torch.Generator(), rows=(8, 10))
