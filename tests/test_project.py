"""The project's own promises: README's commands, CI running them."""
import re

from .conftest import ROOT


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_opens_with_the_two_commands():
    commands = readme_commands()
    assert "archspec " in commands[0] and "pip install torch==2.13.0" in commands[0]
    assert "pytest" in commands[1] and "'.[test]'" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()
