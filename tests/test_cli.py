"""The command line: show, validate, list, errors as one line with exit code 2."""
import subprocess
import sys

import pytest

from .conftest import ROOT, run_cli, spec_text


def run(*args):
    return run_cli(*args, catch_exceptions=False)


def test_show_presnet50_prints_stage_table_and_exact_total():
    result = run("show", "presnet50")
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ["conv1", "res2", "res3", "res4", "res5", "res6", "res7", "head"]:
        assert name in out
    assert "25,029,592" in out
    assert "bottleneck [1x1, 1024, 128 grps; 3x3, 1024, 128 grps; 1x1, 4096] x1" in out
    assert "36x36" in out and "bilinear" in out


def test_show_resnet50_total():
    assert "25,557,032" in run("show", "resnet50").output


def test_show_yaml_round_trips(tmp_path):
    result = run("show", "presnet50", "--yaml")
    path = tmp_path / "p.yaml"
    path.write_text(result.output)
    assert run("show", str(path), "--yaml").output == result.output


def test_validate_ok_and_path(tmp_path):
    assert run("validate", "resnet18").output.startswith("ok: resnet18")
    path = tmp_path / "mine.yaml"
    path.write_text(spec_text("resnet34"))
    assert "21,797,672 parameters" in run("validate", str(path)).output


def test_list():
    out = run("list").output
    assert "presnet50" in out and "resnet152" in out


@pytest.mark.parametrize("args, message", [
    (["show", "presnet5"], "error: unknown spec 'presnet5' (hint: did you mean 'presnet50'?)"),
    (["validate", "nope/missing.yaml"], "error: no such spec file: nope/missing.yaml"),
])
def test_bad_spec_names(args, message):
    result = run_cli(*args)
    assert result.exit_code == 2
    assert result.output.strip().startswith(message)
    assert len(result.output.strip().splitlines()) == 1


def test_invalid_spec_file_exit_2_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(spec_text("resnet18").replace("    output_size: 28x28", "    output_size: 27x27"))
    result = run_cli("validate", str(path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:")
    assert "Traceback" not in result.output


def test_cli_process_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - name: a\n    output_size: 4\n    blocks:\n      - conv [3x3, 0]\n")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {path}:5: stage 'a' block 1: conv '3x3, 0': channels must be a "
                                   "positive integer, got 0 (hint: channels is the second item, e.g. '3x3, 256')")
    assert proc.stdout == ""


def test_help_does_not_import_torch():
    code = ("import sys; from archspec.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nassert 'rich' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "show" in proc.stdout and "validate" in proc.stdout


def test_python_cli_py_from_checkout():
    proc = subprocess.run([sys.executable, "cli.py", "show", "resnet18"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "11,689,512" in proc.stdout
