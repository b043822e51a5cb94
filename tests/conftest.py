from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


@pytest.fixture
def presnet_text() -> str:
    return (SPECS / "presnet50.yaml").read_text()


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
