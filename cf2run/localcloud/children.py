"""The local cloud's own processes die with it, and a restart ends what a killed one left.

- `spawn(...)`: `subprocess.Popen` run on one long-lived thread, the child asking the kernel for
  SIGKILL when that thread ends (``PR_SET_PDEATHSIG``, prctl(2)). The "parent" there is the
  *thread* that forked the child ("the signal will be sent when that thread terminates ... rather
  than after all of the threads in the parent process terminate"), so no child is started from a
  gRPC or build thread, which may end while the child should run on. The setting survives
  execve(2) (except for set-user-ID binaries), so it holds for fake-gcs-server (a Go binary) and
  the revisions' runtimes. A `kill -9` of the local cloud thus takes them with it. Python
  revisions forked by a zygote already end with it (cloudrun/zygote_server.py ends its forks when the
  local cloud's socket closes); the zygote itself is spawned here.
- Each child is recorded in ``STATE/PART/children/PID.json`` (PART: the part of the local cloud
  that started it, e.g. ``storage``, ``runtime``) with its start time and its owner (the local
  cloud's process and start time); `end_leftovers` (at start) ends every recorded process
  still alive whose owner is dead: its whole process group, if it is still the process that was
  recorded (same start time: not a reused PID). A record goes when its process was reaped, or
  at the next start.
- `claim(state_dir)`: ``STATE/localcloud.pid`` names the live instance; a second one in the same
  state dir is refused (`LocalCloudBusy`), naming the PID to stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cf2run.errors import Cf2RunError

RECORDS = "children"
OWNER_FILE = "localcloud.pid"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: How long a leftover may take to end on SIGTERM before it is killed.
LEFTOVER_GRACE_S = 3.0

_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
#: The one thread every child is forked from: it lives as long as this process.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cf2run-spawner")


class LocalCloudBusy(Cf2RunError):
    """Another live local cloud serves from the same state directory."""


@dataclass(frozen=True)
class Process:
    """A process, told apart from a later one with the same PID by its start time."""

    pid: int
    start: int  # clock ticks since boot (/proc/PID/stat, field 22)

    @classmethod
    def of(cls, pid: int) -> Process | None:
        start = _start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start


def spawn(argv: list[str], record_in: Path | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(argv, **popen)`, the child dying with this process (see the module doc);
    recorded under `record_in` (a local cloud's state dir) so a restart can end it."""
    parent = os.getpid()

    def die_with_parent() -> None:  # in the child, between fork and exec
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request: nobody would kill us
            os._exit(1)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, preexec_fn=die_with_parent, **popen)

    process = _spawner.submit(start).result()
    if record_in is not None:
        record(record_in, process.pid)
    return process


def record(state_dir: Path, pid: int) -> None:
    """Record child `pid` of this process as the local cloud in `state_dir`'s."""
    child, owner = Process.of(pid), Process.of(os.getpid())
    if child is None or owner is None:
        return
    directory = state_dir / RECORDS
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / f"{pid}.json", {"child": asdict(child), "owner": asdict(owner)})


def forget(state_dir: Path, pid: int) -> None:
    """The child `pid` was reaped: drop its record."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / RECORDS / f"{pid}.json").unlink()


def end_leftovers(state_dir: Path) -> list[int]:
    """End the recorded children (``STATE/PART/children``) of local clouds in `state_dir` that are
    dead (killed): each one's process group, SIGTERM then SIGKILL. Returns the PIDs ended."""
    ended: list[Process] = []
    for path in sorted(state_dir.glob(f"*/{RECORDS}/*.json")):
        try:
            data = json.loads(path.read_text())
            child, owner = Process(**data["child"]), Process(**data["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if owner.alive():
            continue  # a live local cloud's (this process's, or one `claim` refused)
        if child.alive():
            _signal_group(child, signal.SIGTERM)
            ended.append(child)
        path.unlink(missing_ok=True)
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while any(child.alive() for child in ended) and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in ended:
        if child.alive():
            _signal_group(child, signal.SIGKILL)
    return [child.pid for child in ended]


def claim(state_dir: Path) -> None:
    """Make this process the local cloud of `state_dir`; `LocalCloudBusy` if another live
    process is (an in-process restart, as tests do, is allowed)."""
    path = state_dir / OWNER_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        owner = Process(**json.loads(path.read_text()))
        if owner.pid != os.getpid() and owner.alive():
            raise LocalCloudBusy(
                f"a local cloud (pid {owner.pid}) is already running in {state_dir}",
                hint=f"stop it first (Ctrl-C where it runs, or `kill {owner.pid}`), or give another "
                     "--state-dir")
    me = Process.of(os.getpid())
    if me is not None:
        _write(path, asdict(me))


def release(state_dir: Path) -> None:
    """This process no longer serves `state_dir`."""
    path = state_dir / OWNER_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == os.getpid():
            path.unlink()


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is dead, only not reaped yet
        return None
    return int(fields[19])  # field 22 of the line, counting from pid; here after "(comm)"


def _signal_group(process: Process, sig: signal.Signals) -> None:
    """Signal `process`'s group if it leads one (revisions do), else the process alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        else:
            os.kill(process.pid, sig)


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
