"""archspec's counts against fvcore and ptflops, reconciled exactly (integers), total and per stage.

Each peer counts a different set of ops. The functions ``fvcore_macs``, ``ptflops_aten_macs`` and
``ptflops_pytorch_macs`` below say which, in archspec's op classes (archspec.profiling.analytic:
conv, fc, bn, relu, add, pool, interp, in MACs per image); the tests hold every peer's figure equal
to its formula applied to archspec's analytic counts. Peers run on the compiled module on CPU, in
eval mode, at batch 1, on a real tensor.

Versions read: fvcore 0.1.5 (fvcore/nn/flop_count.py, jit_handles.py), ptflops 0.7.5
(ptflops/pytorch_ops.py, pytorch_engine.py, aten_ops.py, aten_engine.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import math
import warnings

import pytest
import torch

from archspec.nn.compiler import compile_spec
from archspec.profiling.analytic import OP_CLASSES, stage_counts
from archspec.spec import load_spec
from archspec.spec.resize import at_input_size
from archspec.spec.validate import infer_shapes

fvcore_nn = pytest.importorskip("fvcore.nn")
ptflops = pytest.importorskip("ptflops")


# --------------------------------------------------------------------------- archspec's side


@dataclasses.dataclass(frozen=True)
class Counts:
    """archspec's forward counts for one stage (or the whole net), per image, plus the element
    counts the peers' conventions need that archspec's MAC classes do not carry directly:
    archspec counts a max pool as k x k per *output* element, the peers per *input* element."""

    macs: dict  # MACs per op class (archspec.profiling.analytic)
    window_pool_inputs: int = 0  # elements entering a max-pool downsampling (nn.MaxPool2d)
    global_avg_inputs: int = 0  # elements entering the head's global average pool
    global_max_inputs: int = 0  # elements entering the head's global max pool
    fc_bias: int = 0  # the fc's outputs: one bias addition each

    def __add__(self, other: "Counts") -> "Counts":
        return Counts({k: self.macs[k] + other.macs[k] for k in OP_CLASSES},
                      *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)[1:]))


def archspec_counts(spec) -> dict[str, Counts]:
    """Per stage (the head last), from the spec alone: analytic MACs and the spec's shapes."""
    analytic = stage_counts(spec)
    out = {}
    for stage, shape in zip(spec.stages, infer_shapes(spec)):
        window = math.prod(shape.in_shape) if stage.downsample.kind == "maxpool" else 0
        out[stage.name] = Counts(analytic[stage.name].macs, window_pool_inputs=window)
    head = analytic["head"]
    pooled = math.prod(infer_shapes(spec)[-1].out_shape)
    assert head.macs["pool"] == pooled  # archspec: global pool = 1 per input element
    out["head"] = Counts(head.macs, global_avg_inputs=pooled if spec.head.pool == "avg" else 0,
                         global_max_inputs=pooled if spec.head.pool == "max" else 0, fc_bias=spec.head.fc or 0)
    return out


# --------------------------------------------------------------------------- the conventions


def fvcore_macs(c: Counts) -> int:
    """fvcore 0.1.5, ``FlopCountAnalysis`` (one "flop" = one MAC), model in eval mode.

    Counts: conv (no bias here), fc without its bias (aten::linear: in x out), batch norm at
    2 per element (eval mode, affine: scale and shift; 5 per element in training mode),
    the global average pool at 1 per input element (aten::adaptive_avg_pool2d) and bilinear
    resizing at 4 per output element (aten::upsample_bilinear2d, = archspec's interp).
    Not counted (unsupported ops, skipped): ReLU, residual additions, max pool (window and
    global).
    """
    m = c.macs
    return m["conv"] + m["fc"] + 2 * m["bn"] + c.global_avg_inputs + m["interp"]


def ptflops_aten_macs(c: Counts) -> int:
    """ptflops 0.7.5, ``backend='aten'``: a dispatch mode counting aten.convolution and
    aten.addmm/mm only. Counts: conv, fc, plus the fc bias (1 per output, in addmm).
    Everything else (batch norm, ReLU, additions, pooling, resizing) is a zero-op."""
    m = c.macs
    return m["conv"] + m["fc"] + c.fc_bias


def ptflops_pytorch_macs(c: Counts) -> int:
    """ptflops 0.7.5, ``backend='pytorch'`` (the default): module hooks plus patched functionals.

    Module hooks: conv, fc + its bias (nn.Linear), batch norm 2 per element (affine),
    ReLU 1 per output element, pooling (nn.MaxPool2d, nn.AdaptiveAvg/MaxPool2d) 1 per input
    element. Patched functionals add, for the same calls: ``F.relu`` 1 per element,
    ``F.max_pool2d`` / ``F.adaptive_avg_pool2d`` / ``F.adaptive_max_pool2d`` 1 per input
    element -- the modules call them, so ReLU and pooling are counted twice -- and
    ``F.interpolate`` with a ``size``: N x C x prod(size), i.e. 1 per output element of the
    bilinear resize (= archspec's interp / 4; archspec's Resize is no nn.Upsample, so no
    module hook). Residual additions (``x + y``, not the patched ``torch.add``) are not counted.
    """
    m = c.macs
    pools = c.window_pool_inputs + c.global_avg_inputs + c.global_max_inputs
    assert m["interp"] % 4 == 0
    return m["conv"] + m["fc"] + c.fc_bias + 2 * m["bn"] + 2 * m["relu"] + 2 * pools + m["interp"] // 4


# --------------------------------------------------------------------------- running the peers


@dataclasses.dataclass
class PeerRun:
    archspec: dict[str, Counts]  # per stage
    params: int  # archspec's parameter count
    fvcore: int
    fvcore_by_stage: dict[str, int]
    fvcore_params: int
    aten: int
    aten_by_stage: dict[str, int]
    pytorch: int
    pytorch_by_stage: dict[str, int]
    ptflops_params: int

    @property
    def total(self) -> Counts:
        return functools.reduce(lambda a, b: a + b, self.archspec.values())


@contextlib.contextmanager
def _quiet():
    """The peers print (ptflops) and warn (fvcore's tracer and unsupported ops, torch.jit)."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _ptflops(module, x, backend: str) -> tuple[int, int]:
    macs, params = ptflops.get_model_complexity_info(
        module, tuple(x.shape[1:]), input_constructor=lambda _: x, as_strings=False,
        print_per_layer_stat=False, verbose=False, backend=backend, ost=io.StringIO())
    assert macs is not None, f"ptflops ({backend}) failed"
    return macs, params


def _spec(name: str, size: int, head_pool: str | None = None):
    spec = at_input_size(load_spec(name), (size, size))
    if head_pool is not None:
        spec = dataclasses.replace(spec, head=dataclasses.replace(spec.head, pool=head_pool))
    return spec


@contextlib.contextmanager
def _one_thread():
    """Batch 1 gains nothing from intra-op threads, and on a shared machine they only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def peer_run(name: str, size: int, head_pool: str | None = None) -> PeerRun:
    """Every peer on one module (built once): totals on the whole net; per stage from fvcore's
    by_module(), and from ptflops run on each stage alone, fed the stage's real input."""
    with _one_thread():
        return _peer_run(name, size, head_pool)


def _peer_run(name: str, size: int, head_pool: str | None) -> PeerRun:
    spec = _spec(name, size, head_pool)
    torch.manual_seed(0)
    # check=False: the compiled shapes are held to the spec by tests/test_specs.py; the meta-device
    # check would cost ~2 s here (PyTorch's decompositions) and is no part of what is compared.
    net = compile_spec(spec, check=False).eval()
    x = torch.randn(1, spec.input_channels, *spec.input_size)
    inputs, h = {}, x
    with torch.no_grad():
        for stage_name, stage in net.stages.items():
            inputs[stage_name] = h
            h = stage(h)
    with _quiet(), torch.no_grad():
        flops = fvcore_nn.FlopCountAnalysis(net, x)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_module = flops.by_module()
        fv_total = flops.total()
        aten, ptflops_params = _ptflops(net, x, "aten")
        pytorch, _ = _ptflops(net, x, "pytorch")
        aten_by_stage = {n: _ptflops(s, inputs[n], "aten")[0] for n, s in net.stages.items()}
        pytorch_by_stage = {n: _ptflops(s, inputs[n], "pytorch")[0] for n, s in net.stages.items()}
    return PeerRun(archspec=archspec_counts(spec), params=sum(c.params for c in stage_counts(spec).values()),
                   fvcore=fv_total, fvcore_by_stage={n: by_module[n] for n in net.stages},
                   fvcore_params=fvcore_nn.parameter_count(net)[""], aten=aten, aten_by_stage=aten_by_stage,
                   pytorch=pytorch, pytorch_by_stage=pytorch_by_stage, ptflops_params=ptflops_params)


# Every shipped spec: the headline figures at full size (ResNet-50, PResNet-50 at 224), the others
# at 64x64 (and PResNet-50 at 96, where the bilinear targets are rounded: 15, 10, 7, 5, 3).
CASES = [("resnet50", 224), ("presnet50", 224), ("resnet18", 64), ("resnet34", 64), ("resnet101", 64),
         ("resnet152", 64), ("presnet50", 96)]
IDS = [f"{n}@{s}" for n, s in CASES]


# --------------------------------------------------------------------------- the tests


def test_resnet50_headline_figures():
    run = peer_run("resnet50", 224)
    total = run.total
    assert run.params == run.fvcore_params == run.ptflops_params == 25_557_032
    assert total.macs["conv"] + total.macs["fc"] == 4_089_184_256  # torchvision's 4.089 G
    assert run.aten == ptflops_aten_macs(total) == 4_089_185_256
    assert run.fvcore == fvcore_macs(total) == 4_111_512_576
    assert run.pytorch == ptflops_pytorch_macs(total) == 4_132_436_968


def test_presnet50_headline_figures():
    run = peer_run("presnet50", 224)
    total = run.total
    assert run.params == run.fvcore_params == run.ptflops_params == 25_029_592
    assert total.macs["conv"] + total.macs["fc"] == 3_755_921_408
    assert total.macs["interp"] == 2_215_424
    assert run.aten == ptflops_aten_macs(total) == 3_755_922_408
    assert run.fvcore == fvcore_macs(total) == 3_776_062_976
    assert run.pytorch == ptflops_pytorch_macs(total) == 3_790_229_352


@pytest.mark.parametrize("name, size", CASES, ids=IDS)
def test_parameters_agree(name, size):
    run = peer_run(name, size)
    assert run.params == run.fvcore_params == run.ptflops_params


@pytest.mark.parametrize("name, size", CASES, ids=IDS)
def test_fvcore_total_and_per_stage(name, size):
    run = peer_run(name, size)
    assert run.fvcore == fvcore_macs(run.total)
    assert run.fvcore_by_stage == {n: fvcore_macs(c) for n, c in run.archspec.items()}


@pytest.mark.parametrize("name, size", CASES, ids=IDS)
def test_ptflops_aten_total_and_per_stage(name, size):
    run = peer_run(name, size)
    assert run.aten == ptflops_aten_macs(run.total)
    assert run.aten_by_stage == {n: ptflops_aten_macs(c) for n, c in run.archspec.items()}
    assert sum(run.aten_by_stage.values()) == run.aten


@pytest.mark.parametrize("name, size", CASES, ids=IDS)
def test_ptflops_pytorch_total_and_per_stage(name, size):
    run = peer_run(name, size)
    assert run.pytorch == ptflops_pytorch_macs(run.total)
    assert run.pytorch_by_stage == {n: ptflops_pytorch_macs(c) for n, c in run.archspec.items()}
    assert sum(run.pytorch_by_stage.values()) == run.pytorch


def test_global_max_pool_head():
    """A ``pool: max`` head: fvcore skips aten::adaptive_max_pool2d, ptflops' default backend
    counts it twice (module hook + F.adaptive_max_pool2d), as the formulas say."""
    run = peer_run("resnet18", 64, "max")
    head = run.archspec["head"]
    assert head.global_max_inputs > 0 and head.global_avg_inputs == 0
    assert run.fvcore == fvcore_macs(run.total)
    assert run.fvcore_by_stage["head"] == head.macs["fc"]
    assert run.pytorch == ptflops_pytorch_macs(run.total)
    assert run.aten == ptflops_aten_macs(run.total)


def test_fvcore_counts_training_batch_norm_at_five_per_element():
    """The eval-mode choice matters for fvcore only: in training mode aten::batch_norm costs
    5 per element (affine), not 2."""
    spec = _spec("resnet18", 64)
    torch.manual_seed(0)
    net = compile_spec(spec, check=False).train()
    with _one_thread(), _quiet(), torch.no_grad():
        flops = fvcore_nn.FlopCountAnalysis(net, torch.randn(1, 3, 64, 64))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = flops.total()
    bn = peer_run("resnet18", 64).total.macs["bn"]
    assert total == fvcore_macs(peer_run("resnet18", 64).total) + 3 * bn
