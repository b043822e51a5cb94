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


# -- the markers (setup.cfg) --------------------------------------------------------------------------
BUILTIN_MARKS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}
# What starts more than one process: torch.distributed ranks spawned here or by torchrun.
STARTS_RANKS = ("train_distributed(", "torch.distributed.run", "torchrun ", "start_processes(")


def pytest_config():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg["tool:pytest"]


def registered_marks() -> set[str]:
    return {line.split(":")[0].strip() for line in pytest_config()["markers"].splitlines() if line.strip()}


def mark_name(node) -> str | None:
    """``NAME`` of ``pytest.mark.NAME`` or ``pytest.mark.NAME(...)``, else None."""
    import ast

    node = node.func if isinstance(node, ast.Call) else node
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark" \
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "pytest":
        return node.attr
    return None


def module_trees():
    import ast

    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        yield path, text, ast.parse(text)


def test_setup_cfg_registers_the_markers_and_keeps_every_test_in_the_default_run():
    cfg = pytest_config()
    assert "--strict-markers" in cfg["addopts"].split() and cfg["testpaths"].split() == ["tests"]
    assert {"slow", "distributed"} <= registered_marks()
    assert "-m" not in cfg["addopts"].split()  # the README's `python -m pytest -q` runs every test


def test_every_marker_a_test_uses_is_registered():
    import ast

    known = registered_marks() | BUILTIN_MARKS
    for path, _, tree in module_trees():
        used = {mark_name(node) for node in ast.walk(tree)} - {None}
        assert used <= known, f"{path.name} uses markers not registered in setup.cfg: {sorted(used - known)}"


def test_tests_that_start_ranks_are_marked_distributed():
    """A module that calls train_distributed / torchrun / start_processes says `distributed`, and
    so does each test that does (in its body or in a fixture of its module that it takes)."""
    import ast

    for path, text, tree in module_trees():
        if path.name == "test_project.py":
            continue
        if any(token in text for token in STARTS_RANKS):
            assert "pytest.mark.distributed" in text, f"{path.name} starts ranks but marks nothing distributed"
        module_marks = {mark_name(n) for node in tree.body if isinstance(node, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
                        for n in ast.walk(node.value)}
        functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        fixtures = {name for name, node in functions.items()
                    if any("fixture" in ast.unparse(d) for d in node.decorator_list)}

        def starts_ranks(node) -> bool:
            return any(token in ast.unparse(node) for token in STARTS_RANKS)

        for name, node in functions.items():
            if not name.startswith("test_"):
                continue
            body = ast.Module(body=node.body, type_ignores=[])
            taken = [functions[a.arg] for a in node.args.args if a.arg in fixtures]
            if starts_ranks(body) or any(starts_ranks(f) for f in taken):
                marks = module_marks | {mark_name(d) for d in node.decorator_list}
                assert "distributed" in marks, f"{path.name}::{name} starts ranks: mark it @pytest.mark.distributed"
