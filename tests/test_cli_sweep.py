"""Every archspec command, swept with hypothesis over its options: bad input is one line and exit 2.

The invocations are generated from the click command tree (``archspec.cli.main``): every command,
every argument and option, by its click type (Choice, IntRange, FloatRange, INT, FLOAT, flags,
STRING, Path) and by what its name says it takes (a size, op classes, a band, a byte size...), so
that commands and options added later are swept without touching this file. Values: the valid
choices and boundary and out-of-range numbers (0, -1, 1, huge, not numbers), odd strings, the
shipped specs, small YAML files written here (a valid tiny spec, broken ones, training configs),
the configs in configs/ and ``module:callable`` references (a tiny module written here, and bad
ones). Half the cases have only good values (valid for the type; options that go with one kind
of target only there), so that commands run to their end; the other half have exactly one bad
value, one error at a time. The hold, for each invocation, run in-process through the same ``_Group.main`` as the real
CLI (``CliRunner.invoke`` calls ``main.main``):

- no traceback: no exception escapes the command (outside ``KNOWN_OWNED_ELSEWHERE``), and no
  'Traceback' on stderr;
- exit code 0 or 2, or 1 where the command documents it (``DOCUMENTED_EXIT_1``: balance --check,
  design finding nothing), with its one line;
- stderr holds at most one line once the commands' notes are set aside (``NOTES``: 'wrote FILE',
  design's 'searched ...', report's 'what ...'); with exit 2 that line is 'error: ...';
- each invocation finishes within ``CASE_CAP_S`` seconds.

What keeps the sweep affordable (``_affordable``): --no-progress wherever the option exists,
design's --time-limit at most 0.5 s, train only with --max-steps 1 into a temporary folder and in
one process, split --by time only on tiny specs with a small --time-batch and --runs, eval's probe
and plot's t-SNE kept small. Distributed training (train --processes stage, --data-parallel > 1)
spawns processes and is left to tests/test_train_distributed.py. Examples per command:
``EXAMPLES`` (a new command gets ``DEFAULT_EXAMPLES``); ARCHSPEC_SWEEP_SCALE=10 sweeps ten times as
many and ARCHSPEC_SWEEP_RANDOM=1 draws new ones (locally; by default the examples are derandomized,
so CI sees the same cases every run). ARCHSPEC_SWEEP_COLLECT=FILE records every failing case in
FILE instead of stopping at the first, ARCHSPEC_SWEEP_LOG=FILE every case.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archspec.cli import main

from .conftest import ROOT, run_cli

CASE_CAP_S = 30.0  # one invocation; the slowest swept cases take a few seconds
SCALE = float(os.environ.get("ARCHSPEC_SWEEP_SCALE", "1"))
RANDOM = os.environ.get("ARCHSPEC_SWEEP_RANDOM") == "1"  # locally: new cases every run (CI: the same ones)
DEFAULT_EXAMPLES = 10
EXAMPLES = {"list": 3, "show": 20, "table": 20, "validate": 25, "profile": 30, "balance": 20, "compare": 15,
            "split": 25, "design": 8, "report": 5, "train": 6, "eval": 5, "plot": 5}

# Exit code 1 where the command documents it (else 0 or 2): the option it needs (or None) and how
# its one stderr line starts.
DOCUMENTED_EXIT_1 = {
    "balance": ("--check", "check failed: "),  # a local stage outside the band
    "design": (None, "error: no "),  # no design found within --time-limit
}

# stderr lines that are notes of a command, not errors (the hold allows one line besides them).
NOTES = [
    re.compile(r"^wrote "),  # -o FILE, --plot STEM, report's files
    re.compile(r"^searched [\d,]+ designs in "),  # design's summary
    re.compile(r"^[\w .:/+-]* \.\.\.$"),  # report's progress
]

# Failures whose fix belongs in files this test's owner does not edit (archspec/commands/*,
# archspec/cli.py, archspec/io.py, archspec/report/*, archspec/design/*, archspec/train/*):
# (command or "*", a regex on the escaping exception's traceback, what and where, example
# invocations). A swept case failing so is not held; test_known_owned_elsewhere runs the examples
# and skips while they fail so, and fails once they hold: then delete the entry. Keep it empty.
HUGE = "99999999999999999999999"  # beyond a 64-bit integer
KNOWN_OWNED_ELSEWHERE: list[tuple[str, str, str, list[list[str]]]] = []  # none left: keep it so


# -- the world the sweep runs in: files it writes, a module, a run -------------------------------
TINY_SPEC = """\
name: sweep_tiny
title: A 4x4 net whose last stage is 1x1
input: {channels: 1, size: 4x4}
stages:
  - name: conv1
    output_size: 4x4
    blocks:
      - conv [3x3, 8]
  - name: res2
    output_size: 2x2
    blocks:
      - basic [3x3, 8, stride 2; 3x3, 8] x1
  - name: res3
    output_size: 1x1
    blocks:
      - basic [3x3, 16, stride 2; 3x3, 16] x1
head:
  pool: avg
  fc: 10
  features: 16
"""

BROKEN_SPECS = {
    "empty.yaml": "",
    "list.yaml": "- a\n- b\n",
    "syntax.yaml": "stages: [\n  name: x\n",
    "zero_channels.yaml": "stages:\n  - name: a\n    output_size: 4\n    blocks:\n      - conv [3x3, 0]\n",
    "mismatch.yaml": TINY_SPEC.replace("output_size: 2x2", "output_size: 3x3"),
    "unknown_key.yaml": TINY_SPEC + "colour: blue\n",
    "unicode.yaml": "名前: ü\nstages: ∂\n",
    "no_stages.yaml": "name: x\ninput: {channels: 3, size: 8x8}\nhead: {pool: avg, features: 3}\n",
    "wide.yaml": TINY_SPEC.replace("name: sweep_tiny", "name: sweep_wide").replace("3x3, 16", "3x3, 100000"),
}

MODULE = '''\
"""Models for tests/test_cli_sweep.py."""
from torch import nn


def tiny():
    # batch norm after the global pool: one value per channel at batch 1
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.BatchNorm1d(8), nn.Linear(8, 4))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.GroupNorm(4, 4), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.body(x))


def fixed():
    # refuses anything but 3x8x8
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))


def not_a_module():
    return 42


def raises():
    raise RuntimeError("builder failed")


def needs_argument(width):
    return nn.Linear(width, width)


CONSTANT = 3
'''

BROKEN_MODULE = "raise ImportError('sweep_broken_mod cannot be imported')\n"
SYNTAX_MODULE = "def broken(:\n"


def _config(spec: str, **over) -> str:
    base = {"spec": spec, "method": "loco", "data": "{kind: digits, size: 16}", "batch": "8", "epochs": "1",
            "optimizer": "{name: adam, lr: 0.002, lr_scaling: none}", "seed": "0", "threads": "1"}
    base.update(over)
    return "".join(f"{k}: {v}\n" for k, v in base.items() if v is not None)


GOOD_CONFIGS = ("cfg_tiny", "cfg_small_images", "cfg_small_images_pool")  # the others are broken


class World:
    """Paths the sweep draws from (all under one temporary folder, also the working directory)."""

    def __init__(self, root: Path):
        self.root = root
        self.tiny_spec = root / "sweep_tiny.yaml"
        self.tiny_spec.write_text(TINY_SPEC)
        self.broken_specs = []
        for name, text in BROKEN_SPECS.items():
            (root / name).write_text(text, encoding="utf-8")
            self.broken_specs.append(str(root / name))
        (root / "binary.yaml").write_bytes(b"\x00\xff\xfe garbage \x80")
        self.broken_specs.append(str(root / "binary.yaml"))
        (root / "folder.yaml").mkdir()
        self.broken_specs.append(str(root / "folder.yaml"))
        (root / "sweep_models_mod.py").write_text(MODULE)
        (root / "sweep_broken_mod.py").write_text(BROKEN_MODULE)
        (root / "sweep_syntax_mod.py").write_text(SYNTAX_MODULE)
        self.module_refs = ["sweep_models_mod:tiny", "sweep_models_mod:Net", "sweep_models_mod:fixed"]
        self.bad_refs = ["sweep_models_mod:not_a_module", "sweep_models_mod:raises", "sweep_models_mod:missing",
                         "sweep_models_mod:needs_argument", "sweep_models_mod:CONSTANT", "sweep_broken_mod:x",
                         "sweep_syntax_mod:broken", "no_such_module_xyz:build", "os:getcwd", "sweep_models_mod:",
                         ":tiny", "a:b:c", "sweep_models_mod:Net.body"]
        digits = ROOT / "specs" / "tiny_digits.yaml"
        configs = {
            "cfg_tiny.yaml": _config(str(self.tiny_spec), batch="2", decoders="{block: false}"),
            "cfg_small_images.yaml": _config("tiny_digits", data="{kind: digits, size: 4}", batch="2"),
            "cfg_small_images_pool.yaml": _config("tiny_digits", data="{kind: digits, size: 4}", batch="2",
                                                  decoders="{block: false}"),
            "cfg_bad_method.yaml": _config(str(digits), method="bogus"),
            "cfg_bad_batch.yaml": _config("tiny_digits", batch="0"),
            "cfg_bad_spec.yaml": _config("no_such_spec"),
            "cfg_bad_data.yaml": _config("tiny_digits", data="{kind: bogus}"),
            "cfg_list.yaml": "- spec\n- method\n",
            "cfg_unknown_key.yaml": _config("tiny_digits", colour="blue"),
            "cfg_broken_spec.yaml": _config(str(root / "mismatch.yaml")),
            "cfg_images_no_root.yaml": _config("tiny_digits", data="{kind: image_folder}"),
        }
        for name, text in configs.items():
            (root / name).write_text(text)
        self.good_configs = [str(p) for p in sorted((ROOT / "configs").glob("*.yaml"))] + \
            [str(root / n) for n in configs if not n.startswith("cfg_bad") and n.replace(".yaml", "") in GOOD_CONFIGS]
        self.bad_configs = [str(root / n) for n in configs if str(root / n) not in self.good_configs]
        self.configs = self.good_configs + self.bad_configs
        self.tiny_configs = [str(ROOT / "configs" / f"digits_{m}.yaml") for m in ("simclr", "gim", "loco")] + \
            [str(root / "cfg_tiny.yaml")]
        (root / "empty_dir").mkdir()
        (root / "a_file.txt").write_text("not a run\n")
        self.run_dirs = [str(root / "empty_dir"), str(root / "a_file.txt"), str(root / "no_such_run"),
                         str(ROOT / "configs")]
        self.trained_run: str | None = None

    def specs(self) -> list[str]:
        from archspec.spec import available

        return available()

    def out_paths(self) -> list[str]:
        r = self.root
        return [str(r / "out.txt"), str(r / "out.json"), "out_rel.yaml", str(r / "no_such_dir" / "deeper" / "f.txt"),
                str(r / "empty_dir"), str(r / "a_file.txt"), "", "ü_out.md"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    w = World(root)
    old_cwd = os.getcwd()
    os.chdir(root)  # outputs given as relative paths land here
    sys.path.insert(0, str(root))
    try:
        yield w
    finally:
        os.chdir(old_cwd)
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith(("sweep_models_mod", "sweep_broken_mod",
                                                              "sweep_syntax_mod"))]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def trained_run(world):
    """One LoCo step on the digits (a few seconds): the run that eval and plot take."""
    out = world.root / "trained_run"
    result = invoke(["train", world.tiny_configs[2], "--max-steps", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, describe(["train"], result)
    world.trained_run = str(out)
    return str(out)


# -- running one invocation -----------------------------------------------------------------------
class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_cap(seconds: float):
    """SIGALRM ends a case that runs too long (main thread, POSIX; elsewhere the elapsed time is checked)."""
    if not hasattr(signal, "setitimer") or os.name != "posix":
        yield
        return

    def ring(signum, frame):
        raise CaseTimeout(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def invoke(args: list[str]):
    """``archspec ARGS`` in-process: CliRunner calls ``main.main``, i.e. archspec.cli._Group.main,
    which turns bad input into one line and an exit code, as in a real process."""
    import torch

    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    start = time.perf_counter()
    try:
        with _time_cap(CASE_CAP_S):
            result = run_cli(*args, prog_name="archspec", terminal_width=120)
    finally:
        torch.set_num_threads(threads)  # a training config sets them; the next cases stay as fast
        torch.set_default_dtype(dtype)
    result.elapsed = time.perf_counter() - start
    return result


def _escaped(result) -> BaseException | None:
    exc = result.exception
    return None if exc is None or isinstance(exc, SystemExit) else exc


def _last_line(result) -> str:
    exc = _escaped(result)
    return traceback.format_exception_only(type(exc), exc)[-1].strip() if exc is not None else ""


def describe(args, result) -> str:
    exc = _escaped(result)
    tail = "".join(traceback.format_exception(*result.exc_info)[-6:]) if exc is not None else ""
    return (f"archspec {shlex.join(args)}\n  exit {result.exit_code} in {result.elapsed:.1f} s\n"
            f"  stderr: {result.stderr[-1500:]!r}\n  stdout tail: {result.stdout[-300:]!r}\n{tail}")


def known_elsewhere(command: str, result) -> str | None:
    if _escaped(result) is None:
        return None
    text = "".join(traceback.format_exception(*result.exc_info))
    for name, pattern, why, _ in KNOWN_OWNED_ELSEWHERE:
        if name in (command, "*") and re.search(pattern, text):
            return why
    return None


def problems(command: str, args: list[str], result) -> list[str]:
    """What breaks the hold for this invocation (empty: it holds)."""
    found = []
    if isinstance(_escaped(result), CaseTimeout):
        return [f"ran over {CASE_CAP_S:g} s"]
    if _escaped(result) is not None:
        return [f"traceback: {_last_line(result)}"]
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        found.append("'Traceback' in the output")
    needs, starts = DOCUMENTED_EXIT_1.get(command, ("-", None))
    allowed = {0, 2} | ({1} if starts is not None and (needs is None or needs in args) else set())
    if result.exit_code not in allowed:
        found.append(f"exit code {result.exit_code} (allowed: {sorted(allowed)})")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not any(n.search(ln) for n in NOTES)]
    if len(lines) > 1:
        found.append(f"{len(lines)} lines on stderr")
    if result.exit_code == 2 and not (len(lines) == 1 and lines[0].startswith("error: ")):
        found.append("exit 2 without one 'error: ...' line")
    if result.exit_code == 1 and not (len(lines) == 1 and lines[0].startswith(starts or "")):
        found.append(f"exit 1 without one '{starts}...' line")
    if result.elapsed > CASE_CAP_S:
        found.append(f"took {result.elapsed:.1f} s (cap {CASE_CAP_S:g} s)")
    return found


# -- values, by click type and by what an option's name says -------------------------------------
# Each case is either all good values (the command runs to its end) or has exactly one bad value
# (one error at a time, as a user makes them); "good" means valid for the option's type, not
# necessarily accepted by the command (a --size a spec refuses, a --stages the chain cannot have).
ODD_STRINGS = ["", " ", "x", "1x1", "32", "0x0", "100000x100000", "conv,fc", "bogus", "ü∂ß", "-1", "0", ",", ":",
               "1:2", "nan", "inf", "a b", "\t", "--", "../", "%s", "{}"]
BAD_INTS = ["0", "-1", HUGE, "x", "", "1.5", "0x10", "1e3", "٣"]
GOOD_INTS = ["1", "2", "3", "4", "7"]
BAD_FLOATS = ["0", "-1", "inf", "nan", "-inf", "1e999", "x", ""]
GOOD_FLOATS = ["0.01", "0.3", "1", "1e-9"]
# Options by name: (good values, bad values); the generic bad values of the type are drawn too.
BY_NAME = {
    "size": (["32", "16", "8", "1x1", "2x2", "7x9", "64x32", "100000x100000"], ["0x0", "224x224x3", "-4", "x32", "8x"]),
    "ops": (["conv,fc", "all", "bn", "conv,bn,pool", " all ", "conv,,fc"], ["bogus", "ALL", "conv;fc", ","]),
    "band": (["15:20", "0:100", "20:40", "10:90", "15 : 20"], ["20:15", "50:50", "1:2:3", "-5:200", "nan:inf", "10:"]),
    "memory_cap": (["2GiB", "500MB", "1", "1.5 GB", "1TB", "1 KiB"], ["0", "-1", "1e3", "12XB", "x"]),
    "memory_budget": (["16GiB", "1", "500MB", "1.5GiB", "1TB"], ["0", "-1", "x", "1e9", "5 parsecs"]),
    "budget_flops": (["4.1G", "1", "750k", "1T", "4.1 G", "1e99"], ["0", "-1", "inf", "nan", "x"]),
    "budget_params": (["30M", "25.6M", "1", "100k"], ["0", "-1", "1e99", "inf", "x"]),
    "module_stages": (["body,head", "0,1", "body", "head,body", "body.0"], ["bogus", ",", "a,,b", "0,6", "body,body"]),
    "links": (["body,head", "0,1,2", "0", "body"], ["bogus", ",", "body,body", "7"]),
    "by": (["flops", "memory", "params", "time", "mix"], ["Flops", "bogus", "time,flops", ""]),
    "stage": (["all", "res3", "conv1+res2", "res5", "conv1"], ["head", "bogus", "", "res3,res4"]),
    "seed": (["0", "1", "2"], ["-1", HUGE, "x"]),
    "n_stages": (["2", "3", "4", "6"], ["0", "1", "-1", "1000000", HUGE, "x"]),
    "stages": (["1", "2", "3", "4"], ["0", "-1", "1000", HUGE, "x"]),
}
# Per-option cost caps: a valid number above the cap becomes the cap (bad values pass untouched).
# Numbers beyond 64 bits pass for the options in KEEP_OVERFLOW: torch refuses them before any work.
# split --threads stays at most 4: 'split --by time --threads 100000' kills the process (a segfault
# in torch's OpenMP pool; archspec/commands/split.py should bound --threads).
INT_CAPS = {("split", "time_batch"): 4, ("split", "runs"): 2, ("split", "threads"): 4, ("eval", "probe_epochs"): 3,
            ("plot", "tsne_samples"): 60, ("design", "top"): 50, ("train", "max_steps"): 1,
            ("train", "data_parallel"): 1}
KEEP_OVERFLOW = {("split", "time_batch"), ("split", "threads")}
FLOAT_CAPS = {("design", "time_limit"): 0.5}
INT_FLOORS = {("eval", "batch_size"): 256}  # eval's feature pass at batch 1 takes half a minute
ADDED = {"design": ["--time-limit", "0.5"], "eval": ["--probe-epochs", "3"], "train": ["--max-steps", "1"]}
TINY_SPECS = ("tiny_digits", "resnet20_cifar")
UNWRITABLE = sys.platform.startswith("linux") and os.path.isdir("/proc")  # a folder that cannot hold files
# Options that only go with one kind of target; a case of good values gives them only there.
MODULE_ONLY = {"module_stages", "channels", "links", ("split", "size")}
CONFIG_ONLY = {("validate", n) for n in ("memory_budget", "check_data", "processes", "schedule", "data_parallel")}


def _as_number(text: str, kind=float):
    try:
        return kind(text)
    except (TypeError, ValueError, OverflowError):
        return None


def _int_values(param, good: bool) -> list[str]:
    t = param.type
    lo = t.min if isinstance(t, click.IntRange) and t.min is not None else None
    hi = t.max if isinstance(t, click.IntRange) and t.max is not None else None
    if good:
        values = [v for v in GOOD_INTS if (lo is None or int(v) >= lo) and (hi is None or int(v) <= hi)]
        return values + [str(b) for b in (lo, hi) if b is not None] + (["1000000", HUGE] if hi is None else [])
    return BAD_INTS + ([str(lo - 1)] if lo is not None else []) + ([str(hi + 1)] if hi is not None else [])


def _float_values(param, good: bool) -> list[str]:
    t = param.type
    if good:
        lo = t.min if isinstance(t, click.FloatRange) else None
        return [v for v in GOOD_FLOATS if lo is None or float(v) > lo]
    return BAD_FLOATS


def _path_values(param, world: World, good: bool) -> list[str]:
    r = world.root
    if good:
        if not param.type.file_okay:  # a folder
            return [str(r / "new_dir"), "rel_dir", str(r / "new_dir" / "inner")]
        return [str(r / "out.txt"), str(r / "out.json"), "out_rel.yaml", "ü_out.md", str(r / "out")]
    bad = [str(r / "no_such_dir" / "deeper" / "f.txt"), ""] + (["/proc/sweep_out.txt"] if UNWRITABLE else [])
    return bad + ([str(r / "a_file.txt")] if not param.type.file_okay else [str(r / "empty_dir")])


def _spec_values(world: World, good: bool, cheap: bool = False) -> list[str]:
    if good:
        shipped = world.specs()
        if cheap:
            shipped = [s for s in shipped if s in TINY_SPECS + ("resnet18", "mobilenet_v2", "presnet50")]
        return shipped + [str(world.tiny_spec), "sweep_tiny.yaml"] * 2 + world.module_refs
    return world.broken_specs + world.bad_refs + ["presnet5", "RESNET50", "resnet50.yaml", str(ROOT / "specs"),
                                                  world.configs[0], "", "ü", "no/such.yaml"]


def argument_values(command: str, param, world: World, good: bool) -> list[str]:
    name = param.name
    if name in ("spec", "specs"):
        return _spec_values(world, good)
    if name == "config":
        return world.tiny_configs + world.good_configs if good else \
            world.bad_configs + world.broken_specs + world.run_dirs + ["", "ü.yaml"]
    if name in ("run", "runs"):
        return [world.trained_run] if good and world.trained_run else world.run_dirs + [world.configs[0], ""]
    if isinstance(param.type, click.Path):
        return _path_values(param, world, good)
    return ["x", "1"] if good else ODD_STRINGS


def option_values(command: str, param, world: World, good: bool) -> list[str]:
    t, name = param.type, param.name
    if name == "against" or "spec" in name:
        return _spec_values(world, good, cheap=True)
    if name in BY_NAME:
        pool_good, pool_bad = BY_NAME[name]
        if good:
            return pool_good
        generic = ODD_STRINGS if isinstance(t, click.types.StringParamType) else BAD_INTS
        return pool_bad * 3 + generic
    if isinstance(t, click.Choice):
        choices = [str(c) for c in t.choices]
        return choices if good else [choices[0].upper(), "bogus", "", choices[0] + " "]
    if isinstance(t, (click.IntRange, click.types.IntParamType)):
        return _int_values(param, good)
    if isinstance(t, (click.FloatRange, click.types.FloatParamType)):
        return _float_values(param, good)
    if isinstance(t, click.Path):
        return _path_values(param, world, good)
    return ["x", "1", "all", "32"] if good else ODD_STRINGS  # a string option added later


@st.composite
def invocations(draw, command: str, world: World):
    cmd = main.commands[command]
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    options = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
    # which parameters are given: required ones (now and then one is left out), a third of the others
    chosen = [p for p in cmd.params if isinstance(p, click.Argument) or p.required or draw(st.integers(0, 2)) == 0]
    chosen = [p for p in chosen if not (p.required and draw(st.integers(0, 29)) == 0)]
    valued = [p for p in chosen if not (isinstance(p, click.Option) and (p.is_flag or p.count))]
    bad = draw(st.sampled_from(valued)) if valued and draw(st.booleans()) else None  # half the cases: one bad value

    def value(param, values_of):
        return draw(st.sampled_from(values_of(command, param, world, param is not bad)))

    args: list[str] = [command]
    for param in arguments:
        if param not in chosen:
            continue
        n = draw(st.integers(1, 3)) if param.nargs == -1 else 1
        args += [value(param, argument_values) for _ in range(n)]
    targets = args[1:]
    module = any(":" in t for t in targets)
    config = any(t in world.configs for t in targets)
    for param in options:
        if param not in chosen:
            continue
        if bad is None and param.name in ("standalone",) and not any(a in ("tex",) for a in args):
            continue  # --standalone goes with --format tex
        if bad is None and ((param.name in MODULE_ONLY or (command, param.name) in MODULE_ONLY) and not module
                            or (command, param.name) in CONFIG_ONLY and not config):
            continue
        if param.is_flag or param.count:
            args.append(draw(st.sampled_from(param.opts + param.secondary_opts)))
            continue
        opt = draw(st.sampled_from(param.opts))
        for _ in range(2 if param.multiple and draw(st.booleans()) else 1):
            v = value(param, option_values)
            args += [f"{opt}={v}"] if v.startswith("-") and opt.startswith("--") else [opt, v]
    if bad is None and draw(st.integers(0, 14)) == 0:
        args.append(draw(st.sampled_from(["--bogus-option", "-z", "--help", "extra_argument"])))
    return _affordable(command, args, world)


# -- keeping every case affordable ----------------------------------------------------------------
def _option_index(args: list[str], opts) -> list[int]:
    return [i for i, a in enumerate(args) if a in opts or any(a.startswith(o + "=") for o in opts if o.startswith("--"))]


def _value_at(args, i) -> tuple[str | None, int]:
    """The value of the option at ``i`` and the index that holds it."""
    if "=" in args[i] and args[i].startswith("--"):
        return args[i].split("=", 1)[1], i
    return (args[i + 1], i + 1) if i + 1 < len(args) else (None, -1)


def _set_value(args, i, value: str) -> None:
    if "=" in args[i] and args[i].startswith("--"):
        args[i] = args[i].split("=", 1)[0] + "=" + value
    elif i + 1 < len(args):
        args[i + 1] = value


def _affordable(command: str, args: list[str], world: World) -> list[str]:
    cmd = main.commands[command]
    params = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
    for (name_cmd, name), cap in list(INT_CAPS.items()) + list(FLOAT_CAPS.items()):
        if name_cmd != command or name not in params:
            continue
        kind = float if (name_cmd, name) in FLOAT_CAPS else int
        for i in _option_index(args, params[name].opts):
            value, _ = _value_at(args, i)
            number = _as_number(value, kind) if value is not None else None
            if number is not None and number == number and number > cap and \
                    not ((name_cmd, name) in KEEP_OVERFLOW and number >= 2 ** 63):
                _set_value(args, i, str(cap))
    for (name_cmd, name), floor in INT_FLOORS.items():
        if name_cmd == command and name in params:
            for i in _option_index(args, params[name].opts):
                value, _ = _value_at(args, i)
                number = _as_number(value, int) if value is not None else None
                if number is not None and 0 < number < floor:
                    _set_value(args, i, str(floor))
    if command in ADDED and not _option_index(args, [ADDED[command][0]]):
        args += ADDED[command]
    if "progress" in params:  # progress bars off (the hold is about one line of error)
        opts = params["progress"].opts + params["progress"].secondary_opts
        args = [a for a in args if a not in opts] + ["--no-progress"]
    if command == "train":
        for i in _option_index(args, params["processes"].opts):  # one process (spawning is for another test)
            _set_value(args, i, "one")
        outs = _option_index(args, params["out_dir"].opts)
        for i in outs:
            value, _ = _value_at(args, i)
            if value is not None and os.path.isabs(value) and not value.startswith(str(world.root)):
                _set_value(args, i, str(world.root / "train_out"))
        if not outs:
            args += ["--out", str(world.root / "train_out")]
    if command == "split" and any(v == "time" or v.endswith("=time") for v in args):
        # real tensors: only tiny specs (and their module refs are refused anyway)
        if len(args) > 1 and not (args[1] in TINY_SPECS or args[1] == str(world.tiny_spec) or ":" in args[1]):
            args[1] = "tiny_digits"
    return args


# -- the sweep -------------------------------------------------------------------------------------
COMMANDS = sorted(main.commands)


def _examples(command: str) -> int:
    return max(1, int(EXAMPLES.get(command, DEFAULT_EXAMPLES) * SCALE))


SLOW_SWEEPS = {"balance", "compare"}  # over 5 s on a 2-core machine (pytest --durations=0)


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_SWEEPS else c
                                     for c in COMMANDS])
def test_sweep_one_line_and_exit_code(command, world, request):
    """Generated invocations of COMMAND: exit 0 or 2 (or its documented 1), one line, no traceback."""
    if command in ("eval", "plot"):
        request.getfixturevalue("trained_run")
    collect = os.environ.get("ARCHSPEC_SWEEP_COLLECT")  # a file: record every failure instead of stopping

    @settings(max_examples=_examples(command), deadline=None, derandomize=not RANDOM, database=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(args=invocations(command, world))
    def sweep(args):
        result = invoke(args)
        found = problems(command, args, result)
        if os.environ.get("ARCHSPEC_SWEEP_LOG"):  # a file: one line per case (exit, seconds, args)
            with open(os.environ["ARCHSPEC_SWEEP_LOG"], "a", encoding="utf-8") as f:
                f.write(f"{result.exit_code} {result.elapsed:.2f} {shlex.join(args)} :: "
                        f"{(result.stderr.strip().splitlines() or [''])[-1][:150]}\n")
        known = known_elsewhere(command, result) if found else None
        if found and collect:
            with open(collect, "a", encoding="utf-8") as f:
                f.write(f"== {'(known) ' if known else ''}{'; '.join(found)}\n{describe(args, result)}\n")
            return
        if known:
            return
        assert not found, "; ".join(found) + "\n" + describe(args, result)

    sweep()


class _PoolsOnly(World):
    """A World without files: enough to ask for the value pools."""

    def __init__(self):
        self.root = Path("/nonexistent")
        self.tiny_spec, self.broken_specs, self.module_refs, self.bad_refs = self.root / "t.yaml", ["b"], ["m:a"], ["m:b"]
        self.configs = self.tiny_configs = self.good_configs = self.bad_configs = ["c.yaml"]
        self.run_dirs, self.trained_run = ["r"], None


SWEPT_TYPES = (click.Choice, click.IntRange, click.FloatRange, click.types.IntParamType, click.types.FloatParamType,
               click.types.BoolParamType, click.types.StringParamType, click.Path)


def test_sweep_knows_every_option_type():
    """Every command is swept, and every argument and option has a type the sweep draws values for:
    a command or option added later is swept as it is; a new click type fails here until it is."""
    assert set(COMMANDS) == set(main.commands) and len(COMMANDS) >= 13
    world = _PoolsOnly()
    for name, cmd in main.commands.items():
        for param in cmd.params:
            assert isinstance(param.type, SWEPT_TYPES), (name, param.name, type(param.type).__name__)
            if isinstance(param, click.Option) and not (param.is_flag or param.count):
                for good in (True, False):
                    assert option_values(name, param, world, good), (name, param.name, good)


@pytest.mark.parametrize("entry", range(len(KNOWN_OWNED_ELSEWHERE)) or [None])
def test_known_owned_elsewhere(world, entry, request):
    """The examples of each KNOWN_OWNED_ELSEWHERE entry still fail as described (skipped, with the
    reason), or hold: then this fails, asking for the entry to be deleted."""
    if entry is None:
        pytest.skip("KNOWN_OWNED_ELSEWHERE is empty")
    command, pattern, why, examples = KNOWN_OWNED_ELSEWHERE[entry]
    if command == "*" and not UNWRITABLE:
        pytest.skip("needs an unwritable folder (/proc)")
    if any("{trained_run}" in a for args in examples for a in args):
        run = request.getfixturevalue("trained_run")
        examples = [[a.replace("{trained_run}", run) for a in args] for args in examples]
    still = []
    for args in examples:
        result = invoke(args)
        found = problems(args[0], args, result)
        if not found:
            continue
        assert known_elsewhere(args[0], result) == why, "fails otherwise than described: " + \
            "; ".join(found) + "\n" + describe(args, result)
        still.append(shlex.join(args))
    assert still, f"every example holds now: delete this KNOWN_OWNED_ELSEWHERE entry ({why})"
    assert len(still) == len(examples), f"some examples hold now ({why}): keep only {still}"
    pytest.skip(f"owned elsewhere, not fixed yet: {why}")


# -- named cases: the failures the sweep found, fixed -----------------------------------------------
def _holds(command: str, args: list[str], code: int | None = None, must_say: str | None = None):
    result = invoke([command, *args])
    found = problems(command, [command, *args], result)
    assert not found, "; ".join(found) + "\n" + describe([command, *args], result)
    if code is not None:
        assert result.exit_code == code, describe([command, *args], result)
    if must_say is not None:
        assert must_say in result.stdout + result.stderr, describe([command, *args], result)
    return result


def test_profile_resnet50_at_32_batch_1_works_and_counts_as_batch_2(world):
    """Batch norm on a 1x1 map in training mode (ResNet-50's res5 at 32x32, one image): torch's
    functional batch_norm refuses it before any op runs; profiling counts ops and needs no
    statistic, so it works and the per-image counts equal those at batch 2."""
    import json

    one = json.loads(_holds("profile", ["resnet50", "--size", "32", "--batch", "1", "--format", "json",
                                        "--ops", "all"], 0).stdout)
    two = json.loads(_holds("profile", ["resnet50", "--size", "32", "--batch", "2", "--format", "json",
                                        "--ops", "all"], 0).stdout)
    assert one["stages"][-2]["output_shape"] == [2048, 1, 1]
    for a, b in zip(one["stages"], two["stages"]):
        assert a["forward"] == b["forward"] and a["backward"] == b["backward"], a["name"]
        assert a["activation_bytes"]["output"] * 2 == b["activation_bytes"]["output"]
    assert one["training_memory"]["methods"]["loco"]["total"] > 0


def test_profile_resnet50_at_32_batch_1_in_a_real_process():
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "profile", "resnet50", "--size", "32", "--batch",
                           "1", "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and "res5" in proc.stdout


@pytest.mark.parametrize("args", [
    ["balance", "resnet50", "--size", "32", "--batch", "1"],
    ["compare", "resnet50", "resnet18", "--size", "32", "--batch", "1"],
    ["compare", "resnet50", "resnet18", "--size", "32", "--batch", "1", "--plot", "cmp_plot"],
    ["split", "resnet50", "--stages", "4", "--by", "memory", "--batch", "1"],
    ["split", "sweep_tiny.yaml", "--stages", "2", "--by", "mix", "--batch", "1"],
    ["profile", "sweep_tiny.yaml", "--batch", "1"],
    ["profile", "sweep_models_mod:tiny", "--batch", "1", "--size", "8"],
    ["profile", "sweep_models_mod:Net", "--batch", "1", "--size", "2"],
    ["split", "sweep_models_mod:tiny", "--stages", "2", "--batch", "1", "--size", "4", "--by", "memory"],
    ["balance", "sweep_models_mod:tiny", "--batch", "1", "--size", "1"],
])
def test_one_value_per_channel_everywhere(world, args):
    """Every command that profiles takes batch 1 on a 1x1 map (batch and group norm)."""
    _holds(args[0], args[1:], 0)


@pytest.mark.parametrize("args", [
    ["profile", "resnet18", "--batch", HUGE],  # beyond 64 bits: torch.empty's TypeError
    ["profile", "resnet18", "--batch", "30000000000000"],  # the input fits, conv1's output does not
    ["profile", "resnet18", "--size", "1048576", "--batch", "1000000"],  # the input's storage size overflows
    ["profile", "sweep_models_mod:tiny", "--batch", HUGE],
    ["profile", "sweep_models_mod:tiny", "--channels", HUGE],
    ["profile", "sweep_models_mod:tiny", "--batch", "30000000000000"],
    ["balance", "resnet18", "--batch", "4611686018427387904"],
    ["compare", "resnet18", "sweep_models_mod:Net", "--batch", HUGE],
    ["report", "resnet18", "--against", "resnet20_cifar", "-o", "report_huge", "--batch", HUGE],
    ["validate", "cfg_huge_batch.yaml"],
])
def test_tensors_too_large_to_count_are_one_line(world, args):
    """A batch (or size, or channels) whose tensors exceed a 64-bit element count, even on meta."""
    (world.root / "cfg_huge_batch.yaml").write_text(_config("tiny_digits", batch="100000000000000000000"))
    result = _holds(args[0], args[1:], 2)
    assert "makes tensors with more elements than a 64-bit size holds" in result.stderr


def test_validate_training_config_with_tiny_images(world):
    """The peak-memory estimate runs the training step on meta tensors: batch 1 at 4x4 works there."""
    _holds("validate", [str(world.root / "cfg_tiny.yaml")], 0, must_say="estimated peak training memory")
    _holds("validate", [str(world.root / "cfg_small_images_pool.yaml")], 0,
           must_say="estimated peak training memory")
    _holds("validate", [str(world.root / "cfg_small_images.yaml")])  # decoders that do not fit: one line


def test_lenient_norms_is_scoped_and_exact():
    """The size checks are skipped only inside lenient_norms, in its thread; outside, torch's stand."""
    import threading

    import torch
    import torch.nn.functional as F

    from archspec.profiling.norm_checks import DirectNorms, lenient_norms

    x = torch.ones(1, 3, 1, 1)
    bn = torch.nn.BatchNorm2d(3).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x)
    seen = []
    with lenient_norms():
        assert torch.equal(bn(x), torch.zeros_like(x))  # (x - mean) / std: 0 for a single value
        worker = threading.Thread(target=lambda: seen.append(_refuses(bn, x)))
        worker.start()
        worker.join()
        with DirectNorms():  # the fallback for a torch without the private checks
            assert torch.equal(bn(x), torch.zeros_like(x))
            assert F.group_norm(torch.ones(1, 2, 1, 1), 2).shape == (1, 2, 1, 1)
            assert F.instance_norm(torch.ones(1, 2, 1, 1)).shape == (1, 2, 1, 1)
    assert seen == [True]  # another thread keeps torch's check
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x)
    assert F._verify_batch_size.__module__ == "torch.nn.functional"


def _refuses(module, x) -> bool:
    try:
        module(x)
    except ValueError:
        return True
    return False


# -- the sweep's first findings in other commands, fixed (each was a traceback) ------------------------
@pytest.mark.parametrize("args, says", [
    (["design", "--stages", "0", "--time-limit", "0.5"], "--stages must be at least 2"),  # default_band(0)
    (["design", "--stages", "4", "--seed", "-1", "--time-limit", "0.5"], "--seed"),  # numpy's negative seed
    (["split", "resnet18", "-k", "4", "--by", "memory", "--batch", HUGE], "64-bit"),
    (["split", "tiny_digits", "-k", "2", "--by", "time", "--time-batch", HUGE, "--runs", "1"], "64-bit"),
    (["split", "tiny_digits", "-k", "2", "--by", "time", "--threads", HUGE, "--runs", "1"], "--threads"),
])
def test_fixed_findings_are_one_line(world, args, says):
    result = _holds(args[0], args[1:], 2)
    assert says in result.stderr, describe(args, result)


def test_split_by_time_on_a_1x1_map_at_batch_1(world):
    """Timing runs batch norm in training mode on real tensors: one value per channel is timed too."""
    _holds("split", ["sweep_tiny.yaml", "-k", "2", "--by", "time", "--time-batch", "1", "--runs", "1"], 0)


@pytest.mark.skipif(not UNWRITABLE, reason="needs an unwritable folder (/proc)")
@pytest.mark.parametrize("args", [["profile", "resnet18", "-o", "/proc/sweep_out.txt"],
                                  ["table", "resnet18", "-o", "/proc/sweep_out.txt"],
                                  ["balance", "resnet18", "--plot", "/proc/sweep_plot"],
                                  ["report", "resnet18", "-o", "/proc/sweep_report"]])
def test_outputs_in_an_unwritable_folder(world, args):
    result = _holds(args[0], args[1:], 2)
    assert "cannot " in result.stderr and "/proc/" in result.stderr, describe(args, result)


def test_eval_batch_size_beyond_sys_maxsize(world, trained_run):
    result = _holds("eval", [trained_run, "--batch-size", HUGE, "--probe-epochs", "1"], 2)
    assert "--batch-size" in result.stderr
