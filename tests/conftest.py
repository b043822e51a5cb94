from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


@pytest.fixture
def presnet_text() -> str:
    return (SPECS / "presnet50.yaml").read_text()
