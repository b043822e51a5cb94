"""One vocabulary of numbers (issue: one set of defaults and labels for every command) and terminal
output that never cuts a number, at 80 and at 200 columns."""
from __future__ import annotations

import json
import re

import pytest

from archspec.cli import main
from archspec.vocabulary import DEFAULT_MEASURE, DEFAULT_OPS

from .conftest import run_cli

BOX = set("┏┃┡│├└┗┳╇┼┴━─┓┩┤┘┛╋")


def run(*args, columns: int = 200):
    result = run_cli(*args, env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


TERMINAL = [
    ("profile", "presnet50"),
    ("profile", "presnet50", "--paper"),
    ("compare", "presnet50", "resnet50"),
    ("compare", "presnet50", "resnet50", "resnet18"),
    ("balance", "presnet50"),
    ("split", "presnet50", "--stages", "6"),
    ("split", "resnet50", "--stages", "3", "--by", "memory", "--batch", "8"),
    ("design", "--stages", "4", "--time-limit", "2", "--no-progress"),
]


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and line[0] in BOX]


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("args", TERMINAL, ids=lambda a: " ".join(map(str, a)))
def test_terminal_tables_fit_and_never_cut_a_number(args, columns):
    out = run(*args, columns=columns)
    assert "…" not in out  # rich's ellipsis: a cut cell
    lines = _table_lines(out)
    assert lines, out
    assert max(len(line) for line in lines) <= columns, out
    cells = [c.strip() for line in lines for c in re.split(r"[┃│]", line) if c.strip()]
    for cell in cells:  # a number is whole: digits with their separators, never a fragment
        if re.fullmatch(r"[\d.,+\-x%*]+[kMG]?", cell):
            assert not cell.endswith((",", ".")), (cell, out)
    if columns == 200 and args[0] in ("profile", "compare") and "--paper" not in args:
        assert "25,029,592" in out  # in full where it fits


def test_narrow_terminal_says_what_it_did():
    narrow = run("profile", "presnet50", columns=80)
    assert "the table is wrapped into 2 parts to fit 80 columns" in narrow
    assert "(part 2 of 2)" in narrow
    assert "wrapped" not in run("profile", "presnet50", columns=200)
    # compare falls back to one table per spec, each with every number in full
    cmp = run("compare", "presnet50", "resnet50", columns=80)
    assert "Per-stage comparison: presnet50" in cmp and "Per-stage comparison: resnet50" in cmp
    assert "25,029,592" in cmp and "25,557,032" in cmp and "one table per spec" in cmp


def test_abbreviation_only_when_it_makes_the_table_fit():
    from archspec.report.terminal import abbreviate, fit

    assert abbreviate("25,029,592") == "25.0M" and abbreviate("3294.02") == "3294" and abbreviate("0.118") == "0.118"
    assert abbreviate("[red]12,345,678 *[/red]") == "[red]12.3M *[/red]"
    headers, rows = ["name", "a", "b"], [["x", "12,345,678", "98,765,432"]]
    groups, shown, notes = fit(headers, rows, width=26)
    assert groups == [[0, 1, 2]] and shown == [["x", "12.3M", "98.8M"]] and "abbreviated" in notes[0]
    groups, shown, notes = fit(headers, rows, width=20)  # does not fit even abbreviated: wrap, in full
    assert groups == [[0, 1], [0, 2]] and shown == rows and "wrapped into 2 parts" in notes[0]
    assert fit(headers, rows, width=80) == ([[0, 1, 2]], rows, [])


@pytest.mark.parametrize("args", [
    ("profile", "resnet18", "--batch", "2", "--format", "md"),
    ("profile", "resnet18", "--batch", "2", "--format", "csv"),
    ("profile", "resnet18", "--batch", "2", "--format", "tex"),
    ("profile", "presnet50", "--paper", "--format", "md"),
    ("compare", "resnet18", "resnet34", "--batch", "2", "--format", "md"),
    ("balance", "resnet18", "--batch", "2", "--format", "tex"),
    ("balance", "resnet18", "--batch", "2", "--format", "json"),
], ids=lambda a: " ".join(a))
def test_file_formats_do_not_depend_on_the_width(args):
    assert run(*args, columns=80) == run(*args, columns=200)


# -- one set of defaults and labels --------------------------------------------------------------
def _option(command: str, name: str):
    return next(p for p in main.commands[command].params if p.name == name)


@pytest.mark.parametrize("command", ["profile", "compare", "balance", "split", "report", "design", "table"])
def test_every_command_takes_the_same_ops_with_the_same_default(command):
    assert DEFAULT_OPS == ("conv", "fc") and DEFAULT_MEASURE == "saved"
    assert _option(command, "ops").default == "conv,fc"
    if command == "table":  # no memory column
        return
    measure = _option(command, "measure")
    if command == "design":  # the closed-form evaluator's one measure (docs/profile.md says why)
        assert measure.default == "block_outputs" and list(measure.type.choices) == ["block_outputs"]
    else:
        assert measure.default == "saved"
        assert set(measure.type.choices) == {"output", "conv_outputs", "block_outputs", "saved"}


def test_the_same_stage_shows_the_same_number_in_every_command():
    """PResNet-50's res4: 1.202 GFLOPs (2 x MACs of conv, fc) and 19.58/19.59 % of saved bytes everywhere."""
    prof = json.loads(run("profile", "presnet50", "--format", "json"))
    res4 = next(r for r in prof["stages"] if r["name"] == "res4")
    gflops = f"{res4['forward']['flops'] / 1e9:.3f}"
    assert gflops == "1.202"
    rows = {
        "profile": _row(run("profile", "presnet50", "--format", "md"), "res4"),
        "compare": _row(run("compare", "presnet50", "resnet50", "--format", "md"), "res4"),
        "balance": _row(run("balance", "presnet50", "--format", "md"), "res4"),
    }
    assert rows["profile"]["fwd GFLOPs"] == rows["compare"]["presnet50 GFLOPs"] == rows["balance"]["GFLOPs"] == gflops
    assert rows["profile"]["saved %"] == rows["compare"]["presnet50 memory %"] == "19.58"
    split = run("split", "presnet50", "--stages", "6")
    own = next(line for line in split.splitlines() if line.startswith("│ spec's own"))
    assert gflops in own.split("│")[6]  # s3 of the spec's own split is res4
    table = run("table", "presnet50")
    assert "| FLOPs (conv, fc) |  | 7.51 G |" in table
    assert "| FLOPs (conv, fc, bn, pool) |  | 7.53 G |" in run("table", "presnet50", "--ops", "conv,fc,bn,pool")
    conventions = "Conventions: FLOPs = 2 x MACs of conv, fc, forward, per image"
    assert conventions in table
    for text in (split, run("profile", "presnet50", columns=200), run("balance", "presnet50"),
                 run("compare", "presnet50", "resnet50"), run("design", "--stages", "4", "--time-limit", "1",
                                                              "--no-progress")):
        assert conventions in text


def _row(md: str, stage: str) -> dict:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == stage:
            return dict(zip(header, cells))
    raise AssertionError(md)


def test_small_modules_get_a_prefix_that_shows_their_numbers(tmp_path, monkeypatch):
    """A tiny module is not 0.000 GFLOPs: the unit follows the total (MFLOPs, KiB)."""
    (tmp_path / "tinymod.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    md = run("profile", "tinymod:build", "--size", "8", "--channels", "1", "--batch", "1", "--format", "md")
    header = md.splitlines()[2]
    assert "fwd kFLOPs" in header and "saved KiB" in header, md
    assert "0.000" not in _row(md, "total")["fwd kFLOPs"]


def test_paper_view_honours_formats_and_refuses_what_does_not_apply(tmp_path):
    out = tmp_path / "t6.tex"
    run("profile", "presnet50", "--paper", "--format", "tex", "-o", out)
    assert out.read_text().lstrip().startswith(("%", r"\begin{table}"))
    csv_text = run("profile", "presnet50", "--paper", "--format", "csv")
    assert csv_text.splitlines()[0] == "local_stage,memory_share,flops_share,paper_memory_share,paper_flops_share"
    doc = json.loads(run("profile", "presnet50", "--paper", "--format", "json"))
    assert doc["ops"] == ["conv", "fc", "bn", "pool"]  # the paper's unless --ops is given
    doc = json.loads(run("profile", "presnet50", "--paper", "--ops", "conv,fc", "--format", "json"))
    assert doc["ops"] == ["conv", "fc"]
    for opt in (["--batch", "8"], ["--dtype", "float16"], ["--measure", "output"], ["--optimizer", "adam"]):
        bad = run_cli("profile", "presnet50", "--paper", *opt)
        assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1, bad.output
        assert opt[0] in bad.output and "--paper" in bad.output
    bad = run_cli("profile", "presnet50", "--standalone")
    assert bad.exit_code == 2 and "--standalone applies to --format tex only" in bad.output
