"""A Prefect server that outlives the command that starts it: `cf2run server start` / `stop`.

`prefect server start --background` is not used: Prefect 3.9 starts uvicorn with its stdout and
stderr on pipes nobody reads and exits (prefect/cli/_server_utils.py `_run_in_background`), so
the server dies on its first write to the closed pipe, within seconds (the same flaw was flagged
on Prefect's `worker start --background`, PrefectHQ/prefect#22588). Here the foreground form,
`prefect server start`, runs in a session of its own with stdin /dev/null and its output
appended to PREFECT_HOME/server.log; its PID goes to PREFECT_HOME/server.pid, Prefect's own file
name, so `prefect server stop` stops it too and cf2run commands find it (prefect_server.py).
Host and port are Prefect's settings, PREFECT_SERVER_API_HOST and PREFECT_SERVER_API_PORT
(127.0.0.1:4200 by default), where the commands look for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cf2run.errors import Cf2RunError
from cf2run.localcloud.children import Process
from cf2run.prefect_server import (
    PID_FILE,
    answers,
    background_pid,
    local_api_url,
    prefect_home,
    server_host,
    server_port,
)

LOG_FILE = "server.log"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.5


@dataclass(frozen=True)
class Running:
    """A server running in the background: its process, where it answers, where it logs."""

    pid: int
    api_url: str
    log: Path

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int) -> bool:
    """Whether `pid` runs and is not a zombie (a process that ended and waits to be reaped): read
    from /proc as the local cloud's own children are (`Process.of`), else asked of the kernel."""
    if Path("/proc").is_dir():
        return Process.of(pid) is not None
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _stop_group(pid: int, timeout_s: float) -> None:
    """SIGTERM to the group `pid` leads, SIGKILL after `timeout_s`. A pid that no longer leads its
    own group (it ended and was reused) is left alone."""
    for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            if os.getpgid(pid) != pid:
                return
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            return


def refuse_if_running() -> None:
    """Cf2RunError when a server answers where `start` would start one, or server.pid names a
    process that still runs."""
    url = local_api_url()
    if answers(url):
        raise Cf2RunError(f"a Prefect server already answers at {url}",
                          hint="cf2run commands use it as it is; `cf2run server stop` stops one "
                               "that `cf2run server start` started")
    pid_file = prefect_home() / PID_FILE
    if (pid := background_pid()) is not None:
        raise Cf2RunError(f"{pid_file} names process {pid}, which is still running but does not "
                          f"answer at {url}", hint="`cf2run server stop` stops it")


def start(timeout_s: float = START_TIMEOUT_S) -> Running:
    """Start the server detached and wait until it answers; Cf2RunError when one already runs or
    it does not come up (then nothing is left running)."""
    refuse_if_running()
    home, url = prefect_home(), local_api_url()
    pid_file = home / PID_FILE
    home.mkdir(parents=True, exist_ok=True)
    pid_file.unlink(missing_ok=True)  # a stale one: its process is gone
    log = home / LOG_FILE
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", server_host(),
             "--port", server_port()],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            reason = (f"exited with status {process.returncode}" if process.poll() is not None
                      else f"did not answer within {timeout_s:.0f} s")
            _stop_group(process.pid, 5.0)
            pid_file.unlink(missing_ok=True)
            raise Cf2RunError(f"the Prefect server at {url} {reason}; the end of {log}:\n"
                              f"{_log_tail(log)}",
                              hint="another process on the port? set PREFECT_SERVER_API_PORT to a "
                                   "free one")
        time.sleep(POLL_S)
    return Running(process.pid, url, log)


def running() -> Running | None:
    """The server `start` left, when its process is alive (whether it answers: `answers`)."""
    pid = background_pid()
    return Running(pid, local_api_url(), prefect_home() / LOG_FILE) if pid is not None else None


def stop(timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the server `start` left (its whole process group) and remove server.pid; the PID it
    had, None when none ran."""
    pid_file = prefect_home() / PID_FILE
    pid = background_pid()
    if pid is not None:
        _stop_group(pid, timeout_s)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return pid
