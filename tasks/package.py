"""package_source: the function's source as a deterministic .tgz in Cloud Storage.

The archive is what `gcloud builds submit` uploads (REFERENCE §1): a gzip'd tar of the
source directory with directories added explicitly, owner root, and gcloud's ignore rules.
On top of that it is deterministic (sorted entries, zero mtimes, normalized modes), so the same
tree gives the same tar whatever the file times. The tar's sha256 is the source's identity
(image tags, the service's source label, `cf2run plan`): it does not depend on the compressor.
The .tgz is streamed, never held whole in memory: files are read in blocks, compressed with
ISA-L's deflate (python-isal: several times the speed of zlib at a similar size; chosen in
bench/package.py) into a temporary file (in memory below 8 MiB), and uploaded from there
(resumable above 8 MiB, in 8 MiB chunks). The object is named by the .tgz's own sha256 and
written only if absent (`if_generation_match=0`).

Sizes are checked as 1st gen checked them, before anything is read: at most 500 MB of source
and at most 100 MB compressed (cf2run/manifest/source_limits.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

import pathspec
from google.api_core.exceptions import Conflict, Forbidden, NotFound, PreconditionFailed
from google.cloud.storage import Blob, Client
from isal import isal_zlib
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cf2run.errors import Cf2RunError, SourceError
from cf2run.gcp.cloud import Cloud
from cf2run.manifest import source_secrets
from cf2run.manifest.source_limits import check_compressed, check_uncompressed
from cf2run.manifest.source_secrets import SecretFile
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import SourceArchive
from tasks.deploy import Log
from tasks.policy import RETRIES

log = logging.getLogger(__name__)
GCLOUDIGNORE = ".gcloudignore"
INCLUDE_DIRECTIVE = "#!include:"
#: gcloud's ignore rules when there is no .gcloudignore but the tree is a git checkout.
DEFAULT_GIT_IGNORES = (".gcloudignore", ".git", ".gitignore")
DIR_MODE, EXEC_MODE, FILE_MODE, LINK_MODE = 0o755, 0o755, 0o644, 0o777


#: Archives up to this size stay in memory; bigger ones go to a temporary file.
SPOOL_BYTES = 8 * 2**20
#: Resumable upload chunk (a multiple of 256 KiB, as the JSON API requires); the client's default
#: (100 MiB) would hold that much in memory per upload.
UPLOAD_CHUNK_BYTES = 8 * 2**20
#: ISA-L's deflate level (0-3); 2 compresses about as well as gzip -6 (bench/package.py).
ISAL_LEVEL = 2
#: zlib's window bits for a gzip wrapper (mtime 0 in its header: deterministic).
GZIP_WBITS = 31


@dataclass
class Tarball:
    """A deterministic .tgz of a source tree, in a temporary file (`open` it to read).

    `sha256` is the tar's (the source's identity); `archive_sha256` and `md5` (base64, as Cloud
    Storage reports it) are the .tgz's. Close it when done (or use it as a context manager).
    """

    sha256: str
    archive_sha256: str
    md5: str
    files: int
    size: int
    file: IO[bytes] = field(repr=False)
    secret_files: list[SecretFile] = field(default_factory=list)

    def open(self) -> IO[bytes]:
        """The .tgz, from its first byte."""
        self.file.seek(0)
        return self.file

    def read_all(self) -> bytes:
        """The whole .tgz in memory (for small archives and tests)."""
        return self.open().read()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Tarball:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _TarSink(io.RawIOBase):
    """Where tarfile writes: hashes the tar, and (with `out`) gzips it into `out`, hashing that."""

    def __init__(self, out: IO[bytes] | None) -> None:
        self.out = out
        self.position = 0
        self.tar_sha = hashlib.sha256()
        self.gz_sha = hashlib.sha256()
        self.gz_md5 = hashlib.md5()  # Cloud Storage's checksum, not for security
        self.gz_size = 0
        self._deflate = isal_zlib.compressobj(ISAL_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS) if out else None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks where it is
        return self.position

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.position += len(data)
        self.tar_sha.update(data)
        if self._deflate is not None:
            self._emit(self._deflate.compress(data))
        return len(data)

    def finish(self) -> None:
        if self._deflate is not None:
            self._emit(self._deflate.flush())

    def _emit(self, chunk: bytes) -> None:
        if chunk and self.out is not None:
            self.out.write(chunk)
            self.gz_sha.update(chunk)
            self.gz_md5.update(chunk)
            self.gz_size += len(chunk)


@dataclass(frozen=True)
class _Entry:
    name: str  # path in the archive, '/'-separated, relative to the source root
    path: Path
    kind: Literal["dir", "file", "link"]
    linkname: str = ""
    size: int = 0


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
    """A deterministic gzip'd tar of `source_dir` with gcloud's ignore rules, streamed into a
    temporary file.

    Raises SourceError for a missing or empty directory, a symlink leaving the tree, a special
    file (socket, FIFO, device), or a source over 1st gen's size limits.
    """
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - the Tarball owns it
    try:
        entries, sink = _write_tar(source_dir, out)
        check_compressed(Path(source_dir), sink.gz_size)
    except BaseException:
        out.close()
        raise
    files = [(entry.name, entry.path) for entry in entries if entry.kind == "file"]
    return Tarball(sha256=sink.tar_sha.hexdigest(), archive_sha256=sink.gz_sha.hexdigest(),
                   md5=base64.b64encode(sink.gz_md5.digest()).decode(),
                   files=sum(1 for entry in entries if entry.kind != "dir"), size=sink.gz_size,
                   file=out, secret_files=source_secrets.find(files))  # type: ignore[arg-type]


def source_sha256(source_dir: Path) -> str:
    """The source's identity, `make_tarball(source_dir).sha256`, without compressing or keeping
    anything (what `cf2run plan` needs to know whether the image exists)."""
    return _write_tar(source_dir, None)[1].tar_sha.hexdigest()


def _write_tar(source_dir: Path, out: IO[bytes] | None) -> tuple[list[_Entry], _TarSink]:
    root = Path(source_dir)
    if not root.is_dir():
        raise SourceError(f"source directory {root} does not exist or is not a directory",
                          hint="point `source` at the function's source directory")
    entries = list(_walk(root.resolve(), ignore_rules(root)))
    files = sum(1 for entry in entries if entry.kind != "dir")
    if files == 0:
        raise SourceError(f"source directory {root} has no files to upload",
                          hint="add the function's source, or check .gcloudignore / .gitignore rules")
    check_uncompressed(root, [(entry.name, entry.size) for entry in entries if entry.kind == "file"])
    sink = _TarSink(out)
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            _add(tar, entry)
    sink.finish()
    return entries, sink


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
                yield _Entry(name, child, "file", size=_stat(child).st_size)
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
        executable = _stat(entry.path).st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        info.mode = EXEC_MODE if executable else FILE_MODE
        info.size = entry.size
        try:
            with entry.path.open("rb") as data:
                tar.addfile(info, data)  # copied in blocks
        except OSError as error:
            raise SourceError(f"cannot read {entry.path}: {error.strerror or error}",
                              hint="fix its permissions or list it in .gcloudignore "
                                   "(a file that changes while it is packaged: package it again)"
                              ) from None


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror}",
                          hint="fix its permissions or list it in .gcloudignore") from None


# -- upload ------------------------------------------------------------------------------------


def archive_object_name(spec: FunctionSpec, tarball: Tarball) -> str:
    """``source/NAME-SHA16.tgz`` (the .tgz's sha256): named by content, so the same archive is
    uploaded once."""
    return f"source/{spec.name}-{tarball.archive_sha256[:16]}.tgz"


def upload_archive(client: Client, bucket_name: str, object_name: str, tarball: Tarball,
                   owner_project: str | None = None) -> SourceArchive:
    """Reuse the object when it is there already (a rerun: one call), else write it
    (`if_generation_match=0`: two calls), creating the bucket when the write finds it missing.

    `owner_project`: for gcloud's default bucket name, the project that must own the bucket
    when it exists (`check_owner`, before anything is read or written).
    """
    if owner_project is not None:
        check_owner(client, bucket_name, owner_project)
    blob = client.bucket(bucket_name).blob(object_name, chunk_size=UPLOAD_CHUNK_BYTES)
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
        blob.upload_from_file(tarball.open(), size=tarball.size, content_type="application/gzip",
                              if_generation_match=0)
    except Forbidden as error:
        raise _no_access(blob.bucket.name, error) from None


def _reload_same(blob: Blob, bucket_name: str, tarball: Tarball) -> None:
    """Read the object's metadata; it must hold this archive (NotFound when it is missing)."""
    try:
        blob.reload()
    except Forbidden as error:
        raise _no_access(bucket_name, error) from None
    if blob.md5_hash and blob.md5_hash != tarball.md5:
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


def package(spec: FunctionSpec, target: Target, storage: Client, logger: Log = log) -> SourceArchive:
    """Tar the function's source deterministically and upload it to the staging bucket; files
    that look like secrets are warned about (or, with `secret_files: refuse`, refused first)."""
    owner = None if target.staging_bucket else target.project  # gcloud checks its default only
    with make_tarball(spec.source) as tarball:
        warnings = [found.describe() for found in tarball.secret_files]
        if warnings and spec.secret_files == "refuse":
            raise SourceError(f"{spec.source}: {'; '.join(warnings)}",
                              hint="leave them out, or set secret_files: warn to upload them anyway")
        for warning in warnings:
            logger.warning("%s: %s", spec.name, warning)
        archive = upload_archive(storage, target.bucket, archive_object_name(spec, tarball), tarball,
                                 owner_project=owner)
    return archive.model_copy(update={"warnings": warnings})


# Retried on transient errors only (tasks/policy.py). Not cached across runs: the key would be
# the tree's content, which only packaging computes; the object name makes re-runs cheap anyway.
@task(name="package", task_run_name="package[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def package_source(spec: FunctionSpec, target: Target) -> SourceArchive:
    """See `package`."""
    return package(spec, target, Cloud.for_target(target).storage, get_run_logger())
