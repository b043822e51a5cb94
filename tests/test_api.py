"""The public Python API (archspec.profile / balance / split / load / compile) on specs and on
nn.Modules the user writes, and the CLI's module:callable targets."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import archspec
from archspec.cli import main
from archspec.errors import UserError

from .conftest import run_cli


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.down(x))


class TinyResNet(nn.Module):
    """torchvision's ResNet layout, small: conv1, bn1, relu, maxpool, layer1, layer2, avgpool, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def flop_counter_macs(module, x):
    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    return counter.get_total_flops() // 2  # FlopCounterMode: 2 FLOPs per multiply-accumulate


def test_import_is_cheap():
    out = subprocess.run([sys.executable, "-c", "import sys, archspec; archspec.__all__; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_spec_profile_equals_the_cli_document():
    prof = archspec.profile("resnet18", batch=2)
    result = run_cli("profile", "resnet18", "--batch", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(prof.to_json()) == json.loads(result.output)
    assert archspec.profile(archspec.load("resnet18"), input_size=(3, 224, 224), batch=2).to_dict() == prof.to_dict()
    net = archspec.compile("resnet18", device="meta")
    assert sum(p.numel() for p in net.parameters()) == prof.total().params == 11_689_512


def test_module_profile_per_stage_params_and_macs_against_flop_counter():
    model = TinyResNet()
    prof = archspec.profile(model, input_size=(3, 64, 64), batch=2)
    names = [r.name for r in prof.stages]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "avgpool", "fc"]  # no unattributed:
    # torch.flatten is a view, and nothing else runs outside the children
    frame = prof.to_frame()
    x = torch.empty(1, 3, 64, 64, device="meta")
    inputs = {}
    with torch.device("meta"):
        twin = TinyResNet()
    handles = [getattr(twin, n).register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0]))
               for n in names]
    twin(x)
    for h in handles:
        h.remove()
    for name in names:
        sub = getattr(model, name)
        assert frame.loc[name, "params"] == sum(p.numel() for p in sub.parameters()), name
        conv_fc = prof.stages[names.index(name)].forward["conv"] + prof.stages[names.index(name)].forward["fc"]
        assert conv_fc == flop_counter_macs(getattr(twin, name), inputs[name]), name
    assert frame.loc["total", "params"] == sum(p.numel() for p in model.parameters())
    assert frame.loc["total", "fwd_flops"] == 2 * frame.loc["total", "fwd_macs"]
    assert {"output_bytes", "conv_outputs_bytes", "saved_bytes"} <= set(frame.columns)


def test_the_users_module_is_left_as_it_was():
    model = TinyResNet().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pointers = [p.data_ptr() for p in model.parameters()]
    archspec.profile(model, input_size=64, stages=["layer1", "layer2"], batch=8)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # running stats untouched
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_stages_as_names_dotted_names_and_a_callable():
    model = TinyResNet()
    by_name = archspec.profile(model, input_size=64, stages=["layer1", "layer2"])
    assert [r.name for r in by_name.stages] == ["layer1", "layer2", "unattributed"]
    # the stem, pooling and fc ran outside both stages: their own row, not the neighbours'
    stem_macs = 8 * 32 * 32 * 3 * 49
    assert by_name.stages[2].forward["conv"] == stem_macs
    assert by_name.total().params == sum(p.numel() for p in model.parameters())  # conv1, bn1, fc: unattributed
    assert by_name.stages[0].forward["conv"] == flop_counter_macs(model.layer1, torch.empty(1, 8, 16, 16))
    dotted = archspec.profile(model, input_size=64, stages=["layer1.0", "layer1.1"])
    assert [r.name for r in dotted.stages][:2] == ["layer1.0", "layer1.1"]
    called = archspec.profile(model, input_size=64, stages=lambda m: [("L1", m.layer1), ("L2", m.layer2)])
    assert [r.forward for r in called.stages] == [r.forward for r in by_name.stages]


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(stages=["layer3"]), r"no submodule 'layer3' \(hint: did you mean 'layer[12]'\?\)"),
    (dict(stages=["layer1", "layer1.0"]), r"stage 'layer1.0' lies inside stage 'layer1'"),
    (dict(input_size=(1, 64, 64)), r"fails on an input of shape \(1, 1, 64, 64\)"),
    (dict(input_size="big"), r"input_size must be"),
    (dict(batch=0), r"batch must be a positive integer"),
    (dict(ops=("conv", "flops")), r"unknown op class 'flops'"),
])
def test_bad_module_arguments_give_one_line(kwargs, pattern):
    import re

    args = {"input_size": 64, **kwargs}
    with pytest.raises(UserError) as info:
        archspec.profile(TinyResNet(), **args)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_to_json_round_trips_and_names_the_module():
    prof = archspec.profile(TinyResNet(), input_size=(3, 32, 32), name="tiny")
    doc = json.loads(prof.to_json())
    assert doc == prof.to_dict()
    assert doc["spec"] == "tiny" and doc["source"]["input_shape"] == [3, 32, 32]
    assert doc["training_memory"] is None and "block_outputs" not in doc["total"]["activation_bytes"]


def test_unknown_ops_are_reported():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.cumsum(self.a(x), 1)

    doc = archspec.profile(Odd(), input_size=16).to_dict()
    assert doc["unknown_ops"]["unattributed"]["aten.cumsum"] >= 1


def test_balance_and_split_on_a_module_profile():
    prof = archspec.profile(TinyResNet(), input_size=64, stages=["layer1", "layer2"])
    bal = archspec.balance(prof)
    assert [r["name"] for r in bal["stages"]] == ["layer1", "layer2"]  # unattributed is not a local stage
    assert bal["settings"]["measure"] == "saved" and bal["training_memory"] is None
    assert abs(sum(r["flops_share"] for r in bal["stages"]) - 100) < 1e-9
    whole = archspec.profile(TinyResNet(), input_size=64)
    best = archspec.split(whole, 2)
    assert best.cuts[0] == 0 and best.cuts[-1] == len(best.labels) == 8
    macs = [2 * whole.macs(r) for r in whole.stages]  # FLOPs = 2 x MACs of the profile's ops
    assert sum(best.stage_costs) == sum(macs)
    # the optimum: no other cut point makes the larger stage smaller
    assert max(best.stage_costs) == min(max(sum(macs[:i]), sum(macs[i:])) for i in range(1, 8))
    assert "stage1" in str(best)
    with pytest.raises(UserError):
        archspec.split(whole, 9)


def test_split_of_a_spec_profile_is_the_cli_split():
    prof = archspec.profile("resnet18", batch=2)
    best = archspec.split(prof, 3)
    result = run_cli("split", "resnet18", "--stages", "3")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ stage1 "))
    assert best.stages[0][0] in row and best.stages[0][-1] in row


MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
            self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.SiLU())
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x = self.layer2(self.layer1(self.stem(x)))
            return self.head(x.mean((2, 3)))

    def build():
        return Net()

    net = Net()
    gray = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))  # 32x32 only
    not_a_model = 42

    def broken():
        raise RuntimeError("no weights here")
""")


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "usermodels.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("usermodels", None)


def test_cli_profiles_a_module_callable(user_code):
    runner = CliRunner()
    result = runner.invoke(main, ["profile", "usermodels:build", "--stages", "layer1,layer2", "--size", "32",
                                  "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [r["name"] for r in doc["stages"]] == ["layer1", "layer2", "unattributed"]
    assert doc["stages"][0]["forward"]["macs_by_op"]["act"] == 8 * 32 * 32  # ReLU6
    assert doc["stages"][1]["forward"]["macs_by_op"]["act"] == 16 * 16 * 16  # SiLU
    table = runner.invoke(main, ["profile", "usermodels:net", "--size", "32"], terminal_width=200)
    assert table.exit_code == 0 and "layer2" in table.output and "A module profile" in table.output
    gray = runner.invoke(main, ["profile", "usermodels:gray", "--channels", "1", "--size", "8", "--batch", "1",
                                "--format", "json"])
    assert gray.exit_code == 0, gray.output
    assert json.loads(gray.output)["stages"][0]["forward"]["macs_by_op"]["conv"] == 4 * 8 * 8 * 9
    for cmd in (["balance", "usermodels:gray", "--channels", "1", "--size", "8"],
                ["split", "usermodels:gray", "--stages", "2", "--channels", "1", "--size", "8"]):
        assert runner.invoke(main, cmd).exit_code == 0, cmd
    split = runner.invoke(main, ["split", "usermodels:net", "--stages", "2", "--size", "32"])
    assert split.exit_code == 0 and "stage1: stem .. layer1 (2)" in split.output, split.output
    for cmd in (["balance", "usermodels:net", "--size", "32"], ["compare", "usermodels:net", "resnet20_cifar",
                                                                  "--size", "32"]):
        res = runner.invoke(main, cmd, terminal_width=200)
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("args, pattern", [
    (["profile", "nosuchmodule:build"], "cannot import 'nosuchmodule'"),
    (["profile", "usermodels:nope"], "has no attribute 'nope'"),
    (["profile", "usermodels:not_a_model"], "not an nn.Module"),
    (["profile", "usermodels:broken"], "calling usermodels:broken\\(\\) failed: RuntimeError: no weights here"),
    (["profile", "usermodels:build", "--stages", "layer3"], "no submodule 'layer3'"),
    (["profile", "usermodels:fixed", "--size", "16"], r"fails on an input of shape \(256, 3, 16, 16\)"),
    (["profile", "usermodels:build", "--paper"], "--paper is the LoCo paper's Table 6 view"),
    (["profile", "resnet18", "--stages", "res2"], "--stages is for module:callable targets"),
    (["profile", "resnet18", "--channels", "1"], "--channels is for module:callable targets"),
    (["balance", "resnet18", "--channels", "1"], "--channels is for module:callable targets"),
    (["profile", "usermodels:gray"], r"fails on an input of shape \(256, 3, 224, 224\)"),
    (["balance", "usermodels:build", "--measure", "block_outputs"], "block_outputs needs a spec"),
    (["split", "usermodels:build", "--stages", "2", "--by", "time"], "--by time needs a spec"),
    (["table", "usermodels:build"], "is a module:callable, and this needs a spec"),
])
def test_cli_module_errors_are_one_line(user_code, args, pattern):
    import re

    result = run_cli(*args)  # in-process (fast); the subprocess test below runs it for real
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr


@pytest.mark.parametrize("args, pattern", [
    (["profile", "nosuchmodule:build"], "cannot import 'nosuchmodule'"),
    (["profile", "usermodels:broken"], "calling usermodels:broken\\(\\) failed: RuntimeError: no weights here"),
])
def test_cli_module_errors_in_a_real_process(user_code, args, pattern):
    import re

    result = subprocess.run([sys.executable, "-m", "archspec.cli", *args], capture_output=True, text=True,
                            cwd=user_code)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr
