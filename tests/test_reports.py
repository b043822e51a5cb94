"""compare, balance, plots and the committed report (reports/presnet50/)."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest

from archspec.profiling.profiler import profile
from archspec.profiling.table6 import PAPER_TABLE6, TABLE6_OPS
from archspec.report import balance as balance_mod
from archspec.report import compare as compare_mod
from archspec.spec import load_spec

from .conftest import ROOT, run_cli

REPORT = ROOT / "reports" / "presnet50"


@pytest.fixture(scope="module")
def profiles():
    return {n: profile(load_spec(n), batch=256, ops=TABLE6_OPS).to_dict() for n in ("presnet50", "resnet50")}


def run(*args):
    result = run_cli(*args, catch_exceptions=False)
    return result


def md_table(text: str) -> list[dict]:
    """Parse the first GitHub markdown table in ``text`` back into dicts."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert set(rows[1].replace("|", "").replace(":", "").strip()) <= {"-"}, rows[1]
    return [dict(zip(header, (c.strip() for c in r.strip("|").split("|")))) for r in rows[2:]]


def num(text: str) -> float:
    return float(text.replace(",", "").rstrip("*").strip())


# -- balance ------------------------------------------------------------------------------------
def test_balance_resnet50_reproduces_table6(profiles):
    """With the paper's conventions (ops conv,fc,bn,pool; memory block_outputs), not the defaults."""
    doc = balance_mod.balance_from_profile(profiles["resnet50"], measure="block_outputs")
    assert [r["name"] for r in doc["stages"]] == ["conv1+res2", "res3", "res4", "res5"]
    paper = PAPER_TABLE6["resnet50"]
    for row, mem, flops in zip(doc["stages"], paper["memory"], paper["flops"]):
        assert row["memory_share"] == pytest.approx(mem, abs=0.005)
        assert row["flops_share"] == pytest.approx(flops, abs=0.05)
    for m in ("flops", "memory", "params"):
        assert sum(r[f"{m}_share"] for r in doc["stages"]) == pytest.approx(100)
    assert doc["settings"]["band"] == [22.5, 30.0]  # 0.9x..1.2x of 100/4
    mp = doc["model_parallel"]
    assert mp["slowest_stage"] == "res4"
    assert mp["speedup_bound"] == pytest.approx(100 / doc["stages"][2]["flops_share"])
    assert doc["training_memory"]["gim"]["saving_vs_simclr"] == pytest.approx(1.68, abs=0.01)  # the step on meta tensors
    memory = [r["memory_share"] for r in doc["stages"]]
    mean = sum(memory) / 4
    assert doc["imbalance"]["memory"]["max_over_mean"] == pytest.approx(max(memory) / mean)
    cv = (sum((m - mean) ** 2 for m in memory) / 4) ** 0.5 / mean
    assert doc["imbalance"]["memory"]["cv"] == pytest.approx(cv)


def test_balance_band_and_outside_list(profiles):
    doc = balance_mod.balance_from_profile(profiles["presnet50"], band=(15, 20), measure="block_outputs")
    outside = {(o["stage"], o["metric"]) for o in doc["outside_band"]}
    expected = set()
    for r in doc["stages"]:
        for m in ("flops", "memory"):
            if not 15 <= round(r[f"{m}_share"], 2) <= 20:
                expected.add((r["name"], m))
    assert outside == expected
    assert ("res4", "memory") in outside and ("res7", "flops") in outside and ("res5", "memory") not in outside
    assert not doc["balanced"]
    assert balance_mod.balance_from_profile(profiles["presnet50"], band=(0, 100))["balanced"]
    saved = balance_mod.balance_from_profile(profiles["presnet50"], band=(15, 20))  # the default measure
    assert saved["settings"]["measure"] == "saved"
    assert {(o["stage"], o["metric"]) for o in saved["outside_band"]} >= {("conv1+res2", "memory"), ("res3", "memory")}


def test_balance_cli_check_exit_codes(tmp_path):
    bad = run("balance", "resnet50", "--check", "--size", "64")
    assert bad.exit_code == 1
    assert "conv1+res2" in bad.output and "check failed" in bad.output
    good = run("balance", "resnet50", "--check", "--band", "0:100", "--size", "64")
    assert good.exit_code == 0, good.output
    md = run("balance", "presnet50", "--format", "md", "--measure", "block_outputs", "--ops", "conv,fc,bn,pool")
    rows = md_table(md.output)
    assert [r["local stage"] for r in rows] == ["conv1+res2", "res3", "res4", "res5", "res6", "res7"]
    assert rows[2]["block_outputs %"] == "22.87 *" and rows[3]["block_outputs %"] == "18.07"
    assert "Conventions: FLOPs = 2 x MACs of conv, fc, bn, pool, forward, per image; memory = block_outputs" in md.output
    default = md_table(run("balance", "presnet50", "--format", "md").output)
    assert default[0]["saved %"] == "20.54 *" and "GFLOPs" in default[0]
    assert sum(num(r["FLOPs %"]) for r in rows) == pytest.approx(100, abs=0.03)


@pytest.mark.parametrize("band", ["20:15", "a:b", "15", "0:101", "nan:20"])
def test_balance_bad_band_is_one_line(band):
    result = run_cli("balance", "presnet50", "--band", band)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:"), result.output


# -- compare ------------------------------------------------------------------------------------
def test_compare_rows_follow_both_networks(profiles):
    doc = compare_mod.compare_docs([profiles["presnet50"], profiles["resnet50"]], "saved")
    names = [r["stage"] for r in doc["rows"]]
    assert names == ["conv1", "res2", "res3", "res4", "res5", "res6", "res7", "head", "total"]
    assert set(doc["rows"][5]["specs"]) == {"presnet50"}  # res6
    assert doc["rows"][-1]["specs"]["resnet50"]["params"] == 25_557_032


def test_compare_md_csv_parse_back(profiles):
    md = run("compare", "presnet50", "resnet50", "--format", "md", "--measure", "block_outputs",
             "--ops", "conv,fc,bn,pool").output
    rows = {r["stage"]: r for r in md_table(md)}
    assert rows["total"]["resnet50 params"] == "25,557,032"
    assert rows["res6"]["resnet50 params"] == "-"
    by_name = {r["name"]: r for r in profiles["presnet50"]["stages"]}
    assert num(rows["res4"]["presnet50 GFLOPs"]) == pytest.approx(by_name["res4"]["forward"]["flops"] / 1e9, abs=5e-4)
    assert num(rows["res4"]["presnet50 memory %"]) == pytest.approx(
        100 * by_name["res4"]["activation_share"]["block_outputs"], abs=0.005)

    text = run("compare", "presnet50", "resnet50", "--format", "csv", "--ops", "conv,fc,bn,pool").output
    records = list(csv.DictReader(io.StringIO(text)))
    assert {(r["stage"], r["spec"]) for r in records} >= {("res7", "presnet50"), ("res5", "resnet50")}
    for r in records:
        doc = profiles[r["spec"]]
        rec = doc["total"] if r["stage"] == "total" else next(x for x in doc["stages"] if x["name"] == r["stage"])
        assert int(r["params"]) == rec["params"]
        assert int(r["flops"]) == rec["forward"]["flops"]
        assert int(r["memory_bytes"]) == rec["activation_bytes"]["saved"]
    assert "conv, fc, bn, pool" in md


def test_compare_latex_is_well_formed():
    tex = run("compare", "presnet50", "resnet50", "--format", "tex").output
    assert_well_formed_latex(tex)
    assert r"\multicolumn{6}{c}{Progressive ResNet-50}" in tex and r"\cmidrule(lr){8-13}" in tex
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    data_rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert all(line.count("&") == 12 for line in data_rows)  # stage + 2 x 6 columns
    assert "25,557,032" in tex and r"\%" in tex


def assert_well_formed_latex(tex: str) -> None:
    for env in re.findall(r"\\begin\{(\w+)\}", tex):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}"), env
    depth = 0
    for i, ch in enumerate(tex):
        if ch in "{}" and (i == 0 or tex[i - 1] != "\\"):
            depth += 1 if ch == "{" else -1
            assert depth >= 0
    assert depth == 0
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{"):
        assert rule in tex


def test_compare_needs_two_specs_and_known_names():
    one = run_cli("compare", "presnet50")
    assert one.exit_code == 2 and one.output.startswith("error:")
    unknown = run_cli("compare", "presnet50", "resnet5O")
    assert unknown.exit_code == 2 and len(unknown.output.strip().splitlines()) == 1


# -- plots --------------------------------------------------------------------------------------
def test_plot_files_are_real_images(tmp_path, profiles):
    from archspec.report.plots import plot_shares

    docs = [balance_mod.balance_from_profile(p) for p in profiles.values()]
    paths = plot_shares(docs, tmp_path / "shares")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert pdf[:5] == b"%PDF-" and len(pdf) > 5_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 600 and height > 600


# -- the committed report -----------------------------------------------------------------------
def test_committed_report_is_reproduced_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("report", "presnet50", "--against", "resnet50", "-o", "reports/presnet50/")
    assert result.exit_code == 0, result.output
    fresh = tmp_path / "reports" / "presnet50"
    committed = sorted(p.name for p in REPORT.iterdir())
    assert sorted(p.name for p in fresh.iterdir()) == committed
    for name in committed:
        if name.endswith((".md", ".csv", ".json", ".tex", ".txt")):
            assert (fresh / name).read_bytes() == (REPORT / name).read_bytes(), \
                f"reports/presnet50/{name} is out of date: rerun the command in its index.md"
    assert (fresh / "shares.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_index_explains_the_balance():
    index = (REPORT / "index.md").read_text()
    assert index.startswith("# Progressive ResNet-50 against ResNet-50")
    assert "archspec report presnet50 --against resnet50 -o reports/presnet50/" in index
    assert "Progressive ResNet-50 is the balanced one of the two" in index
    assert "![shares of FLOPs, memory and parameters per local stage](shares.png)" in index
    side = {r[""]: r for r in md_table(index)}
    assert side["GIM memory saving"]["Progressive ResNet-50"] == "3.76x"
    assert side["GIM memory saving"]["ResNet-50"] == "1.68x"
    for link in re.findall(r"\]\(([^)]+)\)", index):
        assert (REPORT / link).is_file(), link
    balance = json.loads((REPORT / "balance-presnet50.json").read_text())
    assert balance["schema"] == "archspec.balance/1" and len(balance["stages"]) == 6


def test_report_refuses_a_file_as_folder(tmp_path):
    target = tmp_path / "x"
    target.write_text("mine")
    result = run_cli("report", "presnet50", "-o", str(target))
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert target.read_text() == "mine"


# -- any valid spec -----------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.test_properties import specs as valid_specs  # noqa: E402


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=valid_specs())
def test_every_report_works_on_random_valid_specs(spec, tmp_path_factory):
    """compare, balance, table, plots and the report folder on specs nobody wrote by hand."""
    from archspec.report.arch_table import render_arch_table
    from archspec.report.bundle import build_report

    doc = profile(spec, batch=4, ops=TABLE6_OPS).to_dict()
    bal = balance_mod.balance_from_profile(doc)
    assert abs(sum(r["flops_share"] for r in bal["stages"]) - 100) < 1e-6 or bal["totals"]["flops"] == 0
    assert balance_mod.render(bal, "md") and balance_mod.render(bal, "tex")
    other = profile(load_spec("resnet18"), batch=4, size=(32, 32), ops=TABLE6_OPS).to_dict()
    if spec.name != "resnet18":
        cmp = compare_mod.compare_docs([doc, other], "saved")
        assert [r["stage"] for r in cmp["rows"]][-1] == "total"
        assert_well_formed_latex(compare_mod.render(cmp, "tex"))
    assert_well_formed_latex(render_arch_table([spec], "tex"))
    out = tmp_path_factory.mktemp("report")
    written = build_report([spec], out, batch=4)
    assert "shares.png" in written and (out / "index.md").read_text().startswith("# ")


def test_plot_writes_its_caption_beside_the_figure(tmp_path):
    stem = tmp_path / "shares"
    result = run_cli("balance", "resnet18", "--batch", "2", "--plot", str(stem))
    assert result.exit_code == 0, result.output
    caption = (tmp_path / "shares.caption.md").read_text()
    assert "2 x MACs of conv, fc" in caption and "bytes autograd saves for backward" in caption
    assert (tmp_path / "shares.png").is_file() and (tmp_path / "shares.pdf").is_file()
