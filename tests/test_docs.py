"""Every command output pasted in docs/ is what the command prints today.

A fenced block that starts with ``$ archspec ...`` is run through the CLI and its output compared
line by line (trailing spaces ignored). A block may abbreviate with a line ``...``: then the lines
before and after it must appear in order."""
import re
import shlex

import pytest

from .conftest import ROOT, run_cli

DOC_COLUMNS = 100  # pasted outputs are what a 100-column terminal shows
BLOCK = re.compile(r"```[a-z]*\n\$ (archspec [^\n]+)\n(.*?)```", re.S)


def pasted_outputs():
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for m in BLOCK.finditer(doc.read_text()):
            yield pytest.param(m.group(1), m.group(2), id=f"{doc.name}: {m.group(1)}")


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


@pytest.mark.parametrize("command, expected", list(pasted_outputs()))
def test_pasted_output_is_current(command, expected):
    args = shlex.split(command)[1:]
    args = [a for a in args if not a.startswith("#")]
    result = run_cli(*args, env={"COLUMNS": str(DOC_COLUMNS)})
    got = _lines(result.output)
    want = [line for line in _lines(expected) if not line.endswith("(exit code 1)")]
    if "..." not in want:
        assert got == want, f"docs show stale output for '{command}'"
        return
    pos = 0
    for line in (w for w in want if w != "..."):
        line = line.rstrip(" .") if line.endswith("...") else line
        while pos < len(got) and not got[pos].startswith(line):
            pos += 1
        assert pos < len(got), f"'{line}' not in the output of '{command}' (in order)"
        pos += 1


def test_docs_have_pasted_outputs():
    assert len(list(pasted_outputs())) >= 4
