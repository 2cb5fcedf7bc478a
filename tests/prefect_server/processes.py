"""Long-running subprocesses for the real-server tests, each in its own session, always stopped.

Every process is started with `start_new_session=True`, so stopping one signals its whole
process group (the Prefect server's uvicorn, the local cloud's revision processes) and
nothing outlives the test session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A started subprocess writing to `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    extra_pids: list[int] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before {what}:\n"
                                   f"{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {what} after {timeout:.0f}s:\n{self.output()[-3000:]}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the process group, SIGKILL if it is still there after `timeout`."""
        for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            if self.popen.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(wait)
        # The group may hold children that outlive its leader (a revision, a uvicorn worker).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def start(name: str, args: list[str], env: dict[str, str], logs: Path, cwd: Path = ROOT) -> Service:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Service(name, popen, log)


def kill_pid_group(pid: int) -> None:
    """Stop a flow-run process (started in its own session by a worker) and its children.

    Only a process that still leads its own group is signalled: a pid that ended and was
    reused by an unrelated process is left alone.
    """
    try:
        if os.getpgid(pid) != pid:
            return
    except ProcessLookupError:
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
        time.sleep(0.5)
