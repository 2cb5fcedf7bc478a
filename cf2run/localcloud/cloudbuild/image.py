"""OCI image parts of the local builder: reproducible layers, the dependency cache, the config.

Layers are tar.gz files written reproducibly (entries sorted, mtime 0, uid/gid 0, no owner
names, gzip header without name or time), so the same input always gives the same digest.
Each layer records its ``diff_id`` (sha256 of the uncompressed tar) for the image config.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cf2run.localcloud.cloudbuild.builder_common import RuntimeVersion, WebProcess
from cf2run.localcloud.linktree import link_tree

#: What pack's lifecycle writes as every reproducible timestamp.
REPRODUCIBLE_TIME = "1980-01-01T00:00:01Z"
STACK_ID = "google.22"
RUN_IMAGE = "gcr.io/buildpacks/google-22/run:latest"


@dataclass(frozen=True)
class LayerFile:
    """A layer written to disk: the tar.gz file, its digest and its diff_id."""

    path: Path
    digest: str
    diff_id: str
    size: int


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through it on its way to `sink`."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.sha256.update(chunk)
        self.size += len(chunk)
        self._sink.write(chunk)
        return len(chunk)


def write_layer(trees: list[tuple[Path, str]], out: Path, excludes: frozenset[str] = frozenset(),
                compresslevel: int = 6) -> LayerFile:
    """Write directory trees as one reproducible tar.gz layer at `out`.

    Each tree is ``(directory, name in the layer)``: ``(source_dir, "workspace")`` puts the
    source under ``workspace/``. Parent directories get entries too. Top-level names of a tree
    found in `excludes` are left out (``node_modules`` of an app layer).
    """
    with out.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                           compresslevel=compresslevel) as gz:
            uncompressed = _HashingWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                seen: set[str] = set()
                for directory, prefix in trees:
                    for arcname in _parents(prefix):
                        if arcname not in seen:
                            seen.add(arcname)
                            tar.addfile(_dir_info(arcname))
                    for path, arcname in _walk(directory, prefix.strip("/"), excludes):
                        if arcname not in seen:
                            seen.add(arcname)
                            _add(tar, path, arcname)
    return LayerFile(path=out, digest="sha256:" + compressed.sha256.hexdigest(),
                     diff_id="sha256:" + uncompressed.sha256.hexdigest(), size=compressed.size)


def _parents(subdir: str) -> list[str]:
    parts = Path(subdir).parts
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _walk(directory: Path, arc: str, excludes: frozenset[str]) -> Iterator[tuple[Path, str]]:
    """Every path under `directory`, sorted by name, each directory before its contents."""
    if not directory.is_dir():
        return
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name in excludes:
            continue
        child = f"{arc}/{entry.name}"
        yield Path(entry.path), child
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), child, frozenset())


def _info(arcname: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _dir_info(arcname: str) -> tarfile.TarInfo:
    return _info(arcname, tarfile.DIRTYPE, 0o755)


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        tar.addfile(_dir_info(arcname))
    elif stat.S_ISLNK(st.st_mode):
        info = _info(arcname, tarfile.SYMTYPE, 0o777)
        info.linkname = os.readlink(path)
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info = _info(arcname, tarfile.REGTYPE, 0o755 if st.st_mode & 0o111 else 0o644)
        info.size = st.st_size
        with path.open("rb") as f:
            tar.addfile(info, f)
    # Sockets, fifos and devices have no place in an image layer: left out.


def extract_layer(layer: Path, root: Path) -> None:
    """Unpack a layer written by `write_layer` under `root` (the ``data`` filter guards paths)."""
    with tarfile.open(layer, mode="r:gz") as tar:
        tar.extractall(root, filter="data")


# -- the dependency cache ---------------------------------------------------------------------------

class DependencyCache:
    """Finished dependency layers, by key: ``CACHE/deps/<key>/{layer.tar.gz,layer.json}``, with
    ``pushed-to`` (the repository the layer was last pushed to, for a cross-repository mount), and,
    for builds that need the dependencies on disk (Node's target check), the layer's tree
    unpacked in ``CACHE/deps/<key>/unpacked/``, which such a build hard-links into its root
    (`linktree.link_tree`) instead of unpacking the layer again.

    An entry (and its unpacked tree) is built in a temp dir beside the final one and renamed
    into place, so a concurrent build with the same key either finds a complete entry or none;
    when two builds race, the first rename wins and the other's copy is dropped.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.root = cache_dir / "deps"

    @staticmethod
    def key(runtime: RuntimeVersion, material: bytes) -> str:
        hasher = hashlib.sha256()
        hasher.update(f"{runtime.language}\0{runtime.host}\0{runtime.requested or ''}\0".encode())
        hasher.update(material)
        return hasher.hexdigest()

    def get(self, key: str) -> LayerFile | None:
        meta = self.root / key / "layer.json"
        try:
            data = json.loads(meta.read_text())
        except (FileNotFoundError, ValueError):
            return None
        path = self.root / key / "layer.tar.gz"
        if not path.exists():
            return None
        return LayerFile(path=path, digest=data["digest"], diff_id=data["diff_id"], size=data["size"])

    def build(self, key: str, make: Callable[[Path], LayerFile],
              tree: tuple[Path, str] | None = None) -> LayerFile:
        """Make the entry for `key` with `make(path)` and publish it.

        `make` writes the layer to `path` (in a staging dir) and returns it. `tree`,
        ``(directory, its path in the layer)``, is the installed tree the layer was written
        from: kept (hard-linked) as the entry's unpacked tree. If a concurrent build published
        the same key first, its entry is kept and returned.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.root))
        try:
            layer = make(staging / "layer.tar.gz")
            if tree is not None:
                directory, name = tree
                link_tree(directory, staging / "unpacked" / name)
            record = {k: v for k, v in asdict(layer).items() if k != "path"}
            (staging / "layer.json").write_text(json.dumps(record))
            with contextlib.suppress(OSError):  # a concurrent build published it first: keep theirs
                os.rename(staging, self.root / key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        published = self.get(key)
        if published is None:
            raise OSError(f"dependency cache entry {self.root / key} is missing after publishing")
        return published

    def pushed_to(self, key: str) -> str | None:
        """``HOST/REPOSITORY`` that `key`'s layer was last pushed to, if recorded."""
        try:
            return (self.root / key / "pushed-to").read_text().strip() or None
        except FileNotFoundError:
            return None

    def record_push(self, key: str, where: str) -> None:
        """Remember that `key`'s layer is in ``HOST/REPOSITORY`` `where` (the next build over the
        same dependencies mounts it from there instead of uploading it again)."""
        entry = self.root / key
        if not entry.is_dir():
            return
        fd, tmp = tempfile.mkstemp(prefix=".pushed-to-", dir=entry)
        with os.fdopen(fd, "w") as out:
            out.write(where)
        os.replace(tmp, entry / "pushed-to")

    def unpacked(self, key: str, layer: LayerFile) -> Path:
        """The unpacked tree of `key`'s layer (image-root paths inside): the one its build kept,
        else unpacked now, once (an entry made without one)."""
        final = self.root / key / "unpacked"
        if final.is_dir():
            return final
        staging = Path(tempfile.mkdtemp(prefix=".unpacked-", dir=self.root / key))
        try:
            staging.chmod(0o755)
            extract_layer(layer.path, staging)
            with contextlib.suppress(OSError):  # a concurrent build unpacked it first: keep theirs
                os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final


# -- the image config -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageLayer:
    """A layer as the config describes it: its diff_id and which buildpack made it."""

    layer: LayerFile
    created_by: str


def image_config(*, process: WebProcess, env: dict[str, str], layers: list[ImageLayer],
                 runtime: RuntimeVersion, buildpacks: list[str], labels: dict[str, str]) -> bytes:
    """The OCI image config: env, entrypoint, buildpack labels, rootfs diff_ids, history."""
    build_metadata = {
        "processes": [{"type": "web", "command": process.command, "args": process.args,
                       "direct": True, "buildpackID": process.buildpack_id}],
        "buildpacks": [{"id": bp, "version": "local"} for bp in buildpacks],
        "launcher": {"version": "cf2run-local", "source": {"metadata": {}}},
    }
    lifecycle_metadata = {
        "app": [{"sha": layers[-1].layer.diff_id}],
        "buildpacks": [{"key": item.created_by, "layers": {}} for item in layers[:-1]],
        "runImage": {"reference": RUN_IMAGE},
        "stack": {"runImage": {"image": RUN_IMAGE}},
    }
    all_labels = {
        **runtime.labels(),
        "io.buildpacks.build.metadata": _compact(build_metadata),
        "io.buildpacks.lifecycle.metadata": _compact(lifecycle_metadata),
        "io.buildpacks.stack.id": STACK_ID,
        **labels,
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": REPRODUCIBLE_TIME,
        "config": {
            "Env": [f"{name}={value}" for name, value in sorted(env.items())],
            "WorkingDir": "/workspace",
            "Entrypoint": [*process.command, *process.args],
            "Labels": dict(sorted(all_labels.items())),
        },
        "rootfs": {"type": "layers", "diff_ids": [item.layer.diff_id for item in layers]},
        "history": [{"created": REPRODUCIBLE_TIME, "created_by": item.created_by} for item in layers],
    }
    return json.dumps(config, indent=None, separators=(",", ":"), sort_keys=False).encode()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
