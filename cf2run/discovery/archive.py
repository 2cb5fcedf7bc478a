"""A deployed function's source zip, checked before a byte of it lands on disk, then extracted.

Checked: the archive is a zip whose entries' CRCs match (`ZipFile.testzip`); no entry names a
path outside the folder (absolute, ``..``, a drive, a backslash path) nor is a symlink whose
target leaves it; and the sizes stay within Cloud Functions' own deployment limits: "100MB
(compressed) for sources. 500MB (uncompressed) for sources plus modules"
(https://cloud.google.com/functions/quotas-1st-gen, "Max deployment size"), so a deployed
function never legitimately exceeds them and an archive that does is refused, not unpacked.
The uncompressed size is counted as bytes are written (an entry's header can lie).

    extract_zip(Path("source.zip"), Path("out/functions/hello"))
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cf2run.errors import SourceError

#: Cloud Functions (1st gen) "Max deployment size": 100MB compressed, 500MB uncompressed.
MAX_ZIPPED_BYTES = 100 * 1024 * 1024
MAX_UNZIPPED_BYTES = 500 * 1024 * 1024
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Size limits of a source archive (Cloud Functions' by default; tests pass smaller ones)."""

    zipped: int = MAX_ZIPPED_BYTES
    unzipped: int = MAX_UNZIPPED_BYTES


def extract_zip(archive: Path, destination: Path, limits: Limits = Limits()) -> int:
    """Check `archive` and extract it into `destination` (created; must not exist); the bytes
    written. SourceError naming the archive and the offending entry when it is refused (then
    `destination` is removed again)."""
    size = archive.stat().st_size
    if size > limits.zipped:
        raise SourceError(f"{archive.name}: {size} bytes zipped, above Cloud Functions' "
                          f"{megabytes(limits.zipped)} limit for a function's source",
                          hint="no deployed function's source is that big; check what was downloaded")
    try:
        with zipfile.ZipFile(archive) as opened:
            _check(opened, archive.name, limits)
            destination.mkdir(parents=True)
            try:
                return _extract(opened, archive.name, destination, limits)
            except BaseException:
                shutil.rmtree(destination, ignore_errors=True)
                raise
    except zipfile.BadZipFile as error:
        raise SourceError(f"{archive.name}: not a valid zip archive ({error})",
                          hint="download the function's source again") from None


def megabytes(limit: int) -> str:
    """A limit as Google writes it ('100MB')."""
    return f"{limit / 1024 / 1024:g}MB"


def _check(opened: zipfile.ZipFile, shown: str, limits: Limits) -> None:
    """Every entry's path, link and CRC, and the declared total size, before extracting."""
    declared = 0
    for info in opened.infolist():
        _check_name(info.filename, shown)
        if _is_symlink(info):
            _check_link(info.filename, opened.read(info).decode("utf-8", "replace"), shown)
        declared += info.file_size
    if declared > limits.unzipped:
        raise SourceError(f"{shown}: {declared} bytes unzipped, above Cloud Functions' "
                          f"{megabytes(limits.unzipped)} limit for a function's source",
                          hint="no deployed function's source is that big; check what was downloaded")
    broken = opened.testzip()
    if broken is not None:
        raise SourceError(f"{shown}: entry {broken!r} is corrupt (its CRC does not match)",
                          hint="download the function's source again")


def _check_name(name: str, shown: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts[0].endswith(":") and len(parts[0]) == 2):
        raise SourceError(f"{shown}: entry {name!r} points outside the function's folder",
                          hint="refused: a deployed source never has such entries; inspect the archive")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_link(name: str, target: str, shown: str) -> None:
    """A symlink may only point at a path inside the folder."""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise SourceError(f"{shown}: entry {name!r} is a symlink to {target!r}, outside the "
                          "function's folder", hint="refused: inspect the archive")


def _extract(opened: zipfile.ZipFile, shown: str, destination: Path, limits: Limits) -> int:
    written = 0
    for info in opened.infolist():
        path = destination / info.filename
        if info.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if _is_symlink(info):
            os.symlink(opened.read(info).decode(), path)
            continue
        with opened.open(info) as source, path.open("wb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > limits.unzipped:
                    raise SourceError(f"{shown}: more than {megabytes(limits.unzipped)} unzipped (entry "
                                      f"{info.filename!r} is bigger than its header says)",
                                      hint="refused: inspect the archive")
                out.write(chunk)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            path.chmod(mode | 0o600)
    return written
