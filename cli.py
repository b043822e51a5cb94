"""Run archspec from a checkout without installing it: ``python cli.py show presnet50``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from archspec.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
