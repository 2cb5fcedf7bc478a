"""Hard-linked copies of directory trees: how the local cloud reuses unpacked layers.

`link_tree(src, dst)` fills `dst` with the contents of `src`: new directories, every file a
hard link to `src`'s (no data copied). A file already in `dst` is replaced, so linking image
layers in order gives what unpacking them in order gives (a later layer overwrites an earlier
one's files). GNU ``cp -al`` does it fastest; where it is missing or fails (another ``cp``,
another filesystem) a Python walk links, or copies what cannot be linked.

Linked files share their data with `src`: whoever writes into one in place writes into all.
Replacing a file (write a new one, rename it over) leaves the others alone.

`overlay(layers, root)` lays unpacked image layers over each other the same way, but does not
copy what it need not: a directory that one lower layer alone has (``layers/`` of a Python
dependency layer, ``workspace/node_modules`` of a Node one) becomes a relative symlink to that
layer's directory, so an image root over a big dependency layer costs a few links, not one per
file. The top layer (the app: where the process works and writes) and the directories several
layers share are linked as `link_tree` links them; so is the `private` directory (the image's
working directory) and every directory above it. A new file written under a shared directory
lands in the unpacked layer (every image over it sees it); the layers the local builder makes
carry their bytecode, so revisions do not write there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePosixPath


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


def overlay(layers: Sequence[Path], root: Path, private: str = "") -> None:
    """Make `root` hold `layers` (unpacked trees, lowest first) as unpacking them in order would.

    Directories that only one layer below the top has, and that are neither `private` (a path
    relative to the root) nor above it, are shared as symlinks; the rest is `link_tree`'s.
    """
    root.mkdir(parents=True, exist_ok=True)
    if not layers:
        return
    *lower, top = layers
    keep = {PurePosixPath(private.strip("/")), *PurePosixPath(private.strip("/")).parents}
    _overlay_lower(lower, top, PurePosixPath("."), root, keep)
    link_tree(top, root)


def _overlay_lower(lower: Sequence[Path], top: Path, rel: PurePosixPath, dst: Path,
                   keep: set[PurePosixPath]) -> None:
    """Lay the entries the lower layers have at `rel` into `dst` (the root's directory for `rel`)."""
    held: dict[str, list[tuple[Path, os.DirEntry[str]]]] = {}
    for layer in lower:
        directory = layer / rel
        if directory.is_dir() and not directory.is_symlink():
            for entry in os.scandir(directory):
                held.setdefault(entry.name, []).append((layer, entry))
    for name in sorted(held):
        path, target = rel / name, dst / name
        layers = [layer for layer, _ in held[name]]
        entries = [entry for _, entry in held[name]]
        if all(entry.is_dir(follow_symlinks=False) for entry in entries):
            if len(entries) == 1 and path not in keep and not os.path.lexists(top / path):
                os.symlink(os.path.relpath(entries[0].path, dst), target, target_is_directory=True)
            else:
                target.mkdir(exist_ok=True)
                shutil.copystat(entries[-1].path, target, follow_symlinks=False)
                _overlay_lower(layers, top, path, target, keep)
            continue
        for entry in entries:  # files, symlinks, or a mix: in order, a later one replaces
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            if entry.is_dir(follow_symlinks=False):
                link_tree(Path(entry.path), target)
                continue
            try:
                os.link(entry.path, target, follow_symlinks=False)
            except OSError:  # another filesystem, too many links: a copy does
                shutil.copy2(entry.path, target, follow_symlinks=False)
