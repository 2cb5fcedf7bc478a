"""Hard-linked copies of directory trees: how the local cloud reuses unpacked layers.

`link_tree(src, dst)` fills `dst` with the contents of `src`: new directories, every file a
hard link to `src`'s (no data copied). A file already in `dst` is replaced, so linking image
layers in order gives what unpacking them in order gives (a later layer overwrites an earlier
one's files). GNU ``cp -al`` does it fastest; where it is missing or fails (another ``cp``,
another filesystem) a Python walk links, or copies what cannot be linked.

Linked files share their data with `src`: whoever writes into one in place writes into all.
Replacing a file (write a new one, rename it over) leaves the others alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def link_tree(src: Path, dst: Path) -> None:
    """Make `dst` (created if missing) hold `src`'s tree as hard links, replacing what is there."""
    dst.mkdir(parents=True, exist_ok=True)
    cp = shutil.which("cp")
    if cp is not None:
        done = subprocess.run([cp, "-a", "-l", "--remove-destination", f"{src}/.", f"{dst}/"],
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if done.returncode == 0:
            return
    _link_walk(src, dst)


def _link_walk(src: Path, dst: Path) -> None:
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            target.mkdir(exist_ok=True)
            _link_walk(Path(entry.path), target)
            shutil.copystat(entry.path, target, follow_symlinks=False)
            continue
        if target.is_symlink() or target.is_file():
            target.unlink()
        try:
            os.link(entry.path, target, follow_symlinks=False)
        except OSError:  # another filesystem, too many links: a copy does
            shutil.copy2(entry.path, target, follow_symlinks=False)
