"""Revisions as local processes, under the Cloud Run container contract.

`Runtime.start` pulls a revision's image from the registry and runs the image's ``web`` process
(buildpacks label ``io.buildpacks.build.metadata``) with the host's Python or Node. Each layer
is unpacked once per layer digest (``RUNTIME_DIR/layers/sha256-<hex>/``), so a rebuilt image
whose dependency layer did not change unpacks only its app layer; each image's root is
assembled once per manifest digest (``RUNTIME_DIR/images/sha256-<hex>/{config.json,rootfs/}``)
from its unpacked layers, in order, as hard links, a directory that one lower layer alone has
(the dependencies) as a symlink to it (`linktree.overlay`). Then:

- ``python3 ...`` runs as ``<base interpreter of this Python> -S ...`` (no site-packages of the
  host: the image's dependency layer on ``PYTHONPATH`` is all the function sees, as on GCP);
  ``python3 -m MODULE ...`` (every Python function) is forked from a zygote that imported
  MODULE's dependencies once per dependency set (`zygote`; a start then costs a fork, not an
  interpreter importing flask and gunicorn), unless the ``fork_server`` setting is off;
  ``node ...`` as the host's ``node``, made to listen on 127.0.0.1 only;
- every ``/workspace...`` and ``/layers...`` path in the command, its args and the image env is
  rewritten to the unpacked root, and the process starts in ``root + WorkingDir``;
- env = image env + template env + ``PORT``, ``K_SERVICE``, ``K_REVISION``, ``K_CONFIGURATION``
  (which the template cannot override), and ``HOST=127.0.0.1``;
- stdout and stderr go, line by line prefixed with ``[REVISION]``, to
  ``RUNTIME_DIR/logs/<service>.log`` (what ``cf2run localcloud logs SERVICE`` prints; the local
  cloud's RUNTIME_DIR is ``STATE/runtime``);
- the revision is ready when its port accepts a TCP connection (Cloud Run's default startup
  probe) within the deadline; otherwise it is killed and `RevisionFailed` says why, with the
  last log lines.

Each process leads its own process group, which `stop` / `stop_all` terminate and then kill;
`stop_all` stops the zygotes last.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from cf2run.errors import Cf2RunError
from cf2run.gcp.oci import ImageRef, RegistryClient
from cf2run.localcloud import children
from cf2run.localcloud.cloudrun.zygote import ForkServers
from cf2run.localcloud.linktree import overlay

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
PROBE_INTERVAL_S = 0.05
BUILD_METADATA_LABEL = "io.buildpacks.build.metadata"
#: The host environment a revision inherits (the rest comes from the image and the template).
HOST_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
_IMAGE_PATH_RE = re.compile(r"(^|[:=])/(workspace|layers)(?=[/:]|$)")
#: Preloaded into Node processes: a port-only listen() binds 127.0.0.1, not every interface.
_NODE_LOOPBACK_JS = """\
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if ((typeof first === 'number' || (typeof first === 'string' && /^\\d+$/.test(first)))
      && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  } else if (first && typeof first === 'object' && first.port !== undefined && !first.host && !first.path) {
    args[0] = Object.assign({}, first, {host: '127.0.0.1'});
  }
  return listen.apply(this, args);
};
"""


@dataclass(frozen=True)
class RevisionSpec:
    """What the runtime needs of a revision. `configuration` defaults to the service name."""

    service: str
    revision: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    configuration: str = ""


class RevisionFailed(Cf2RunError):
    """A revision could not be started or did not become ready; `reason` ends with its last log lines."""

    def __init__(self, revision: str, reason: str) -> None:
        self.revision = revision
        self.reason = reason
        super().__init__(reason)


class Process(Protocol):
    """What the runtime uses of a revision's process: a `subprocess.Popen`, or a
    `zygote.ForkedProcess` when a zygote forked it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class _Instance:
    spec: RevisionSpec
    process: Process
    port: int
    pump: threading.Thread
    tail: collections.deque[str]
    ready: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Runtime:
    """Starts, tracks and stops revision processes. Thread-safe.

    `state_dir` is the runtime's own directory (the local cloud gives it ``STATE/runtime``):
    unpacked layers go to ``state_dir/layers``, image roots (hard links and symlinks to them) to
    ``state_dir/images``, service logs to ``state_dir/logs``. `fork_server` (read at each
    start): Python revisions are forked from a zygote per dependency set (`zygote`).
    """

    def __init__(self, state_dir: Path, registry: RegistryClient,
                 ready_deadline_s: float | Callable[[], float] = 60.0, *, grace_s: float = 5.0,
                 fork_server: bool | Callable[[], bool] = True) -> None:
        self.root = Path(state_dir)
        self.registry = registry
        self._deadline = ready_deadline_s if callable(ready_deadline_s) else lambda: ready_deadline_s
        self._fork_server = fork_server if callable(fork_server) else lambda: fork_server
        self.grace_s = grace_s
        self._instances: dict[str, _Instance] = {}
        self._image_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()
        self._closed = False
        for kind in ("images", "layers"):
            (self.root / kind).mkdir(parents=True, exist_ok=True)
            for leftover in (self.root / kind).glob(".unpack-*"):  # from a run that was killed
                shutil.rmtree(leftover, ignore_errors=True)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self._node_preload = self.root / "node-loopback.js"
        self._node_preload.write_text(_NODE_LOOPBACK_JS)
        self.zygotes = ForkServers(self.root, _host_python(), HOST_ENV)

    # -- revisions -----------------------------------------------------------------------------

    def start(self, spec: RevisionSpec, *, never_ready: bool = False) -> str:
        """Run `spec`'s image and wait until it listens; returns ``127.0.0.1:PORT``.

        `never_ready` (the local cloud's fault knob): start the process but never count it
        ready, so the start fails when the deadline passes. Raises `RevisionFailed`.
        """
        _check_name(spec.service, "service")
        address = self.address(spec.revision)
        if address is not None:
            return address
        root, config = self._unpacked(spec)
        command, env, cwd = _launch(root, config, spec, self._node_preload)
        instance = self._spawn(spec, command, env, cwd)
        problem = self._wait_ready(instance, never_ready)
        if problem is not None:
            self._forget(instance)
            self._stop(instance)  # also collects the last lines it printed
            lines = "\n".join(instance.tail) or "(the revision wrote no log lines)"
            raise RevisionFailed(spec.revision, f"Revision '{spec.revision}' is not ready and cannot serve "
                                                f"traffic. {problem}\nLast log lines:\n{lines}")
        with self._lock:
            instance.ready = True
        log.info("revision %s of %s is ready at %s", spec.revision, spec.service, instance.address)
        return instance.address

    def address(self, revision: str) -> str | None:
        """``127.0.0.1:PORT`` of a ready, running revision; None otherwise (not started, starting,
        stopped, or crashed since)."""
        instance = self._instances.get(revision)
        if instance is None or not instance.ready:
            return None
        if instance.process.poll() is not None:  # crashed: as on Cloud Run, the container goes
            _signal_group(instance.process, signal.SIGKILL)  # with its main process
            self._forget(instance)
            return None
        return instance.address

    def running(self) -> list[str]:
        """The revisions that are ready and running."""
        return [name for name in list(self._instances) if self.address(name)]

    def stop(self, revision: str) -> None:
        """Terminate a revision (SIGTERM, SIGKILL after the grace period). No-op if not running."""
        self.take([revision])()

    def take(self, revisions: Iterable[str]) -> Callable[[], list[str]]:
        """Take these revisions' processes out of service at once (`address` says None from now
        on); returns the function that stops them, in parallel, and names those it stopped. The
        taking is quick, the stopping may wait the grace period: callers hold their locks over
        the first only."""
        with self._lock:
            taken = [instance for name in revisions if (instance := self._instances.pop(name, None))]

        def stop() -> list[str]:
            self._stop(*taken)
            return [instance.spec.revision for instance in taken]

        return stop

    def log_event(self, service: str, revision: str, line: str) -> None:
        """Add a line of the platform's own to the service log, as the revision's lines are."""
        _check_name(service, "service")
        with self._log_path(service).open("ab", buffering=0) as out:
            out.write(f"[{revision}] {line}\n".encode())

    def stop_all(self) -> None:
        """Stop every revision (in parallel), then the zygotes, and refuse new ones: no process
        outlives this call."""
        with self._lock:
            self._closed = True
            instances = list(self._instances.values())
            self._instances.clear()
        self._stop(*instances)
        self.zygotes.close()

    def logs(self, service: str) -> str:
        """Everything the revisions of `service` wrote, each line prefixed with ``[REVISION]``."""
        _check_name(service, "service")
        try:
            return self._log_path(service).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- images --------------------------------------------------------------------------------

    def _unpacked(self, spec: RevisionSpec) -> tuple[Path, dict[str, Any]]:
        """(root filesystem, image config) of spec's image, pulled and unpacked once per digest."""
        fail = _failing(spec.revision)
        try:
            ref = ImageRef.parse(spec.image)
            digest = ref.digest
            if digest is None:
                descriptor = self.registry.head_manifest(ref)
                if descriptor is None:
                    raise fail(f"Image '{spec.image}' not found.")
                digest = descriptor.digest
            final = self.root / "images" / digest.replace(":", "-")
            with self._lock:
                image_lock = self._image_locks[digest]
            with image_lock:
                if not final.exists():
                    self._pull_and_unpack(ref.with_digest(digest), final, fail)
            config: dict[str, Any] = json.loads((final / "config.json").read_text())
        except RevisionFailed:
            raise
        except Cf2RunError as exc:  # a bad reference, or the registry failed (maybe transiently)
            error = fail(f"Image '{spec.image}' cannot be pulled: {exc}")
            error.transient = exc.transient
            raise error from exc
        return final / "rootfs", config

    def _pull_and_unpack(self, ref: ImageRef, final: Path, fail: Callable[[str], RevisionFailed]) -> None:
        """Assemble the image's root at `final` from its layers (each unpacked once, by digest),
        laid in order (`linktree.overlay`): a later layer's file replaces an earlier one's."""
        _, manifest = self.registry.image_manifest(ref)
        config = json.loads(self.registry.get_blob(ref, manifest["config"]["digest"]))
        layers = [self._layer(ref, number, layer["digest"], fail)
                  for number, layer in enumerate(manifest.get("layers") or [], 1)]
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=final.parent))
        try:
            rootfs = staging / "rootfs"
            rootfs.mkdir()
            working_dir = str((config.get("config") or {}).get("WorkingDir") or "")
            try:
                overlay(layers, rootfs, private=working_dir)
            except OSError as exc:
                raise fail(f"Image '{ref}': its layers cannot be laid over each other: {exc}") from exc
            (staging / "config.json").write_text(json.dumps(config))
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _layer(self, ref: ImageRef, number: int, digest: str, fail: Callable[[str], RevisionFailed]) -> Path:
        """The directory layer `digest` is unpacked in (``layers/sha256-<hex>``): pulled and
        unpacked the first time any image needs it (in a temp dir, then renamed into place)."""
        final = self.root / "layers" / digest.replace(":", "-")
        with self._lock:
            layer_lock = self._image_locks[digest]
        with layer_lock:
            if final.is_dir():
                return final
            data = self.registry.get_blob(ref, digest)
            staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=final.parent))
            try:
                staging.chmod(0o755)  # its mode becomes the image root's when linked
                try:
                    _extract(data, staging)
                except (tarfile.TarError, OSError, ValueError) as exc:
                    raise fail(f"Image '{ref}': layer {number} cannot be unpacked: {exc}") from exc
                os.rename(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return final

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, spec: RevisionSpec, command: list[str], env: dict[str, str], cwd: Path) -> _Instance:
        fail = _failing(spec.revision)
        # Outside the lock: the first start of a dependency set waits for its zygote's imports.
        zygote = self.zygotes.server_for(command, env, cwd) if self._fork_server() else None
        with self._lock:
            if self._closed:
                raise fail("the local cloud is shutting down")
            if spec.revision in self._instances:
                raise fail(f"revision {spec.revision} is already running or starting")
            port = self._free_port()
            env["PORT"] = str(port)
            forked = zygote.spawn(command, env, cwd) if zygote is not None else None
            process, output = forked or _popen(command, env, cwd, fail)
            children.record(self.root, process.pid)  # a restart after a kill -9 ends it
            tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
            pump = threading.Thread(target=_pump, name=f"logs-{spec.revision}", daemon=True,
                                    args=(process, output, self._log_path(spec.service),
                                          spec.revision, tail,
                                          functools.partial(children.forget, self.root, process.pid)))
            pump.start()
            instance = _Instance(spec, process, port, pump, tail)
            self._instances[spec.revision] = instance
        return instance

    def _free_port(self) -> int:
        """A free port that no revision of ours holds (the OS may hand one out twice)."""
        taken = {instance.port for instance in self._instances.values()}
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port: int = probe.getsockname()[1]
            if port not in taken:
                return port

    def _wait_ready(self, instance: _Instance, never_ready: bool) -> str | None:
        """None once the revision listens; else what went wrong."""
        deadline_s = self._deadline()
        deadline = time.monotonic() + deadline_s
        port = instance.port
        while True:
            code = instance.process.poll()
            if code is not None:
                what = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
                return (f"The user-provided container {what} before listening on the port defined by "
                        f"the PORT={port} environment variable.")
            if not never_ready and _listening(port):
                return None
            if time.monotonic() >= deadline:
                knob = " (the local cloud's never-ready fault is set for it)" if never_ready else ""
                return (f"The user-provided container did not listen on the port defined by the "
                        f"PORT={port} environment variable within {deadline_s:g}s{knob}.")
            time.sleep(PROBE_INTERVAL_S)

    def _stop(self, *instances: _Instance) -> None:
        """SIGTERM each process group, SIGKILL what is left after the grace period, reap."""
        for instance in instances:
            _signal_group(instance.process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for instance in instances:
            with contextlib.suppress(subprocess.TimeoutExpired):
                instance.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for instance in instances:
            _signal_group(instance.process, signal.SIGKILL)  # stragglers in the group, too
            instance.process.wait()
            instance.pump.join(timeout=2)

    def _forget(self, instance: _Instance) -> None:
        with self._lock:
            if self._instances.get(instance.spec.revision) is instance:
                del self._instances[instance.spec.revision]

    def _log_path(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"


def _failing(revision: str) -> Callable[[str], RevisionFailed]:
    return lambda reason: RevisionFailed(revision, reason)


def _check_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"invalid {what} name {name!r}")


def _extract(layer: bytes, rootfs: Path) -> None:
    """Unpack one tar(.gz) layer; members with absolute paths or '..' are refused."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
                raise ValueError(f"the layer holds the unsafe path {member.name!r}")
        tar.extractall(rootfs, members=members, filter="data")


def _launch(root: Path, config: dict[str, Any], spec: RevisionSpec,
            node_preload: Path) -> tuple[list[str], dict[str, str], Path]:
    """(command, env, cwd) of the image's web process under the Cloud Run contract."""
    fail = _failing(spec.revision)
    image_config = config.get("config") or {}
    command = [_rewrite(part, root) for part in _web_process(image_config)]
    if not command:
        raise fail(f"Image '{spec.image}' has no web process: neither a buildpacks '{BUILD_METADATA_LABEL}' "
                   f"label with a 'web' process nor an Entrypoint/Cmd")
    program = command[0]
    if program in ("python3", "python"):
        command[:1] = [_host_python(), "-S"]
    elif program == "node":
        node = shutil.which("node")
        if node is None:
            raise fail("the image's web process runs node, which is not installed on this machine")
        command[:1] = [node, "--require", str(node_preload)]
    elif not program.startswith(str(root)):
        raise fail(f"the image's web process runs {program!r}: the local runtime runs python3, node "
                   "or a program inside the image")

    env = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
    for item in image_config.get("Env") or []:
        name, _, value = str(item).partition("=")
        env[name] = _rewrite(value, root)
    env.update(spec.env)
    env.update(K_SERVICE=spec.service, K_REVISION=spec.revision,
               K_CONFIGURATION=spec.configuration or spec.service, HOST="127.0.0.1")

    cwd = (root / str(image_config.get("WorkingDir") or "/").lstrip("/")).resolve()
    if not cwd.is_relative_to(root.resolve()) or not cwd.is_dir():
        raise fail(f"Image '{spec.image}': WorkingDir {image_config.get('WorkingDir')!r} is not a "
                   "directory of the image")
    return command, env, cwd


def _popen(command: list[str], env: dict[str, str], cwd: Path,
           fail: Callable[[str], RevisionFailed]) -> tuple[Process, IO[bytes]]:
    """Start `command` as a new process leading its own group, dying with the local cloud
    (children.py): it, and its stdout + stderr."""
    try:
        process = children.spawn(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise fail(f"the web process {command[0]} cannot be started: {exc}") from exc
    assert process.stdout is not None
    return process, process.stdout


def _web_process(image_config: dict[str, Any]) -> list[str]:
    """The ``web`` process's command + args from the buildpacks label, else Entrypoint + Cmd."""
    label = (image_config.get("Labels") or {}).get(BUILD_METADATA_LABEL)
    if label:
        for process in json.loads(label).get("processes") or []:
            if process.get("type") == "web":
                command = process.get("command") or []
                command = [command] if isinstance(command, str) else list(command)
                return [str(part) for part in command + list(process.get("args") or [])]
    return [str(p) for p in (image_config.get("Entrypoint") or []) + (image_config.get("Cmd") or [])]


def _rewrite(value: str, root: Path) -> str:
    """Image paths (``/workspace...``, ``/layers...``, also after ``:`` and ``=``) -> paths under root."""
    return _IMAGE_PATH_RE.sub(lambda m: f"{m.group(1)}{root}/{m.group(2)}", value)


def _host_python() -> str:
    """The interpreter this Python was made from (a venv's base), so no venv packages leak in."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _signal_group(process: Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _pump(process: Process, stream: IO[bytes], log_path: Path, revision: str,
          tail: collections.deque[str], exited: Callable[[], None]) -> None:
    """Copy the process's output to the service log, line by line, prefixed with the revision;
    `exited()` once it was reaped."""
    with log_path.open("ab", buffering=0) as out:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\r\n")
            tail.append(line)
            out.write(f"[{revision}] {line}\n".encode())
        stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(timeout=5)
            event = (f"Container called exit({code})." if code >= 0
                     else f"Container terminated on signal {-code}.")
            out.write(f"[{revision}] {event}\n".encode())
            exited()
