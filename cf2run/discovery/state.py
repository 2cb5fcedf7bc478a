"""What the last `cf2run discover` wrote into an output directory, so a rerun keeps the user's
edits and says what changed in the project since.

``DIR/.cf2run-discover.json`` holds the sha256 of each manifest discover wrote and, per function,
the versionId/updateTime it saw and the sha256 of the source tree it extracted. A manifest (or
a source folder of a function that changed since) whose bytes differ from the record was edited
by the user: discover refuses to overwrite it unless told to (--force).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cf2run.errors import Cf2RunError

STATE_FILE = ".cf2run-discover.json"
FORMAT = 1


@dataclass(frozen=True)
class Seen:
    """A function as discover saw it."""

    generation: str
    update_time: str
    version_id: int | None = None
    outcome: str = ""  # discovered | skipped | refused
    source: str | None = None  # folder, relative to the output directory
    source_sha256: str | None = None


@dataclass
class State:
    project: str
    manifests: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    functions: dict[str, Seen] = field(default_factory=dict)  # full name -> Seen


@dataclass(frozen=True)
class Changes:
    new: list[str]
    removed: list[str]
    updated: list[str]

    @property
    def any(self) -> bool:
        return bool(self.new or self.removed or self.updated)


def load(out: Path) -> State | None:
    path = out / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return State(project=data["project"], manifests=dict(data["manifests"]),
                     functions={name: Seen(**seen) for name, seen in data["functions"].items()})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Cf2RunError(f"{path}: cannot read discover's record of its last run: {error}",
                          hint="delete the file and rerun with --force (the manifest and sources "
                               "are then written anew)") from None


def save(out: Path, state: State) -> None:
    data = {"format": FORMAT, "project": state.project, "manifests": state.manifests,
            "functions": {name: asdict(seen) for name, seen in sorted(state.functions.items())}}
    (out / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes (a symlink: its target), in path order."""
    hashed = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            hashed.update(f"L {relative} {os.readlink(path)}\n".encode())
        elif path.is_file():
            hashed.update(f"F {relative} {path.stat().st_size}\n".encode())
            hashed.update(path.read_bytes())
    return hashed.hexdigest()


def edited_manifests(out: Path, previous: State | None, paths: list[Path]) -> list[Path]:
    """Those of `paths` (manifests discover is about to write) that exist and are not byte for
    byte what discover last wrote there."""
    recorded = previous.manifests if previous else {}
    return [path for path in paths if path.exists()
            and recorded.get(path.relative_to(out).as_posix()) != file_digest(path)]


def changes(previous: State, now: Mapping[str, Seen], in_scope: Callable[[str], bool]) -> Changes:
    """Functions new, removed and updated (another version or update time) since `previous`,
    among those this run looked at (`in_scope`: its regions and --filter)."""
    before = {name: seen for name, seen in previous.functions.items() if in_scope(name)}
    updated = [name for name, seen in now.items() if name in before
               and (before[name].version_id, before[name].update_time) != (seen.version_id, seen.update_time)]
    return Changes(new=sorted(now.keys() - before.keys()), removed=sorted(before.keys() - now.keys()),
                   updated=sorted(updated))
