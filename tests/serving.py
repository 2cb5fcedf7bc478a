"""When a `cf2run localcloud serve` process of a test is up: its endpoints.json is written whole
(not marked starting or stopped) and its services answer, as `Endpoints.running` says. Not the
file's existence or a change of it: a restart marks the file starting before any service
listens, and a killed instance left its file unmarked."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cf2run.errors import Cf2RunError
from cf2run.localcloud.endpoints import Endpoints


def serving(state_dir: Path) -> bool:
    try:
        Endpoints.running(state_dir)
    except Cf2RunError:  # none yet, still starting, stopped, killed
        return False
    return True


def wait_serving(process: subprocess.Popen[bytes], state_dir: Path, timeout_s: float = 120) -> Endpoints:
    """The endpoints of `process`'s local cloud once it serves (AssertionError, with what it wrote
    to stderr if it was captured, when it exits first or takes longer than `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not serving(state_dir):
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise AssertionError(f"serve exited ({process.returncode}) before it served: {stderr}")
        assert time.monotonic() < deadline, f"the local cloud did not start in {timeout_s:.0f} s"
        time.sleep(0.2)
    return Endpoints.read(state_dir)
