"""The one layer walk (archspec.spec.walk), the one cost table (archspec.profiling.costs) and
the block-kind registry (archspec.spec.kinds): the walk is what the compiled module runs, layer
by layer; the costs are plain arithmetic (ints and numpy arrays alike); a kind registered in
one place loads, validates, compiles and counts everywhere."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from archspec.errors import SpecError
from archspec.nn import blocks
from archspec.nn.compiler import compile_spec
from archspec.profiling.analytic import stage_counts
from archspec.profiling.costs import OP_CLASSES, layer_cost
from archspec.profiling.profiler import profile
from archspec.spec import available, load, load_spec, loads
from archspec.spec.kinds import KINDS, BlockKind, register
from archspec.spec.walk import Layer, walk

ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.GELU: "gelu", nn.Hardswish: "hardswish",
               nn.Sigmoid: "sigmoid"}

EVERY_OPTION = Path(__file__).parent / "data" / "every_option.yaml"  # every kind and option, one network


def _module_layers(net, spec) -> list[tuple]:
    """What the compiled module runs, in order: (op, shape in, shape out, kernel, groups, bias,
    activation) per image, from forward hooks on its leaf modules (meta tensors)."""
    seen = []

    def hook(module, args, output):
        shape_in, shape_out = tuple(args[0].shape[1:]), tuple(output.shape[1:])
        pad = lambda s: s + (1,) * (3 - len(s))  # noqa: E731 - fc shapes as (features, 1, 1)
        if isinstance(module, nn.Conv2d):
            seen.append(("conv", shape_in, shape_out, module.kernel_size[0], module.groups, module.bias is not None))
        elif isinstance(module, nn.BatchNorm2d):
            seen.append(("bn", shape_in, shape_out))
        elif type(module) in ACTIVATIONS:
            seen.append(("act", pad(shape_out), ACTIVATIONS[type(module)]))
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            seen.append(("pool", shape_in, shape_out, module.kernel_size))
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            seen.append(("gpool", shape_in, shape_out))
        elif isinstance(module, blocks.Resize):
            seen.append(("interp", shape_in, shape_out))
        elif isinstance(module, nn.Linear):
            seen.append(("fc", pad(shape_in), pad(shape_out), module.bias is not None))
        elif isinstance(module, nn.Dropout):
            seen.append(("dropout", pad(shape_in), pad(shape_out)))

    for module in net.modules():
        if not list(module.children()) or isinstance(module, blocks.Resize):
            module.register_forward_hook(hook)
    net(torch.empty(2, spec.input_channels, *spec.input_size, device="meta"))
    return seen


def _walk_layers(spec) -> list[tuple]:
    out = []
    for unit in walk(spec):
        for layer in unit.layers:
            if layer.op in ("add", "mul"):  # functional in the module: no hook sees them
                continue
            if layer.op == "conv":
                out.append(("conv", layer.shape_in, layer.shape_out, layer.kernel, layer.groups, layer.bias))
            elif layer.op == "act":
                out.append(("act", layer.shape_out, layer.activation))
            elif layer.op == "pool":
                out.append(("pool", layer.shape_in, layer.shape_out, layer.kernel))
            elif layer.op == "fc":
                out.append(("fc", layer.shape_in, layer.shape_out, layer.bias))
            else:
                out.append((layer.op, layer.shape_in, layer.shape_out))
    return out


@pytest.mark.parametrize("name", sorted(available()) + ["every_option"])
def test_the_walk_is_what_the_compiled_module_runs(name):
    """Every conv, batch norm, activation, pool, resize, fc and dropout, in execution order, with
    the shapes, kernel, groups and bias torch runs them with (the projection shortcut runs after
    the main path, as in ResidualBlock.forward)."""
    spec = load(EVERY_OPTION) if name == "every_option" else load_spec(name)
    net = compile_spec(spec, device="meta")
    assert _walk_layers(spec) == _module_layers(net, spec)


def test_units_are_the_modules_blocks():
    """Each block unit is the module's ``blockN`` (the chain's labels rely on it); entries are its
    pool or resize; the head comes last; residual blocks are flagged for the block-output measure."""
    spec = load_spec("presnet50")
    net = compile_spec(spec, device="meta")
    units = list(walk(spec))
    assert units[-1].part == "head" and units[-1].shape_out == (1000, 1, 1)
    for stage in spec.stages:
        mine = [u for u in units if u.name == stage.name]
        names = [("resize" if stage.downsample.kind == "bilinear" else "pool") if u.part == "entry"
                 else f"block{u.number}" for u in mine]
        assert names == [n for n, _ in getattr(net, stage.name).named_children()]
        assert all(u.residual == (stage.name != "conv1") for u in mine if u.part == "block")


def test_costs_work_on_ints_and_numpy_arrays_alike():
    """The design evaluator prices thousands of candidates at once: every op's cost on arrays is,
    entry by entry, its cost on ints, and a 0/1 ``times`` removes it exactly."""
    rng = np.random.default_rng(0)
    cin, cout, h = (rng.integers(1, 9, 50) * 8 for _ in range(3))
    groups = 2 ** rng.integers(0, 3, 50)
    times = rng.integers(0, 2, 50)
    def layers(ci, co, hh, g, t=1):  # noqa: E306
        return [Layer("conv", (ci, hh, hh), (co, hh, hh), 3, g, True, times=t), Layer("bn", (co, hh, hh), (co, hh, hh)),
                Layer("act", (co, hh, hh), (co, hh, hh), activation="silu", times=t),
                Layer("pool", (co, hh, hh), (co, hh, hh), kernel=3), Layer("gpool", (co, hh, hh), (co, 1, 1)),
                Layer("fc", (co, 1, 1), (ci, 1, 1), bias=True), Layer("interp", (co, 1, 1), (co, hh, hh)),
                Layer("add", (co, hh, hh), (co, hh, hh)), Layer("dropout", (ci, 1, 1), (ci, 1, 1), times=t)]
    vectorised = [layer_cost(layer) for layer in layers(cin, cout, h, groups, times)]
    for i in range(50):
        scalar = [layer_cost(layer) for layer in layers(int(cin[i]), int(cout[i]), int(h[i]), int(groups[i]),
                                                        int(times[i]))]
        entry = lambda v: v if np.ndim(v) == 0 else v[i]  # noqa: E731
        for (vp, vm), (sp, sm) in zip(vectorised, scalar):
            assert entry(vp) == sp
            assert set(vm) == set(sm) and set(vm) <= set(OP_CLASSES)
            assert all(entry(vm[op]) == sm[op] for op in sm)
    conv = layer_cost(Layer("conv", (16, 8, 8), (32, 4, 4), 3, 2, True))
    assert conv == (3 * 3 * 8 * 32 + 32, {"conv": 32 * 16 * 8 * 9, "bias": 32 * 16})
    assert layer_cost(Layer("conv", (16, 8, 8), (32, 4, 4), 3, 2, True, times=0)) == (0, {"conv": 0, "bias": 0})


class DoubleBasic(blocks.ResidualBlock):
    """A user's block: a basic block whose module is the user's own class."""


@pytest.fixture
def double_kind(monkeypatch):
    monkeypatch.setitem(KINDS, "double", BlockKind("double", (2,), "always", DoubleBasic,
                                                   conv_hint="double: [3x3; 3x3]"))
    return KINDS["double"]


DOUBLE = """\
name: doubled
input: {channels: 3, size: 32x32}
stages:
  - name: conv1
    output_size: 32x32
    blocks:
      - conv [3x3, 16] x1
  - name: res2
    output_size: 16x16
    blocks:
      - double [3x3, 32, stride 2; 3x3, 32] x2
head: {fc: 10}
"""


def test_a_kind_registered_in_one_place_works_everywhere(double_kind):
    """Loader, validator, compiler (the kind's own module class), the analytic counts (equal to
    the traced profile), the local stages (a residual kind ends the stem) and error hints."""
    spec = loads(DOUBLE)
    net = compile_spec(spec, device="meta")
    assert type(net.res2.block1) is DoubleBasic and type(net.res2.block2) is DoubleBasic
    assert [ls.label for ls in spec.local_stages] == ["conv1+res2"]
    counts = stage_counts(spec)
    traced = profile(spec, batch=2, training=False)
    for row in traced.stages:
        assert row.params == counts[row.name].params
        assert row.forward["conv"] == counts[row.name].macs["conv"], row.name
    assert counts["res2"].block_output_elems == 2 * 32 * 16 * 16
    with pytest.raises(SpecError, match="a double block has 2 convs, this one has 3.*double: \\[3x3; 3x3\\]"):
        loads(DOUBLE.replace("3x3, 32] x2", "3x3, 32; 1x1, 32] x2"))
    with pytest.raises(SpecError, match="unknown block kind 'doubel'.*did you mean 'double'"):
        loads(DOUBLE.replace("double [", "doubel ["))


def test_registering_a_kind_twice_is_refused():
    with pytest.raises(ValueError, match="'basic' is registered already"):
        register(BlockKind("basic", (2,), "always", "ResidualBlock"))
