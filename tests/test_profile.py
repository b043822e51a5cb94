"""The profiler: independent figures, traced == analytic, meta-tensor bytes == a real autograd run."""
import json
import re

import pytest
import torch

from archspec.nn.compiler import StagedNet
from archspec.profiling.analytic import OP_CLASSES, stage_counts
from archspec.profiling.memory import local_stages
from archspec.profiling.profiler import profile
from archspec.profiling.table6 import PAPER_TABLE6, table6
from archspec.spec import available, load_spec
from archspec.spec.resize import at_input_size

from .conftest import run_cli as run

ALL_SPECS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "presnet50", "mobilenet_v2", "vgg16_bn",
             "resnext50_32x4d", "wide_resnet50_2", "resnet20_cifar"]


def test_resnet50_totals_match_independent_figures():
    doc = profile(load_spec("resnet50"), batch=1).to_dict()
    assert doc["total"]["params"] == 25_557_032
    # torchvision's figure: 4.089 G multiply-accumulates in convolutions and the fc
    assert doc["total"]["forward"]["macs"] == 4_089_184_256
    assert doc["total"]["forward"]["flops"] == 2 * 4_089_184_256
    assert doc["settings"]["ops"] == ["conv", "fc"]


@pytest.mark.parametrize("name", ALL_SPECS)
def test_traced_forward_equals_analytic_for_every_op_class(name):
    spec = load_spec(name)
    prof = profile(spec, batch=3, training=False)
    analytic = stage_counts(spec)
    for row in prof.stages:
        assert row.forward == analytic[row.name].macs, row.name
        assert row.params == analytic[row.name].params
        assert row.activations["conv_outputs"] == 3 * 4 * analytic[row.name].conv_output_elems


@pytest.mark.parametrize("name", ["resnet50", "presnet50"])
def test_backward_comes_from_the_graph(name):
    """conv and fc: grad input + grad weight = 2x forward, except the first conv, whose input
    needs no gradient; the elementwise classes follow their own backward ops."""
    rows = {r.name: r for r in profile(load_spec(name), batch=2, training=False).stages}
    first = rows["conv1"]
    assert first.backward["conv"] == first.forward["conv"]
    for row in list(rows.values())[1:]:
        assert row.backward["conv"] == 2 * row.forward["conv"]
        assert row.backward["fc"] == 2 * row.forward["fc"]
        assert row.backward["bn"] == 2 * row.forward["bn"]
    # gradient accumulation at every block input with a shortcut: present, and not in conv1
    assert first.backward["add"] == 0 and rows["res2"].backward["add"] > 0


def test_compute_is_per_image_and_batch_independent():
    spec = load_spec("presnet50")
    one = profile(spec, batch=1, training=False)
    many = profile(spec, batch=16, training=False)
    for a, b in zip(one.stages, many.stages):
        assert a.forward == b.forward and a.backward == b.backward
        assert b.activations["output"] == 16 * a.activations["output"]


def _saved_by_graph(output: torch.Tensor, exclude: set) -> int:
    """Independent of archspec's hooks: walk the real autograd graph, read every node's
    ``_saved_*`` tensors and add up their storages once each."""
    storages, stack, seen = {}, [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except RuntimeError:
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor):
                    s = t.untyped_storage()
                    if s.data_ptr() not in exclude:
                        storages[s.data_ptr()] = s.nbytes()
        stack.extend(n for n, _ in node.next_functions)
    return sum(storages.values())


@pytest.mark.parametrize("name, size", [("resnet18", 224), ("presnet50", 224), ("resnet50", 96)])
def test_saved_bytes_equal_a_real_autograd_run_exactly(name, size):
    spec = at_input_size(load_spec(name), (size, size))
    torch.manual_seed(0)
    net = StagedNet(spec)
    exclude = {t.untyped_storage().data_ptr() for t in list(net.parameters()) + list(net.buffers())}
    out = net(torch.randn(2, 3, size, size))
    real = _saved_by_graph(out, exclude)
    prof = profile(spec, batch=2, training=False)
    assert sum(r.activations["saved"] for r in prof.stages) == real


def test_saved_bytes_follow_dtype():
    spec = load_spec("resnet18")
    f32 = profile(spec, batch=4, training=False).total().activations
    f16 = profile(spec, batch=4, dtype="float16", training=False).total().activations
    assert f16["output"] * 2 == f32["output"]
    # max pool indices stay int64, batch-norm statistics float32: less than half, not exactly
    assert f32["saved"] / 2 < f16["saved"] < f32["saved"] * 0.6


def test_memory_plans_follow_their_definitions():
    """The peak is the runner's step run on meta tensors: what is held between steps (weights,
    head, buffers, optimizer state) plus what exists at the peak."""
    spec = load_spec("resnet50")
    prof = profile(spec, batch=8, optimizer="adam")
    plans = prof.memory
    assert prof.groups == [["conv1", "res2"], ["res3"], ["res4"], ["res5"]]
    bpe = 4
    encoder = 25_557_032 - 2_049_000  # the classifier fc is not trained: no gradient, no state
    buffers = 2 * 26_560 * bpe + 53 * 8  # batch-norm running mean and var; num_batches_tracked (int64)
    for plan in plans.values():
        assert plan.weights == 25_557_032 * bpe + buffers  # resident, the head's weights too
        assert plan.optimizer == 2 * encoder * bpe  # Adam: two moments
        assert plan.gradients <= encoder * bpe
    # GIM peaks in its first local stage, before any encoder gradient exists; LoCo in unit 1,
    # where stage conv1+res2's graph still waits for res3's gradient (its own stage has only 2 KB of
    # gradients then: batch-norm biases accumulated first); SimCLR at the end of its forward.
    assert plans["gim"].peak_unit == "conv1+res2" and plans["gim"].gradients == 0
    assert plans["loco"].peak_unit == "(conv1+res2, res3)"
    assert plans["simclr"].activations > plans["loco"].activations > plans["gim"].activations
    doc = prof.to_dict()["training_memory"]
    assert doc["images"] == 16
    assert doc["methods"]["simclr"]["saving_vs_simclr"] == 1.0
    assert doc["methods"]["gim"]["saving_vs_simclr"] > doc["methods"]["loco"]["saving_vs_simclr"] > 1


def test_training_activations_hold_every_saved_tensor_at_simclrs_peak():
    """SimCLR peaks at the end of its forward (presnet50: in res7, the top): every stage's saved
    tensors are alive, plus the decoder's, the batch and the two views, and no gradient yet."""
    spec = load_spec("presnet50")
    two = profile(spec, batch=16, training=False).stages
    plans = profile(spec, batch=8).memory
    stage_bytes = sum(r.activations["saved"] for r in two if r.name != "head")
    assert plans["simclr"].gradients == 0
    assert plans["simclr"].activations > stage_bytes + 2 * 8 * 3 * 224 * 224 * 4  # + the two views
    assert plans["simclr"].activations - stage_bytes < 0.1 * stage_bytes


def test_local_stages_fold_the_stem():
    assert local_stages(load_spec("presnet50"))[0] == ["conv1", "res2"]
    assert [len(g) for g in local_stages(load_spec("presnet50"))] == [2, 1, 1, 1, 1, 1]


def test_table6_resnet50_memory_column_exactly_and_flops_closely():
    doc = table6(load_spec("resnet50"))
    paper = PAPER_TABLE6["resnet50"]
    assert [round(r["memory"], 2) for r in doc["rows"]] == paper["memory"]
    assert max(abs(r["flops"] - p) for r, p in zip(doc["rows"], paper["flops"])) < 0.06


def test_table6_presnet50_differs_from_the_paper():
    rows = table6(load_spec("presnet50"))["rows"]
    assert len(rows) == 6
    assert max(abs(r["memory"] - r["paper_memory"]) for r in rows) > 3  # res4: 22.87 vs 19.48
    # the pattern the paper shows holds: res5 and res7 have equal memory
    assert round(rows[3]["memory"], 6) == round(rows[5]["memory"], 6)


def test_cli_profile_default_table():
    result = run("profile", "presnet50")
    assert result.exit_code == 0, result.output
    assert "25,029,592" in result.output and "Peak training memory" in result.output
    assert "Conventions: FLOPs = 2 x MACs of conv, fc, forward, per image; memory = saved" in result.output


def test_cli_json_is_the_documented_schema(tmp_path):
    out = tmp_path / "p.json"
    result = run("profile", "resnet50", "--batch", "2", "--format", "json", "-o", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "archspec.profile/1"
    assert [s["name"] for s in doc["stages"]] == ["conv1", "res2", "res3", "res4", "res5", "head"]
    documented = _documented_keys()
    assert _key_paths(doc) == documented


WILDCARDS = ("macs_by_op.", "activation_bytes.", "activation_share.", "methods.", "activation_measures.")


def _key_paths(obj, prefix=""):
    """Every key path of the document; keys of open-ended mappings become '*'."""
    paths = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            k = "*" if prefix.endswith(WILDCARDS) else k
            paths.add(prefix + k)
            paths |= _key_paths(v, prefix + k + ".")
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        paths |= _key_paths(obj[0], prefix[:-1] + "[]." if prefix else "[].")
    return paths


def _documented_keys():
    from .conftest import ROOT

    text = (ROOT / "docs" / "profile.md").read_text()
    block = text.split("<!-- json-schema -->")[1].split("```")[1]
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines[0].split() == ["path", "meaning"]
    return {line.split()[0] for line in lines[1:]}


def test_cli_csv_and_md_parse_back():
    import io

    import pandas as pd

    result = run("profile", "resnet50", "--batch", "1", "--format", "csv")
    frame = pd.read_csv(io.StringIO(result.output))
    assert list(frame["stage"]) == ["conv1", "res2", "res3", "res4", "res5", "head", "total"]
    assert frame.loc[frame.stage == "total", "fwd_macs"].item() == 4_089_184_256
    assert frame.loc[frame.stage == "total", "params"].item() == 25_557_032
    md = run("profile", "resnet50", "--batch", "1", "--format", "md").output
    rows = [line for line in md.splitlines() if line.startswith("| total")]
    assert "25,557,032" in rows[0] and "8.178" in rows[0]


def test_cli_tex_is_booktabs():
    tex = run("profile", "presnet50", "--format", "tex").output
    assert tex.count(r"\begin{tabular}") == 2 and r"\toprule" in tex and r"\bottomrule" in tex
    assert tex.count("&") > 50 and "\\%" in tex


@pytest.mark.parametrize("args, pattern", [
    (["--batch", "-3"], r"Invalid value for '--batch': -3 is not in the range x>=1"),
    (["--batch", "two"], r"Invalid value for '--batch'"),
    (["--dtype", "float8"], r"Invalid value for '--dtype'"),
    (["--optimizer", "rmsprop"], r"Invalid value for '--optimizer'"),
    (["--ops", "conv,gelu"], r"unknown op class 'gelu'"),
    (["--size", "0x4"], r"--size height must be a positive integer"),
])
def test_cli_bad_options_one_line_exit_2(args, pattern):
    result = run("profile", "presnet50", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("spec, pattern", [
    ("presnet", r"unknown spec 'presnet' \(hint: did you mean 'presnet50'\?\)"),
    ("missing/file.yaml", r"no such spec file: missing/file.yaml"),
])
def test_cli_unknown_spec_or_missing_file(spec, pattern):
    result = run("profile", spec)
    assert result.exit_code == 2
    assert re.search(pattern, result.output.strip())


def test_cli_size_option_rescales():
    result = run("profile", "presnet50", "--size", "112", "--batch", "1", "--format", "json")
    doc = json.loads(result.output)
    assert [s["output_shape"][-1] for s in doc["stages"][:-1]] == [56, 28, 18, 12, 8, 6, 4]


@pytest.mark.slow
def test_every_named_spec_profiles():
    for name in available():
        assert profile(load_spec(name), batch=1).to_dict()["total"]["params"] > 0


def test_ops_all_counts_every_class():
    doc = profile(load_spec("resnet50"), batch=1, ops=OP_CLASSES, training=False).to_dict()
    assert doc["total"]["forward"]["macs"] == sum(doc["total"]["forward"]["macs_by_op"].values())


def test_profiling_never_imports_sympy_or_dynamo():
    """The cold-start budget (benchmarks/bench_profile.py): PyTorch's Python meta functions
    import sympy (~0.5 s) and torch._dynamo on first use; the counter answers those ops itself."""
    import subprocess
    import sys

    code = ("import sys; from archspec.spec import load_spec; from archspec.profiling.profiler import profile; "
            "profile(load_spec('presnet50'), batch=2); "
            "print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
