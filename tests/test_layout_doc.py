"""docs/layout.md ("Where things are") names every module of the package, and nothing that is gone."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layout_names_every_module_and_only_modules_that_exist():
    text = (ROOT / "docs" / "layout.md").read_text()
    named = set(re.findall(r"`(archspec/[\w/]+\.py)`", text))
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "archspec").rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "modules docs/layout.md does not name"
    assert sorted(named - modules) == [], "docs/layout.md names modules that do not exist"


def test_the_readme_points_to_it():
    assert "docs/layout.md" in (ROOT / "README.md").read_text()
