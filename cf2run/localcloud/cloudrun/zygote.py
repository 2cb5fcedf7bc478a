"""Fork servers ("zygotes"): cheap starts of Python revisions, the runtime's side.

A revision whose web process is ``<host python> -S -m MODULE ...`` (every Python function) is
forked from a zygote that has imported MODULE's dependencies once (`zygote_server`, a script
run with the same interpreter and ``-S``), instead of starting a new interpreter that imports
them again: with the Functions Framework that is flask, werkzeug and gunicorn, most of a start.
There is one zygote per `Key`: interpreter, MODULE, the resolved ``PYTHONPATH`` (images whose
dependency layer is the same share it) and the env the interpreter reads as it starts. It
starts on the first start of its key and serves every revision of it; a revision it cannot
serve as a new interpreter would run is started the usual way (`ForkServer.spawn` says None):
one whose working directory holds a module named like one the zygote imported, or whose env
differs from the zygote's in a variable those imports read (``FORWARDED_ALLOW_IPS`` for
gunicorn). So does every revision of a key whose zygote could not import MODULE.

A zygote forks, the runtime's side never does: the local cloud has threads.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cf2run.localcloud import children
from cf2run.localcloud.cloudrun import zygote_server
from cf2run.localcloud.cloudrun.zygote_server import pythonpath, receive, send

log = logging.getLogger(__name__)

SERVER_SCRIPT = Path(zygote_server.__file__)
#: Imported by a zygote as well as MODULE's package: what starting the server imports later.
PRELOAD: dict[str, tuple[str, ...]] = {
    "functions_framework": ("functions_framework._cli", "functions_framework._http.gunicorn", "flask",
                            "gunicorn.app.base", "gunicorn.arbiter", "gunicorn.glogging",
                            "gunicorn.workers.gthread", "concurrent.futures.thread", "encodings.idna"),
}
#: Env vars a zygote's imports read that do not matter for MODULE: gunicorn's config reads
#: PORT and WEB_CONCURRENCY for defaults the Functions Framework always overrides.
IGNORED_ENV: dict[str, frozenset[str]] = {
    "functions_framework": frozenset({"PORT", "WEB_CONCURRENCY"}),
}
#: Read by the interpreter as it starts (so part of the key): PYTHON* (PYTHONPATH aside) and the locale.
_STARTUP_ENV = re.compile(r"PYTHON(?!PATH$)\w*|LANG|LC_ALL|LC_CTYPE")
START_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Key:
    """What revisions sharing a zygote have in common."""

    python: str
    module: str
    path: tuple[str, ...]  # PYTHONPATH, each entry resolved (realpath)
    startup_env: tuple[tuple[str, str], ...]

    @staticmethod
    def of(command: Sequence[str], env: Mapping[str, str], cwd: Path, python: str) -> Key | None:
        """The key of ``python -S -m MODULE ...`` run in `cwd` with `env`; None for other commands."""
        if len(command) < 4 or command[0] != python or list(command[1:3]) != ["-S", "-m"]:
            return None
        path = tuple(os.path.realpath(os.path.join(cwd, entry)) for entry in pythonpath(env))
        startup = tuple(sorted((k, v) for k, v in env.items() if _STARTUP_ENV.fullmatch(k)))
        return Key(python, command[3], path, startup)


class ForkServerGone(Exception):
    """The zygote died or stopped answering."""


class ForkedProcess:
    """A revision a zygote forked: the part of `subprocess.Popen` the runtime uses."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._exited = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def exited(self, code: int) -> None:
        """Record its exit status (negative: killed by that signal), as the zygote reported it."""
        if not self._exited.is_set():
            self.returncode = code
            self._exited.set()


class ForkServer:
    """One zygote process, and the thread that reads what it says."""

    def __init__(self, key: Key, process: subprocess.Popen[bytes], sock: socket.socket,
                 ready: Mapping[str, Sequence[str]], env: Mapping[str, str]) -> None:
        self.key = key
        self.process = process
        self.modules = frozenset(ready["modules"])
        self.env = dict(env)
        self.env_read = frozenset(ready["env_read"]) - IGNORED_ENV.get(key.module, frozenset())
        self._sock = sock
        self._alive = True
        self._children: dict[int, ForkedProcess] = {}
        self._answers: queue.Queue[ForkedProcess | str | None] = queue.Queue()
        self._lock = threading.Lock()  # one request at a time
        self._reader = threading.Thread(target=self._read, name=f"zygote-{process.pid}", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, key: Key, host_env: Iterable[str], cwd: Path, stderr: Path) -> ForkServer:
        """Start a zygote for `key` and wait until it has imported; RuntimeError if it cannot."""
        env = {name: os.environ[name] for name in host_env if name in os.environ}
        env.update(key.startup_env)
        env["PYTHONPATH"] = os.pathsep.join(key.path)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [key.python, "-S", str(SERVER_SCRIPT), str(theirs.fileno()), key.module,
                *PRELOAD.get(key.module, ())]
        try:
            with theirs, stderr.open("ab") as errors:
                # It dies with the local cloud, recorded in the runtime's directory (children.py).
                process = children.spawn(argv, record_in=cwd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=errors,
                                         pass_fds=(theirs.fileno(),), start_new_session=True)
        except OSError as exc:
            ours.close()
            raise RuntimeError(f"{key.python} cannot be started: {exc}") from exc
        try:
            ours.settimeout(START_TIMEOUT_S)
            ready, _ = receive(ours)
            ours.settimeout(None)
        except OSError as exc:  # a timeout, too
            ready = {"error": f"no answer: {exc}"}
        if ready is None or "error" in ready:
            ours.close()
            _end(process)
            reason = "it exited" if ready is None else ready["error"]
            raise RuntimeError(f"no zygote for {key.module}: {reason}")
        return cls(key, process, ours, ready, env)

    @property
    def alive(self) -> bool:
        return self._alive

    def spawn(self, command: Sequence[str], env: Mapping[str, str],
              cwd: Path) -> tuple[ForkedProcess, IO[bytes]] | None:
        """Fork `command` (``python -S -m MODULE ...``) with `env` in `cwd`: the process and its
        stdout + stderr; None if this zygote cannot run it as a new interpreter would, or is gone."""
        if not self._serves(env, cwd):
            return None
        read, write = os.pipe()
        try:
            process = self._fork(command[3:], env, cwd, write)
        except ForkServerGone as exc:
            log.warning("the zygote for %s (pid %d) is gone: %s", self.key.module, self.process.pid, exc)
            os.close(read)
            return None
        finally:
            os.close(write)
        return process, open(read, "rb")  # the log pump closes it

    def close(self) -> None:
        """Stop the zygote (it kills children it still has) and reap it."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        _end(self.process)
        self._reader.join(timeout=5)
        self._sock.close()

    def _serves(self, env: Mapping[str, str], cwd: Path) -> bool:
        if any(env.get(name) != self.env.get(name) for name in self.env_read):
            return False
        try:
            entries = os.listdir(cwd)
        except OSError:
            return False
        return not any(entry.partition(".")[0] in self.modules for entry in entries)

    def _fork(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, output: int) -> ForkedProcess:
        with self._lock:
            if not self._alive:
                raise ForkServerGone("it exited")
            try:
                send(self._sock, {"argv": list(argv), "env": dict(env), "cwd": str(cwd)}, [output])
                answer = self._answers.get(timeout=ANSWER_TIMEOUT_S)
            except OSError as exc:
                raise ForkServerGone(str(exc)) from exc
            except queue.Empty:
                self.close()
                raise ForkServerGone(f"no answer within {ANSWER_TIMEOUT_S:g}s") from None
        if not isinstance(answer, ForkedProcess):
            raise ForkServerGone(answer or "it exited")
        return answer

    def _read(self) -> None:
        """Hand fork answers to the requester and exit statuses to the processes, until EOF.
        Then the zygote is gone: so are its children (as a container goes with its runtime)."""
        try:
            while (message := receive(self._sock)[0]) is not None:
                if "pid" in message:
                    child = self._children[message["pid"]] = ForkedProcess(message["pid"], [self.key.module])
                    self._answers.put(child)
                elif "exited" in message:
                    exited = self._children.pop(message["exited"], None)
                    if exited is not None:
                        exited.exited(message["code"])
                else:
                    self._answers.put(str(message.get("error")))
        except (OSError, ValueError):
            pass
        finally:
            self._alive = False
            for orphan in list(self._children.values()):
                with contextlib.suppress(OSError):
                    os.killpg(orphan.pid, signal.SIGKILL)
                orphan.exited(-signal.SIGKILL)
            self._children.clear()
            self._answers.put(None)


class ForkServers:
    """A runtime's zygotes, one per `Key`, started on the first start that needs one. Thread-safe."""

    def __init__(self, root: Path, python: str, host_env: Iterable[str]) -> None:
        self.root = root
        self.python = python
        self.host_env = tuple(host_env)
        self._servers: dict[Key, ForkServer | None] = {}  # None: its zygote failed; not tried again
        self._key_locks: dict[Key, threading.Lock] = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()
        self._closed = False

    def server_for(self, command: Sequence[str], env: Mapping[str, str], cwd: Path) -> ForkServer | None:
        """The running zygote for this command, started if need be; None: start it as a process."""
        key = Key.of(command, env, cwd, self.python)
        if key is None:
            return None
        with self._lock:
            key_lock = self._key_locks[key]
        with key_lock:
            with self._lock:
                if self._closed or (key in self._servers and self._servers[key] is None):
                    return None
                server = self._servers.get(key)
            if server is not None and server.alive:
                return server
            if server is not None:
                server.close()  # it died: reap it, start another
            try:
                server = ForkServer.start(key, self.host_env, self.root, self.root / "zygotes.log")
            except RuntimeError as exc:
                log.warning("%s; revisions of %s start as new processes", exc, key.module)
                server = None
            with self._lock:
                if self._closed and server is not None:
                    server.close()
                    return None
                self._servers[key] = server
            return server

    def pids(self) -> list[int]:
        """The zygotes' process ids."""
        with self._lock:
            return [s.process.pid for s in self._servers.values() if s is not None and s.alive]

    def close(self) -> None:
        """Stop every zygote; none starts after this."""
        with self._lock:
            self._closed = True
            servers = [server for server in self._servers.values() if server is not None]
            self._servers.clear()
        for server in servers:
            server.close()


def _end(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
