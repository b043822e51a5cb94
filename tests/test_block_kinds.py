"""Block kinds beyond ResNet: inverted residuals, squeeze-excitation, activations, conv bias,
even and average pools, zero-pad shortcuts, multi-layer heads. The shipped specs are held to
published parameter counts and to MACs counted by FlopCounterMode on networks written here by
hand (independently of archspec's compiler)."""
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from archspec.errors import SpecError
from archspec.nn.compiler import compile_spec
from archspec.profiling.analytic import stage_counts, stage_params
from archspec.profiling.memory import local_stages
from archspec.spec import dumps, load_spec, loads
from archspec.spec.resize import at_input_size

from . import conftest
from .conftest import write_config  # the micro training config of the training tests

# torchvision.models.<name>(weights=None) parameter counts; resnet20_cifar: He et al. 2016 with
# option A shortcuts (the 0.27M of its Table 6; 269,722 in the common CIFAR implementations).
PUBLISHED_PARAMS = {
    "mobilenet_v2": 3_504_872,
    "vgg16_bn": 138_365_992,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    "resnet20_cifar": 269_722,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_equal_published(name):
    spec = load_spec(name)
    net = compile_spec(spec, device="meta")
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMS[name]
    assert sum(stage_params(spec).values()) == PUBLISHED_PARAMS[name]
    for stage_name, module in net.stages.items():  # analytic == module, stage by stage
        assert sum(p.numel() for p in module.parameters()) == stage_params(spec)[stage_name], stage_name


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_round_trip(name):
    spec = load_spec(name)
    assert loads(dumps(spec)) == spec


# -- the same networks written by hand --------------------------------------------------------
def _cbr(cin, cout, k, s=1, groups=1, act=nn.ReLU, bias=False):
    layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class HandInverted(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [_cbr(cin, hidden, 1, act=nn.ReLU6)] if t != 1 else []
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), _cbr(hidden, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.use_res else self.body(x)


def hand_mobilenet_v2():
    rows = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, cin = [_cbr(3, 32, 3, 2, act=nn.ReLU6)], 32
    for t, c, n, s in rows:
        for i in range(n):
            layers.append(HandInverted(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(_cbr(cin, 1280, 1, act=nn.ReLU6))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000))


def hand_vgg16_bn():
    layers, cin = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(_cbr(cin, v, 3, bias=True))
            cin = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(),
                         nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))


class HandBasicA(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(_cbr(cin, cout, 3, stride), _cbr(cout, cout, 3, act=None))
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        short = x[:, :, ::self.stride, ::self.stride]
        short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(self.body(x) + short)


def hand_resnet20():
    layers, cin = [_cbr(3, 16, 3)], 16
    for c, s in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(HandBasicA(cin, c, s if i == 0 else 1))
            cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class HandBottleneck(nn.Module):
    def __init__(self, cin, width, cout, stride, groups):
        super().__init__()
        self.body = nn.Sequential(_cbr(cin, width, 1), _cbr(width, width, 3, stride, groups=groups),
                                  _cbr(width, cout, 1, act=None))
        self.short = _cbr(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def hand_resnet50_family(width_per_group, groups):
    """torchvision's ResNet-50 layout: width = planes * width_per_group / 64 * groups."""
    layers, cin = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for planes, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            layers.append(HandBottleneck(cin, planes * width_per_group // 64 * groups, planes * 4,
                                         stride if i == 0 else 1, groups))
            cin = planes * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


HAND = {"mobilenet_v2": (hand_mobilenet_v2, 224), "vgg16_bn": (hand_vgg16_bn, 224),
        "resnet20_cifar": (hand_resnet20, 32),
        "resnext50_32x4d": (lambda: hand_resnet50_family(4, 32), 224),
        "wide_resnet50_2": (lambda: hand_resnet50_family(128, 1), 224)}


@pytest.mark.parametrize("name", sorted(HAND))
def test_conv_fc_macs_equal_flop_counter_on_a_hand_built_net(name):
    build, size = HAND[name]
    with torch.device("meta"):
        model = build()
        x = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]
    counts = stage_counts(load_spec(name))
    macs = sum(c.macs["conv"] + c.macs["fc"] for c in counts.values())
    assert 2 * macs == counter.get_total_flops()  # FlopCounterMode: 2 FLOPs per multiply-accumulate


def test_compiled_nets_run_forward_and_backward_on_cpu():
    """Small real runs: shapes, gradients, and the zero-pad shortcut's arithmetic."""
    torch.manual_seed(0)
    for name, size in (("resnet20_cifar", 32), ("mobilenet_v2", 32), ("vgg16_bn", 32)):
        spec = at_input_size(load_spec(name), (size, size))
        net = compile_spec(spec)
        out = net(torch.randn(2, 3, size, size))
        assert out.shape == (2, spec.head.fc)
        out.sum().backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad), name


def test_pad_shortcut_subsamples_and_appends_zero_channels():
    net = compile_spec(load_spec("resnet20_cifar"))
    block = net.res3.block1
    x = torch.randn(1, 16, 32, 32)
    short = block.shortcut(x)
    assert short.shape == (1, 32, 16, 16)
    assert torch.equal(short[:, :16], x[:, :, ::2, ::2]) and not short[:, 16:].any()
    assert not any(True for _ in block.shortcut.parameters())


def test_inverted_blocks_add_the_input_only_where_the_shape_is_kept():
    net = compile_spec(load_spec("mobilenet_v2"), device="meta")
    assert not net.ir2.block1.residual  # 16 -> 24 channels, stride 2
    assert net.ir2.block2.residual
    assert not net.ir5.block1.residual  # 64 -> 96 channels, stride 1
    assert isinstance(net.ir2.block1.main.conv2.act, nn.ReLU6)
    assert not hasattr(net.ir2.block1.main.conv3, "act")  # the linear bottleneck
    assert net.ir2.block1.main.conv2.conv.groups == 96


SMALL = """\
name: small
input: {channels: 3, size: 32x32}
stages:
  - name: conv1
    output_size: 16x16
    blocks:
      - conv [3x3, 16, stride 2, bias] x1, hardswish
  - name: b2
    output_size: 8x8
    blocks:
      - inverted [1x1, 64; 5x5, 64, dw, stride 2; 1x1, 24] x1, silu, se 0.25
      - inverted [1x1, 96; 3x3, 96, dw; 1x1, 24] x2, gelu, se 1/4
  - name: b3
    output_size: 4x4
    downsample: avgpool 2x2, stride 2
    blocks:
      - basic [3x3, 32; 3x3, 32] x1, se 0.5, shortcut pad
head:
  pool: max
  pool_size: 2
  fc: [64, 10]
  dropout: 0.1
  activation: silu
"""


def test_every_option_compiles_counts_and_round_trips():
    spec = loads(SMALL)
    assert spec.features == 32 * 4
    net = compile_spec(spec, device="meta")
    params = sum(p.numel() for p in net.parameters())
    assert params == sum(stage_params(spec).values())
    # SE on the depthwise conv's 64 channels: 64 -> 16 -> 64 with biases
    se = net.b2.block1.main.se
    assert (se.fc1.in_channels, se.fc1.out_channels) == (64, 16) and se.fc1.bias is not None
    assert isinstance(net.b2.block2.main.conv1.act, nn.GELU)
    assert isinstance(net.conv1.block1.conv1.act, nn.Hardswish) and net.conv1.block1.conv1.conv.bias is not None
    assert isinstance(net.head.pool, nn.AdaptiveMaxPool2d) and net.head.pool.output_size == 2
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.1]
    assert loads(dumps(spec)) == spec
    counts = stage_counts(spec)
    assert counts["b2"].macs["mul"] == 64 * 8 * 8 + 2 * 96 * 8 * 8  # SE gates
    assert counts["b2"].macs["add"] == 2 * 24 * 8 * 8  # only the repeats keep the shape
    assert counts["b3"].macs["pool"] == 24 * 4 * 4 * 4 + 32 * 4 * 4  # avg pool 2x2 + SE's global pool
    assert counts["head"].macs["dropout"] == 128 + 64 and counts["head"].macs["act"] == 64


@pytest.mark.parametrize("old, new, pattern", [
    ("5x5, 64, dw, stride 2", "5x5, 64, stride 2", r"second-last conv of an inverted block must be depthwise"),
    ("[1x1, 64; 5x5", "[3x3, 64; 5x5", r"expansion and projection convs are 1x1"),
    ("x2, gelu, se 1/4", "x2, gelu, se 2", r"se must be in \(0, 1\]"),
    ("x2, gelu, se 1/4", "x2, tanh", r"cannot read option 'tanh'"),
    ("se 0.5, shortcut pad", "shortcut zero", r"unknown shortcut 'zero'"),
    ("x1, silu, se 0.25", "x1, silu, shortcut pad", r"inverted blocks have no shortcut to choose"),
    ("basic [3x3, 32; 3x3, 32]", "basic [3x3, 8; 3x3, 8]", r"zero-pad shortcut cannot shrink 24 channels to 8"),
    ("dropout: 0.1", "dropout: [0.1]", r"'dropout' has 1 values for 2 fc layers"),
    ("dropout: 0.1", "dropout: 1.5", r"dropout must be a probability"),
    ("output_size: 4x4\n    downsample: avgpool", "output_size: 8x8\n    downsample: avgpool",
     r"declared output size 8x8 is not what the stage produces \(4x4\)"),
    ("avgpool 2x2, stride 2", "avgpool 2x2x2, stride 2", r"downsample 'avgpool 2x2x2, stride 2' is not readable"),
])
def test_bad_options_give_one_located_line(old, new, pattern):
    import re

    assert old in SMALL
    with pytest.raises(SpecError) as info:
        loads(SMALL.replace(old, new, 1), source="small.yaml")
    message = str(info.value)
    assert re.search(pattern, message), message
    assert message.startswith("small.yaml:") and "\n" not in message


def test_a_network_without_residual_blocks_keeps_its_stages_and_conv_blocks():
    spec = load_spec("vgg16_bn")
    assert local_stages(spec) == [[s] for s in spec.stage_names]
    counts = stage_counts(spec)
    # block outputs: every conv block's output (there are no residual blocks to count)
    assert counts["conv1"].block_output_elems == 2 * 64 * 224 * 224
    from archspec.design.chain import build_chain

    chain = build_chain(spec)
    assert chain.n == 13 and chain.blocks[0].label == "conv1.1"


# -- everything else works on the new kinds ---------------------------------------------------
MICRO_MOBILE = """
name: micro_mobile
input: {channels: 1, size: 8x8}
stages:
  - {name: conv1, output_size: 8x8, blocks: ['conv [3x3, 8, bias] x1, hardswish']}
  - {name: ir2, output_size: 4x4, blocks: ['inverted [1x1, 16; 3x3, 16, dw, stride 2; 1x1, 8] x2, relu6, se 0.25']}
  - {name: res3, output_size: 2x2, blocks: ['basic [3x3, 16, stride 2; 3x3, 16] x1, silu, shortcut pad']}
  - {name: conv4, output_size: 1x1, downsample: 'avgpool 2x2, stride 2', blocks: ['conv [1x1, 16] x1, gelu']}
head: {fc: null}
"""


@pytest.mark.parametrize("method", ["simclr", "gim", "loco"])
def test_training_runs_on_the_new_kinds(tmp_path, method):
    from archspec.train.config import load_config
    from archspec.train.loop import read_log, train

    (tmp_path / "mobile.yaml").write_text(MICRO_MOBILE)
    config = write_config(tmp_path, spec="mobile.yaml", method=method, schedule={"warmup_steps": 1})
    result = train(load_config(config), tmp_path / "run", max_steps=3, progress=False)
    assert result.step == 3
    rows = read_log(tmp_path / "run")
    assert len(rows) == 3 and all(v == v for r in rows for k, v in r.items() if k.startswith("loss"))


def run_cli(*args):
    return conftest.run_cli(*args, terminal_width=200)


def test_balance_and_split_on_a_network_without_residual_blocks_say_so():
    result = run_cli("balance", "vgg16_bn", "--batch", "2", "--format", "md")
    assert result.exit_code == 0, result.output
    assert "no residual blocks" in result.output
    rows = [line.split("|") for line in result.output.splitlines() if line.startswith("| conv")]
    assert len(rows) == 5 and all(float(r[5].strip(" *")) > 1 for r in rows)  # memory %: never a silent 0.00
    split = run_cli("split", "vgg16_bn", "--stages", "4")
    assert split.exit_code == 0 and "chain: every conv block (the network has no residual blocks)" in split.output
    prof = json.loads(run_cli("profile", "vgg16_bn", "--batch", "1", "--format", "json").output)
    assert "no residual blocks" in prof["conventions"]["activation_measures"]["block_outputs"]
    assert prof["training_memory"]["local_stages"] == [[n] for n in load_spec("vgg16_bn").stage_names]


@pytest.mark.parametrize("command", [["compare", "mobilenet_v2", "resnet50", "--format", "md"],
                                     ["table", "mobilenet_v2", "vgg16_bn", "resnet20_cifar", "--format", "tex"],
                                     ["profile", "mobilenet_v2", "--format", "csv"],
                                     ["balance", "resnet20_cifar", "--format", "json"],
                                     ["split", "mobilenet_v2", "--stages", "4", "--by", "mix"],
                                     ["show", "resnext50_32x4d"], ["validate", "wide_resnet50_2"]])
def test_every_command_works_on_the_new_specs(command):
    result = run_cli(*command)
    assert result.exit_code == 0, result.output
