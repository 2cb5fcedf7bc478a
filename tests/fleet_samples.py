"""Tiny fleets for the fleet tests: Python HTTP functions without requirements (the fastest builds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

#: The entry point a broken function names: its source does not define it, so its build fails.
MISSING_ENTRY_POINT = "no_such_function"


def answer(name: str) -> str:
    """What function `name` answers."""
    return f"hello from {name}"


def write_fleet(directory: Path, names: Sequence[str], broken: Sequence[str] = (),
                localcloud_dir: Path | None = None) -> Path:
    """A manifest in `directory` with one function per name (those in `broken` do not build)."""
    functions = []
    for name in [*names, *broken]:
        source = directory / name
        source.mkdir(parents=True, exist_ok=True)
        (source / "main.py").write_text(f"def hello(request):\n    return {answer(name)!r}\n")
        function = {"name": name, "source": name, "smoke": {"expect_body": answer(name)}}
        if name in broken:
            function["entry_point"] = MISSING_ENTRY_POINT
        functions.append(function)
    target: dict[str, str] = {"kind": "local"}
    if localcloud_dir is not None:
        target["localcloud_dir"] = str(localcloud_dir)
    manifest = directory / "fleet.yaml"
    manifest.write_text(yaml.safe_dump({
        "target": target,
        "defaults": {"runtime": "python311", "entry_point": "hello", "smoke": {"deadline_s": 60}},
        "functions": functions}, sort_keys=False))
    return manifest
