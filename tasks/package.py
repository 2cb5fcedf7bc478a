"""package_source: the function's source as a deterministic .tgz in Cloud Storage.

The archive is what `gcloud builds submit` uploads (REFERENCE §1): a gzip'd tar of the
source directory with directories added explicitly, owner root, and gcloud's ignore rules.
On top of that it is deterministic (sorted entries, zero mtimes, normalized modes, fixed
gzip header), so the same tree gives the same bytes and sha256 whatever the file times, and
the object is named by that sha256 and written only if absent (`if_generation_match=0`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pathspec
from google.api_core.exceptions import Conflict, Forbidden, NotFound, PreconditionFailed
from google.cloud.storage import Blob, Client
from prefect import task
from prefect.cache_policies import NO_CACHE

from cf2run.cloud import Cloud
from cf2run.errors import Cf2RunError, SourceError
from cf2run.results import SourceArchive
from cf2run.spec import FunctionSpec, Target
from tasks.policy import RETRIES

GCLOUDIGNORE = ".gcloudignore"
INCLUDE_DIRECTIVE = "#!include:"
#: gcloud's ignore rules when there is no .gcloudignore but the tree is a git checkout.
DEFAULT_GIT_IGNORES = (".gcloudignore", ".git", ".gitignore")
DIR_MODE, EXEC_MODE, FILE_MODE, LINK_MODE = 0o755, 0o755, 0o644, 0o777


@dataclass(frozen=True)
class Tarball:
    """A deterministic .tgz of a source tree."""

    data: bytes
    sha256: str
    files: int

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class _Entry:
    name: str  # path in the archive, '/'-separated, relative to the source root
    path: Path
    kind: Literal["dir", "file", "link"]
    linkname: str = ""


# -- ignore rules (gcloud's, with pathspec's gitignore semantics) ------------------------------


def ignore_rules(root: Path) -> pathspec.GitIgnoreSpec | None:
    """The rules gcloud applies to `root`, or None when nothing is ignored (REFERENCE §1).

    `.gcloudignore` if present (its `#!include:FILE` lines expanded); else, if `.git` or
    `.gitignore` exists, `.gcloudignore`, `.git`, `.gitignore` plus .gitignore's lines; else none.
    """
    if (root / GCLOUDIGNORE).is_file():
        return pathspec.GitIgnoreSpec.from_lines(_ignore_lines(root, GCLOUDIGNORE, seen=()))
    if (root / ".git").exists() or (root / ".gitignore").exists():
        lines = list(DEFAULT_GIT_IGNORES)
        if (root / ".gitignore").is_file():
            lines += _ignore_lines(root, ".gitignore", seen=())
        return pathspec.GitIgnoreSpec.from_lines(lines)
    return None


def _ignore_lines(root: Path, name: str, seen: tuple[str, ...]) -> list[str]:
    """Lines of the ignore file `name` (relative to root), `#!include:` directives expanded."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SourceError(f"{seen[-1] if seen else name}: #!include:{name} points outside the source "
                          "directory", hint="include only files inside the function's source directory")
    if name in seen:
        raise SourceError(f"{seen[-1]}: #!include:{name} includes itself (through {' -> '.join(seen)})",
                          hint="remove the circular #!include: line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        where = f"{seen[-1]}: #!include:{name}" if seen else name
        raise SourceError(f"{where}: cannot read {path}: {getattr(error, 'strerror', None) or error}",
                          hint="create the file or remove the #!include: line") from None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith(INCLUDE_DIRECTIVE):
            lines += _ignore_lines(root, line.removeprefix(INCLUDE_DIRECTIVE).strip(), (*seen, name))
        else:
            lines.append(line)
    return lines


# -- the tarball --------------------------------------------------------------------------------


def make_tarball(source_dir: Path) -> Tarball:
    """A deterministic gzip'd tar of `source_dir` with gcloud's ignore rules.

    Raises SourceError for a missing or empty directory, a symlink leaving the tree, or a
    special file (socket, FIFO, device).
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise SourceError(f"source directory {root} does not exist or is not a directory",
                          hint="point `source` at the function's source directory")
    entries = list(_walk(root.resolve(), ignore_rules(root)))
    files = sum(1 for entry in entries if entry.kind != "dir")
    if files == 0:
        raise SourceError(f"source directory {root} has no files to upload",
                          hint="add the function's source, or check .gcloudignore / .gitignore rules")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            _add(tar, entry)
    data = buffer.getvalue()
    return Tarball(data=data, sha256=hashlib.sha256(data).hexdigest(), files=files)


def _walk(root: Path, rules: pathspec.GitIgnoreSpec | None, directory: Path | None = None,
          prefix: str = "") -> Iterator[_Entry]:
    """Entries under `directory` in sorted order, parents before children; ignored dirs pruned."""
    directory = directory or root
    try:
        children = sorted(directory.iterdir(), key=lambda path: path.name)
    except OSError as error:
        raise SourceError(f"cannot list {directory}: {error.strerror}",
                          hint="fix its permissions or list it in .gcloudignore") from None
    for child in children:
        name = prefix + child.name
        if child.is_symlink():
            if not (rules and rules.match_file(name)):
                yield _Entry(name, child, "link", _internal_link(root, child, name))
        elif child.is_dir():
            if not (rules and rules.match_file(name + "/")):
                yield _Entry(name, child, "dir")
                yield from _walk(root, rules, child, name + "/")
        elif child.is_file():
            if not (rules and rules.match_file(name)):
                yield _Entry(name, child, "file")
        elif not (rules and rules.match_file(name)):
            raise SourceError(f"{child} is not a regular file, directory or symlink",
                              hint="remove it or list it in .gcloudignore")


def _internal_link(root: Path, link: Path, name: str) -> str:
    """The link's target as stored: kept if it stays in the tree (absolute made relative)."""
    target = os.readlink(link)
    resolved = Path(os.path.realpath(link))
    if not resolved.is_relative_to(root):
        raise SourceError(f"symlink {name} -> {target} points outside the source directory",
                          hint="replace the link with a copy of what it points to, or list it in "
                               ".gcloudignore")
    if os.path.isabs(target):
        return os.path.relpath(resolved, os.path.realpath(link.parent))
    return target


def _add(tar: tarfile.TarFile, entry: _Entry) -> None:
    info = tarfile.TarInfo(entry.name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
        tar.addfile(info)
    elif entry.kind == "link":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, LINK_MODE, entry.linkname
        tar.addfile(info)
    else:
        data = _read(entry.path)
        executable = entry.path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        info.mode = EXEC_MODE if executable else FILE_MODE
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror}",
                          hint="fix its permissions or list it in .gcloudignore") from None


# -- upload ------------------------------------------------------------------------------------


def archive_object_name(spec: FunctionSpec, sha256: str) -> str:
    """``source/NAME-SHA16.tgz``: named by content, so the same source is uploaded once."""
    return f"source/{spec.name}-{sha256[:16]}.tgz"


def upload_archive(client: Client, bucket_name: str, object_name: str, tarball: Tarball,
                   owner_project: str | None = None) -> SourceArchive:
    """Reuse the object when it is there already (a rerun: one call), else write it
    (`if_generation_match=0`: two calls), creating the bucket when the write finds it missing.

    `owner_project`: for gcloud's default bucket name, the project that must own the bucket
    when it exists (`check_owner`, before anything is read or written).
    """
    if owner_project is not None:
        check_owner(client, bucket_name, owner_project)
    blob = client.bucket(bucket_name).blob(object_name)
    try:
        _reload_same(blob, bucket_name, tarball)
    except NotFound:  # the object, or its bucket, is missing
        try:
            _write_new(client, blob, tarball)
        except PreconditionFailed:  # written meanwhile by a concurrent run
            _reload_same(blob, bucket_name, tarball)
    if blob.generation is None:
        raise Cf2RunError(f"gs://{bucket_name}/{object_name} has no generation after upload")
    return SourceArchive(uri=f"gs://{bucket_name}/{object_name}", bucket=bucket_name,
                         object_name=object_name, generation=int(blob.generation),
                         sha256=tarball.sha256, files=tarball.files, bytes=tarball.size)


def _write_new(client: Client, blob: Blob, tarball: Tarball) -> None:
    """Write the archive as a new object (PreconditionFailed when one exists); the bucket is
    created when the write finds it missing (once per project)."""
    try:
        _upload(blob, tarball)
    except NotFound:
        _ensure_bucket(client, blob.bucket.name)
        _upload(blob, tarball)


def _upload(blob: Blob, tarball: Tarball) -> None:
    try:
        blob.upload_from_string(tarball.data, content_type="application/gzip", if_generation_match=0)
    except Forbidden as error:
        raise _no_access(blob.bucket.name, error) from None


def _reload_same(blob: Blob, bucket_name: str, tarball: Tarball) -> None:
    """Read the object's metadata; it must hold this archive (NotFound when it is missing)."""
    try:
        blob.reload()
    except Forbidden as error:
        raise _no_access(bucket_name, error) from None
    md5 = base64.b64encode(hashlib.md5(tarball.data).digest()).decode()  # GCS's checksum format
    if blob.md5_hash and blob.md5_hash != md5:
        raise Cf2RunError(f"gs://{bucket_name}/{blob.name} exists with other content",
                          hint="delete that object; cf2run names archives by their sha256")


def _ensure_bucket(client: Client, name: str) -> None:
    """Create the staging bucket when missing (as gcloud creates PROJECT_cloudbuild)."""
    try:
        if client.lookup_bucket(name) is None:
            client.create_bucket(name)
    except Conflict:  # created meanwhile by a concurrent run
        pass
    except Forbidden as error:
        raise _no_access(name, error) from None


#: Default buckets this process found owned by their project: checked once, not per archive.
_OWNED: set[tuple[str, str]] = set()
_OWNED_LOCK = threading.Lock()


def check_owner(client: Client, bucket_name: str, project: str) -> None:
    """Refuse gcloud's default bucket name when another project owns a bucket of that name.

    Bucket names are global, so anyone may create ``PROJECT_cloudbuild`` first and receive your
    source. gcloud checks it as cf2run does here (googlecloudsdk/api_lib/storage/storage_api.py,
    ``CreateBucketIfNotExists(check_ownership=True)``, called by command_lib/builds/
    submit_util.py for the default bucket): a bucket that exists must be among the project's
    own (``buckets.list(project=P, prefix=NAME)``); a missing one is created in the project
    later by the write. gcloud then says "A bucket with name NAME already exists and is owned
    by another project. Specify a bucket using --gcs-source-staging-dir."
    """
    with _OWNED_LOCK:
        if (project, bucket_name) in _OWNED:
            return
    try:
        if client.lookup_bucket(bucket_name) is None:
            return  # created in `project` by the write (_ensure_bucket)
        owned = any(bucket.name == bucket_name
                    for bucket in client.list_buckets(project=project, prefix=bucket_name))
    except Forbidden as error:
        raise _no_access(bucket_name, error) from None
    if not owned:
        raise Cf2RunError(
            f"staging bucket gs://{bucket_name} (gcloud's default name for project {project}) "
            f"already exists and is owned by another project; cf2run does not upload your source "
            "into it",
            hint="set target.staging_bucket to a bucket your project owns (gcloud asks for "
                 "--gcs-source-staging-dir in this case)")
    with _OWNED_LOCK:
        _OWNED.add((project, bucket_name))


def _no_access(bucket_name: str, error: Forbidden) -> Cf2RunError:
    return Cf2RunError(f"no access to staging bucket gs://{bucket_name}: {error.message}",
                       hint="set target.staging_bucket to a bucket your project owns, or grant "
                            "storage access to the credentials in use")


# Retried on transient errors only (tasks/policy.py). Not cached across runs: the key would be
# the tree's content, which only packaging computes; the object name makes re-runs cheap anyway.
@task(name="package", task_run_name="package[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def package_source(spec: FunctionSpec, target: Target) -> SourceArchive:
    """Tar the function's source deterministically and upload it to the staging bucket."""
    tarball = make_tarball(spec.source)
    client = Cloud.for_target(target).storage
    owner = None if target.staging_bucket else target.project  # gcloud checks its default only
    return upload_archive(client, target.bucket, archive_object_name(spec, tarball.sha256), tarball,
                          owner_project=owner)
