"""The shipped specs: torchvision's parameter counts, PResNet-50's table, round trips."""
import pytest
import torch

from archspec.nn.compiler import StagedNet, check_shapes, compile_spec
from archspec.profiling.analytic import stage_params
from archspec.spec import available, dumps, load_spec, loads

# torchvision.models.resnetN(weights=None): sum(p.numel() for p in model.parameters())
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def test_all_named_specs_ship():
    assert set(TORCHVISION_PARAMS) | {"presnet50"} <= set(available())


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_resnet_parameter_counts_equal_torchvision(name):
    spec = load_spec(name)
    net = compile_spec(spec, device="meta")
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[name]
    assert sum(stage_params(spec).values()) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS) + ["presnet50"])
def test_analytic_params_per_stage_equal_module(name):
    spec = load_spec(name)
    net = compile_spec(spec, device="meta")
    analytic = stage_params(spec)
    for stage_name, module in net.stages.items():
        assert sum(p.numel() for p in module.parameters()) == analytic[stage_name], stage_name


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS) + ["presnet50"])
def test_round_trip(name):
    spec = load_spec(name)
    assert loads(dumps(spec)) == spec


def test_resnet50_layout_is_v1_5():
    """Stride in the 3x3 conv of the first block; projection shortcut strided as well."""
    net = compile_spec(load_spec("resnet50"), device="meta")
    block = net.res3.block1
    assert block.main.conv1.conv.stride == (1, 1)
    assert block.main.conv2.conv.stride == (2, 2)
    assert block.shortcut.conv.stride == (2, 2)
    assert net.res3.block2.main.conv2.conv.stride == (1, 1)
    assert len(net.res4) == 6


def test_presnet50_matches_table_1():
    spec = load_spec("presnet50")
    assert spec.stage_names == ["conv1", "res2", "res3", "res4", "res5", "res6", "res7"]
    net = compile_spec(spec, device="meta")
    outs = net(torch.empty(2, 3, 224, 224, device="meta"), outputs=net.stage_names)
    assert [o.shape[-1] for o in outs.values()] == [112, 56, 36, 24, 16, 12, 8]
    assert [o.shape[-2] for o in outs.values()] == [112, 56, 36, 24, 16, 12, 8]
    assert spec.features == 4096
    assert net.representation(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 4096)
    # res3..res7 are entered by bilinear resizing, res2 by max pooling
    assert [s.downsample.kind for s in spec.stages] == ["strided_conv", "maxpool"] + ["bilinear"] * 5
    # grouped bottlenecks: only the first block's last 1x1 is ungrouped
    assert net.res6.block1.main.conv3.conv.groups == 1
    assert net.res6.block2.main.conv3.conv.groups == 16
    assert net.res7.block1.main.conv2.conv.groups == 128
    assert isinstance(net.res5.block1.shortcut, torch.nn.Sequential)  # 576 -> 1024 projection
    assert isinstance(net.res5.block2.shortcut, torch.nn.Identity)


def test_forward_returns_chosen_stages_and_stops_early():
    spec = load_spec("resnet18")
    net = compile_spec(spec).eval()
    x = torch.randn(1, 3, 64, 64)
    calls = []
    handle = net.res5.register_forward_hook(lambda *a: calls.append(1))
    outs = net(x, outputs=["res3", "conv1"])
    assert list(outs) == ["res3", "conv1"] and not calls
    assert outs["res3"].shape == (1, 128, 8, 8)
    handle.remove()
    full = net(x, outputs=["res5", "head"])
    assert torch.allclose(full["head"], net(x))
    with pytest.raises(KeyError):
        net(x, outputs=["res9"])


def test_check_shapes_on_a_real_module_does_not_touch_batchnorm_state():
    net = StagedNet(load_spec("presnet50"))
    before = net.res4.block1.main.conv1.bn.running_mean.clone()
    observed = check_shapes(net, batch=4)
    assert observed["res7"] == (4096, 8, 8) and observed["head"] == (1000,)
    assert torch.equal(before, net.res4.block1.main.conv1.bn.running_mean)
    assert net.training


def test_real_forward_backward_reaches_every_parameter():
    net = compile_spec(load_spec("presnet50"))
    out = net(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_reserved_stage_names_cover_the_compiled_module():
    """The loader refuses names of StagedNet attributes without importing torch; the list it
    keeps must cover every public attribute the installed torch gives nn.Module."""
    from archspec.nn.compiler import StagedNet
    from archspec.spec.validate import MODULE_ATTRIBUTES

    public = {n for n in dir(StagedNet) if not n.startswith("_")}
    assert public <= MODULE_ATTRIBUTES, sorted(public - MODULE_ATTRIBUTES)


def test_loading_a_spec_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from archspec.spec import load_spec; load_spec('presnet50'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
