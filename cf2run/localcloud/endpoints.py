"""Where each local service listens: `DIR/endpoints.json`, readable by any process.

A local cloud marks its file ``"starting"`` (its process) first thing when it starts, and writes
it whole once every service listens; one that stops marks it ``"stopped": true``. Both marks keep
the ports (a restart reuses them). One that was killed leaves it unmarked, and `Endpoints.running`
finds that out by connecting to it (a refused loopback connection fails at once); the starting
mark is what keeps a command from taking a restarting cloud whose token service already answers
(it listens first) for a started one.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from cf2run.localcloud.children import Process

FILENAME = "endpoints.json"
STOPPED = "stopped"
#: The starting process (`children.Process`: PID and start time) until the file is written whole.
STARTING = "starting"
#: How long `Endpoints.running` waits for its connection (loopback: refused or accepted at once).
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Endpoints:
    """Addresses of a running local cloud.

    `storage`, `metadata` and `accounts` (Google's token services) are ``http://host:port`` URLs
    (HTTP APIs); `registry`, `cloudbuild`, `cloudrun`, `cloudfunctions` (the Cloud Functions API,
    v1 and v2) and `secretmanager` are ``host:port`` (OCI registry and gRPC services).
    `functions` is the 1st-gen functions' front end, ``http://host:port``: function NAME answers
    at ``{functions}/NAME``, as at ``https://REGION-PROJECT.cloudfunctions.net/NAME``.
    `credentials` is the path of the local cloud's own service-account key, what a local target
    authenticates with unless told otherwise.
    """

    storage: str
    registry: str
    cloudbuild: str
    cloudrun: str
    metadata: str
    accounts: str
    cloudfunctions: str
    functions: str
    secretmanager: str
    credentials: str

    #: The fields that are listeners (their ports are reused after a restart).
    SERVICES = ("storage", "registry", "cloudbuild", "cloudrun", "metadata", "accounts", "cloudfunctions",
                "functions", "secretmanager")

    def write(self, state_dir: Path) -> Path:
        path = state_dir / FILENAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @staticmethod
    def mark_starting(state_dir: Path) -> None:
        """Say in ``DIR/endpoints.json`` that this process is starting a local cloud there (ports
        kept: it reuses them); `write` clears the mark once every service listens."""
        me = Process.of(os.getpid())
        if me is not None:  # None without /proc: no mark, as before
            _rewrite(state_dir, {STARTING: asdict(me)}, drop=STOPPED, create=True)

    @staticmethod
    def mark_stopped(state_dir: Path) -> None:
        """Say in ``DIR/endpoints.json`` that nothing listens there any more (ports kept)."""
        _rewrite(state_dir, {STOPPED: True}, drop=STARTING, create=False)

    @classmethod
    def running(cls, state_dir: Path) -> Endpoints:
        """The endpoints of the local cloud that runs in `state_dir`; `LocalCloudNotRunning` naming
        the directory and the command that starts it when it was stopped or killed."""
        endpoints = cls.read(state_dir)
        address = endpoints.accounts.removeprefix("http://")
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
        except OSError as error:
            raise not_running(state_dir, f"nothing answers at {address} ({error.strerror or error}): "
                                         "it was killed, or its machine restarted") from None
        return endpoints

    @classmethod
    def read(cls, state_dir: Path) -> Endpoints:
        path = state_dir / FILENAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            from cf2run.errors import Cf2RunError

            raise Cf2RunError(
                f"no local cloud found: {path} does not exist",
                hint="start one with `cf2run localcloud serve --state-dir DIR` and point the "
                     "target's localcloud_dir (or CF2RUN_LOCALCLOUD_DIR) at DIR") from None
        if data.get(STOPPED):
            raise not_running(state_dir, f"{path} says it was stopped")
        if STARTING in data:
            raise still_starting(state_dir, data[STARTING])
        missing = [key for key in cls.__dataclass_fields__ if key not in data]
        if missing:
            from cf2run.errors import Cf2RunError

            raise Cf2RunError(f"{path} was written by an older cf2run (no {', '.join(missing)})",
                              hint="restart the local cloud: `cf2run localcloud serve --state-dir "
                                   f"{state_dir}`")
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    @staticmethod
    def port_of(address: str) -> int:
        """The port of ``host:port`` or ``http://host:port`` (reused after a restart)."""
        return int(address.rsplit(":", 1)[1])


def serve_command(state_dir: Path) -> str:
    return f"cf2run localcloud serve --state-dir {state_dir}"


def _rewrite(state_dir: Path, marks: dict[str, object], drop: str, create: bool) -> None:
    """``DIR/endpoints.json`` with `marks` set and `drop` removed, ports kept (`create`: also when
    there is no file yet, or an unreadable one)."""
    path = state_dir / FILENAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        if not create:
            return
        data = {}
    data = {key: value for key, value in data.items() if key != drop} | marks
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def still_starting(state_dir: Path, starting: object) -> Exception:
    """`LocalCloudStarting` while the process that marked `state_dir`'s endpoints.json starting
    lives (its token service may answer already, the others not yet); `LocalCloudNotRunning` when
    it died before it was done."""
    from cf2run.errors import LocalCloudStarting

    try:
        process = Process(**starting)  # type: ignore[arg-type]
    except TypeError:
        process = Process(0, 0)
    if not process.alive():
        return not_running(state_dir, f"its process (pid {process.pid}) ended while it was starting")
    return LocalCloudStarting(
        f"the local cloud in {state_dir} is still starting (pid {process.pid}): not every service "
        "listens yet",
        hint=f"wait until `{serve_command(state_dir)}` prints its endpoints, then run the command "
             f"again; if it hangs, stop it (`kill {process.pid}`) and run `{serve_command(state_dir)}`")


def not_running(state_dir: Path, why: str) -> Exception:
    """`LocalCloudNotRunning`: no local cloud runs in `state_dir`, `why`, and how to start it."""
    from cf2run.errors import LocalCloudNotRunning

    return LocalCloudNotRunning(f"no local cloud is running in {state_dir}: {why}",
                                hint=f"start it with `{serve_command(state_dir)}`")
