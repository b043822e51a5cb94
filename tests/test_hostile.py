"""Hostile input (issue 15): YAML bombs, deep nesting, recursive aliases, absurd sizes, files that
are not files, crafted pickles. The hold, for specs AND training configs: exit 0 or 2, one line,
no traceback, within a time and memory cap per case (archspec/limits.py states the bounds)."""
from __future__ import annotations

import os
import pickle
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archspec import limits
from archspec.errors import UserError
from archspec.spec.loader import loads
from archspec.train.config import loads_config

from .conftest import ROOT, run_cli, spec_text

CASE_CAP_S = 2.0  # per refusal, in-process (each measured case takes about 0.01 s; CI machines are shared)
MEMORY_CAP = 64 * 2**20  # Python allocations while one hostile text is read
SPEC = spec_text("tiny_digits")
CONFIG = "spec: tiny_digits\nmethod: loco\ndata: {kind: digits}\nbatch: 16\nepochs: 1\n"


def laughs(levels: int = 10, width: int = 10) -> str:
    """The billion laughs: each anchor a list of ``width`` aliases of the one before."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def cli(*args):
    start = time.perf_counter()
    result = run_cli(*args, prog_name="archspec")
    result.elapsed = time.perf_counter() - start
    return result


def one_line_exit_2(result, must_say: str | None = None):
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and len(lines[0]) < 600, lines[0]
    assert result.elapsed < CASE_CAP_S, f"{result.elapsed:.2f} s: {lines[0]}"
    if must_say is not None:
        assert must_say in lines[0], lines[0]
    return lines[0]


# -- named regressions: the cases the adversarial pass found ---------------------------------------
def _nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else "{a: " * depth + "1" + "}" * depth


HOSTILE_SPECS = {
    "laughs_in_stages": (laughs() + SPEC.split("stages:")[0] + "stages: *l9\n", "expands to more than"),
    "laughs_in_notes": (SPEC + "notes:\n" + "".join("  " + ln + "\n" for ln in laughs().splitlines()),
                        "expands to more than"),
    "repeat_beyond_64_bits": (SPEC.replace("] x1", "] x100000000000000000000", 1), "repeat count is too large"),
    "100000_repeats": (SPEC.replace("] x1", "] x100000", 1), "expands to more than 2,000 blocks"),
    "2000_blocks_and_one": (SPEC.replace("] x1", "] x1997", 1), "expands to more than 2,000 blocks"),
    **{f"list_nested_{d}": (SPEC + "notes: " + _nested(d, "list") + "\n", "nest more than 64 deep")
       for d in (1000, 5000, 10000, 100000)},
    **{f"map_nested_{d}": (SPEC + "notes: " + _nested(d, "map") + "\n", "nest more than 64 deep")
       for d in (1000, 5000, 10000, 100000)},
    "self_alias": (SPEC + "notes: &a [*a]\n", "refers to a value that contains it"),
    "recursive_alias": (SPEC.replace("head:", "x: &b {c: [1, {d: *b}]}\nhead:", 1), "refers to a value"),
    "alias_before_anchor": (SPEC + "notes: *nowhere\n", None),
    "many_aliases": ("a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n" + SPEC, "more than 1,000 aliases"),
    "channels_400_digits": (SPEC.replace("16]", "1" + "0" * 400 + "]", 1), "401-digit number"),
    "channels_5000_digits_in_a_mapping": (SPEC.replace(
        "      - conv [3x3, 16]", "      - {kind: conv, convs: [{kernel: 3, channels: 1" + "0" * 5000 + "}]}", 1),
        "5,001 digits is far too large"),
    "stages_1001": ("stages:\n" + "  - {name: s, output_size: 1x1, blocks: ['conv [1x1, 1]']}\n" * 1001,
                    "over the limit of 1,000"),
    "binary": ("name: x\n\udcff", None),  # written as bytes below
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SPECS))
def test_hostile_spec_is_one_line(tmp_path, name):
    text, says = HOSTILE_SPECS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    for command in (["validate"], ["profile"], ["split", "-k", "2"], ["table"]):
        line = one_line_exit_2(cli(*command, path), says)
        assert f"{name}.yaml" in line, line  # located in the file (file:line where there is one)


def test_hostile_spec_lines_point_at_the_culprit(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(SPEC + "notes: " + _nested(10000, "list") + "\n")
    line = one_line_exit_2(cli("validate", path))
    assert f"deep.yaml:{SPEC.count(chr(10)) + 1}:" in line, line


@pytest.mark.parametrize("target, says", [("/dev/zero", "is a character device, not a spec file"),
                                          ("fifo", "is a FIFO (named pipe), not a spec file"),
                                          ("folder", "is a folder, not a spec file"),
                                          ("link_to_zero.yaml", "is a character device")])
def test_files_that_are_not_files(tmp_path, target, says):
    if target == "/dev/zero" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
    if target == "folder":
        (tmp_path / "folder").mkdir()
    if target == "link_to_zero.yaml":
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero")
        (tmp_path / target).symlink_to("/dev/zero")
    path = target if target.startswith("/") else tmp_path / target
    one_line_exit_2(cli("validate", path), says)
    one_line_exit_2(cli("profile", path), says)
    result = cli("train", path)  # a training config's reader: refused by kind too
    one_line_exit_2(result)


def test_too_large_a_file(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(SPEC + "notes: '" + "a" * limits.MAX_FILE_BYTES + "'\n")
    one_line_exit_2(cli("validate", path), "larger than 1 MiB")
    cfg = tmp_path / "big_config.yaml"
    cfg.write_text(CONFIG + "# " + "a" * limits.MAX_FILE_BYTES + "\n")
    one_line_exit_2(cli("train", cfg), "larger than 1 MiB")


HOSTILE_CONFIG_TAILS = {
    "laughs": (laughs(), "expands to more than"),
    "deep_list": ("notes: " + _nested(100000, "list") + "\n", "nest more than 64 deep"),
    "deep_map": ("notes: " + _nested(5000, "map") + "\n", "nest more than 64 deep"),
    "self_alias": ("optimizer: &o {lr: [*o]}\n", "refers to a value that contains it"),
    "huge_batch_digits": (None, "far too large"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIG_TAILS))
def test_hostile_config_is_one_line(tmp_path, name):
    tail, says = HOSTILE_CONFIG_TAILS[name]
    text = CONFIG.replace("batch: 16", "batch: 1" + "0" * 5000) if tail is None else CONFIG + tail
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    for command in (["validate"], ["train", "--max-steps", "1", "--out", tmp_path / "run"]):
        line = one_line_exit_2(cli(*command, path), says)
        assert f"{name}.yaml" in line, line
    assert not (tmp_path / "run").exists()


def test_commands_at_the_block_limit_are_quick(tmp_path):
    """A spec of exactly MAX_BLOCKS blocks loads; split and table on it take seconds (profile: about
    11 s, benchmarks/bench_limits.py)."""
    path = tmp_path / "limit.yaml"
    path.write_text(SPEC.replace("] x1", f"] x{limits.MAX_BLOCKS - 4}", 1))
    for command in (["split", "-k", "4"], ["table"]):
        result = cli(*command, path)
        assert result.exit_code == 0, result.output
        assert result.elapsed < 20, (command, result.elapsed)


# -- the fuzz: hostile YAML for specs and configs ------------------------------------------------------
SCALARS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.integers(min_value=0, max_value=6000).map(lambda n: "9" * max(n, 1)),  # huge ints, past int()'s limit
    st.sampled_from(["1e400", "-.inf", ".nan", "0x7fffffffffffffffffff", "2020-13-45", "~", "yes", "''", "'\\x00'",
                     "\"\\U0010FFFF\"", "\"\\U00110000\"", "!!python/object:os.system {}", "&a", "*a", "<<: *a"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20).map(lambda t: repr(t)),
)


@st.composite
def hostile_yaml(draw):
    """Pieces that are each fine alone: anchors and aliases that multiply, deep flow nesting, huge
    or odd scalars, stray bytes."""
    kind = draw(st.sampled_from(["laughs", "deep", "scalar", "bytes", "alias_loop", "merge"]))
    key = draw(st.sampled_from(["notes", "stages", "head", "input", "x", "data", "optimizer", "batch", "spec"]))
    if kind == "laughs":
        return laughs(draw(st.integers(2, 12)), draw(st.integers(2, 12))) + f"{key}: *l1\n"
    if kind == "deep":
        depth = draw(st.sampled_from([10, 63, 64, 65, 100, 1000, 20000]))
        return f"{key}: " + _nested(depth, draw(st.sampled_from(["list", "map"]))) + "\n"
    if kind == "scalar":
        return f"{key}: {draw(SCALARS)}\n"
    if kind == "bytes":
        return f"{key}: " + draw(st.binary(min_size=1, max_size=30)).decode("latin-1") + "\n"
    if kind == "alias_loop":
        return f"{key}: &a {{b: [*a]}}\n"
    return f"base: &a {{x: 1}}\n{key}: {{<<: *a, <<: *a}}\n"


def _held(read, text: str) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        read(text)
    except UserError as err:
        assert "\n" not in str(err) and len(str(err)) < 600, str(err)[:300]
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < CASE_CAP_S, f"{elapsed:.2f} s for {text[:200]!r}"
    assert peak < MEMORY_CAP, f"{peak / 2**20:.0f} MiB for {text[:200]!r}"


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(piece=hostile_yaml(), where=st.sampled_from(["before", "after", "instead"]))
def test_fuzz_specs(piece, where):
    text = {"before": piece + SPEC, "after": SPEC + piece, "instead": piece}[where]
    _held(lambda t: loads(t, "fuzz.yaml"), text)


@pytest.mark.slow
@FUZZ
@given(piece=hostile_yaml(), where=st.sampled_from(["before", "after", "instead"]))
def test_fuzz_configs(piece, where):
    text = {"before": piece + CONFIG, "after": CONFIG + piece, "instead": piece}[where]
    _held(lambda t: loads_config(t, "fuzz.yaml"), text)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(piece=hostile_yaml())
def test_fuzz_through_the_cli(tmp_path_factory, piece):
    """The same pieces as files, through `archspec validate`: exit 0 or 2, one line, no traceback."""
    folder = tmp_path_factory.mktemp("fuzz")
    for name, base in (("spec.yaml", SPEC), ("config.yaml", CONFIG)):
        path = folder / name
        path.write_bytes((base + piece).encode("utf-8", "surrogateescape"))
        result = cli("validate", path)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output[-500:]
        if result.exit_code == 2:
            one_line_exit_2(result)


# -- pickles: checkpoints and CIFAR-10 files cannot run code ----------------------------------------
class _Payload:
    """Unpickling this calls os.system: what a crafted file in a run directory would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    cfg = folder / "c.yaml"
    cfg.write_text(CONFIG + "threads: 1\ntensorboard: false\n")
    result = cli("train", cfg, "--out", folder / "run", "--max-steps", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    return folder / "run"


def test_a_crafted_checkpoint_cannot_run_code(tiny_run, tmp_path):
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "pwned"
    checkpoints = sorted((run / "checkpoints").glob("*.pt"))
    assert checkpoints
    for ckpt in checkpoints:  # torch.save pickles the object: torch.load(weights_only=False) would call it
        torch.save({"format": "x", "model": _Payload(marker)}, ckpt)
    for args in (["eval", run, "--probe-epochs", "1", "--no-knn"], ["plot", run, "-o", tmp_path / "figs"],
                 ["train", run / "config.yaml", "--out", run, "--resume", "--max-steps", "2", "--no-progress"]):
        result = cli(*args)
        assert not marker.exists(), f"{args[0]} ran the checkpoint's code"
        assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output[-800:]
        if args[0] != "plot":  # plot draws the loss curves from log.jsonl; t-SNE needs the checkpoint
            one_line_exit_2(result, "cannot read checkpoint")


def test_a_crafted_cifar_batch_cannot_run_code(tmp_path):
    import numpy as np

    from archspec.train.data import DataConfig, build_dataset

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    marker = tmp_path / "pwned"
    good = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10)), b"batch_label": b"x"}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump(good, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f)
    assert len(build_dataset(DataConfig("cifar10", root=str(tmp_path)), "test")) == 10  # the real format reads
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": []}, f)
    with pytest.raises(UserError) as excinfo:
        build_dataset(DataConfig("cifar10", root=str(tmp_path)), "test")
    assert not marker.exists()
    assert "posix.system" in str(excinfo.value) or "os.system" in str(excinfo.value), str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_the_bounds_are_stated():
    doc = (ROOT / "docs" / "spec-format.md").read_text()
    for value in (f"{limits.MAX_FILE_BYTES // 2**20} MiB", f"{limits.MAX_DEPTH}", f"{limits.MAX_ALIASES:,}",
                  f"{limits.MAX_NODES:,}", f"{limits.MAX_BLOCKS:,}", f"{limits.MAX_STAGES:,}"):
        assert value in doc.split("## Limits", 1)[1], value
    assert sys.getrecursionlimit() >= 3 * limits.MAX_DEPTH  # the composer recurses about 3 frames a level


def test_a_run_log_with_a_bad_line_is_one_line(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    log = run / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 2, "loss/res5": 1.0, "epoch"')  # cut by a crash: skipped
    assert cli("plot", run, "-o", tmp_path / "figs", "--no-tsne").exit_code == 0
    log.write_text('{"step": 1}\n[1, 2]\n' + "garbage\n")
    one_line_exit_2(cli("plot", run, "-o", tmp_path / "figs2", "--no-tsne"), "log.jsonl:2:")
