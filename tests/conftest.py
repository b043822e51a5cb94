"""What several test modules share: the checkout's paths, the shipped specs, the CLI in-process,
the micro networks and training config of the training tests, one torch thread, LaTeX."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def spec_text(name: str) -> str:
    """The text of the shipped spec ``specs/NAME.yaml``."""
    return (SPECS / f"{name}.yaml").read_text(encoding="utf-8")


@pytest.fixture
def presnet_text() -> str:
    return spec_text("presnet50")


def run_cli(*args, **kwargs):
    """``archspec ARGS`` in-process (click's CliRunner); every argument is passed as ``str(arg)``,
    ``kwargs`` go to ``CliRunner.invoke`` (catch_exceptions, env, terminal_width, prog_name, ...)."""
    from click.testing import CliRunner

    from archspec.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread is faster and steadier and leaves the
    other core alone. Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- the micro networks and training config of the training tests ----------------------------------
# Four local stages (conv1+res2, res3, res4, res5), small enough to run in milliseconds.
MICRO = """
name: micro
input: {channels: 1, size: 8x8}
stages:
  - {name: conv1, output_size: 8x8, blocks: ['conv [3x3, 4]']}
  - {name: res2, output_size: 8x8, blocks: ['basic [3x3, 4; 3x3, 4] x1']}
  - {name: res3, output_size: 4x4, blocks: ['basic [3x3, 8, stride 2; 3x3, 8] x1']}
  - {name: res4, output_size: 4x4, blocks: ['basic [3x3, 8; 3x3, 8] x1']}
  - {name: res5, output_size: 2x2, blocks: ['basic [3x3, 16, stride 2; 3x3, 16] x1']}
head: {fc: null}
"""
# A smaller cousin of specs/tiny_digits.yaml: four local stages, milliseconds per step.
MICRO_DIGITS = """
name: micro_digits
input: {channels: 1, size: 8x8}
stages:
  - {name: conv1, output_size: 8x8, blocks: ['conv [3x3, 8]']}
  - {name: res2, output_size: 8x8, blocks: ['basic [3x3, 8; 3x3, 8] x1']}
  - {name: res3, output_size: 4x4, blocks: ['basic [3x3, 16, stride 2; 3x3, 16] x1']}
  - {name: res4, output_size: 2x2, blocks: ['basic [3x3, 32, stride 2; 3x3, 32] x1']}
  - {name: res5, output_size: 2x2, blocks: ['basic [3x3, 32; 3x3, 32] x1']}
head: {fc: null}
"""
LABELS = ["conv1+res2", "res3", "res4", "res5"]  # the local stages of MICRO and MICRO_DIGITS


def write_config(tmp_path, name="run.yaml", **overrides):
    """The micro training config (LoCo on MICRO_DIGITS, 8x8 digits, batch 16, one epoch, no
    tensorboard) as ``tmp_path/name``, the spec beside it as micro.yaml; ``overrides`` replace
    top-level keys, and a dict merges into a dict (``schedule={"warmup_steps": 1}``)."""
    import yaml

    (tmp_path / "micro.yaml").write_text(MICRO_DIGITS)
    data = {"spec": "micro.yaml", "method": "loco", "data": {"kind": "digits", "size": 8},
            "batch": 16, "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05, "lr_scaling": "none"},
            "schedule": {"warmup_steps": 2}, "decoders": {"hidden": 16, "out_dim": 16}, "temperature": 0.5,
            "augment": {"scale": [0.5, 1.0], "flip_p": 0.0, "blur_p": 0.0, "gray_p": 0.0},
            "threads": 1, "checkpoint_every": 100, "tensorboard": False}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pdflatex() -> str:
    """The pdflatex executable; skips the test outside CI when none is installed, fails in CI."""
    import os
    import shutil

    exe = shutil.which("pdflatex")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pdflatex is missing in CI: .ci/run should have installed texlive-latex-base and "
                        "texlive-latex-recommended")
        pytest.skip("no LaTeX engine (pdflatex) installed; apt-get install texlive-latex-base "
                    "texlive-latex-recommended (the structure tests still run)")
    return exe


def compile_latex(folder: Path, name: str, tex: str) -> tuple[int, str]:
    """Write ``folder/name.tex`` and run pdflatex on it (nonstop, halt on error, no shell escape):
    (return code, the log)."""
    import subprocess

    (folder / f"{name}.tex").write_text(tex, encoding="utf-8")
    proc = subprocess.run([pdflatex(), "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", f"{name}.tex"],
                          cwd=folder, capture_output=True, text=True, errors="replace", timeout=120,
                          stdin=subprocess.DEVNULL)
    log = folder / f"{name}.log"
    return proc.returncode, log.read_text(errors="replace") if log.exists() else proc.stdout
