"""The README's field tables say what the models say (regenerate: python scripts/readme_tables.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_field_tables_are_current() -> None:
    check = subprocess.run([sys.executable, "scripts/readme_tables.py", "--check"], cwd=ROOT)
    assert check.returncode == 0, "README.md tables are stale: run python scripts/readme_tables.py"
