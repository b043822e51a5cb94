"""A golden per-stage profile for every shipped spec (issue 14): counts by op class, parameters,
activation bytes of every measure, shares and the three methods' memory plans, at batch 2, float32,
exactly as `archspec profile SPEC --batch 2 --format json` writes them. A refactor that changes any
number fails here; a deliberate change regenerates them:

    ARCHSPEC_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py
"""
from __future__ import annotations

import json
import os

import pytest

import archspec
from archspec.spec import available, load_spec

from .conftest import ROOT

GOLDEN = ROOT / "tests" / "golden"
REGEN = os.environ.get("ARCHSPEC_REGEN_GOLDEN") == "1"


def _profile(name: str) -> dict:
    return archspec.profile(load_spec(name), batch=2).to_dict()


@pytest.mark.parametrize("name", available())
def test_golden_profile(name):
    path = GOLDEN / f"{name}.json"
    got = _profile(name)
    if REGEN:
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.is_file(), f"no golden profile for {name} (regenerate: ARCHSPEC_REGEN_GOLDEN=1)"
    expected = json.loads(path.read_text())
    for a, b in zip(got["stages"], expected["stages"]):  # the first differing stage, named
        assert a == b, f"{name} stage {b['name']} differs from tests/golden/{name}.json"
    assert got == expected


def test_every_golden_file_has_a_spec():
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(available())
