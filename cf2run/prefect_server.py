"""Which Prefect server a cf2run command reports to, found before Prefect is imported.

Without `PREFECT_API_URL` (in the environment or the active Prefect profile), every flow run
of a command starts a temporary Prefect server, which alone takes 15-20 s (bench/cli_rerun.py)
and forgets the runs when the command ends. A server the user keeps running in the background
(`cf2run server start`, cf2run/background_server.py: its PID in `PREFECT_HOME/server.pid`, the
file `prefect server start --background` writes too) is used instead when it answers: the
command starts in seconds and its runs stay in that server's UI. `use_background_server` sets
`PREFECT_API_URL` for this process only; nothing else in the user's configuration changes.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import httpx

#: prefect/cli/_server_utils.py: SERVER_PID_FILE_NAME.
PID_FILE = "server.pid"
PROBE_TIMEOUT_S = 1.0
TIP = ("no Prefect server configured: this command starts a temporary one (15-20 s) and its runs "
       "are gone when it ends; `cf2run server start` keeps one running, with its UI, and the next "
       "commands use it")


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active profile of profiles.toml."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml")
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    settings = profiles.get("profiles", {}).get(active, {}) if isinstance(active, str) else {}
    url = settings.get("PREFECT_API_URL") if isinstance(settings, dict) else None
    return url if isinstance(url, str) and url else None


def server_host() -> str:
    """Where `prefect server start` listens: Prefect's PREFECT_SERVER_API_HOST, its default."""
    return os.environ.get("PREFECT_SERVER_API_HOST", "127.0.0.1")


def server_port() -> str:
    """PREFECT_SERVER_API_PORT, Prefect's default 4200."""
    return os.environ.get("PREFECT_SERVER_API_PORT", "4200")


def local_api_url() -> str:
    """The API URL of a server started here with `server_host()` and `server_port()`."""
    host = server_host()
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{server_port()}/api"


def answers(url: str) -> bool:
    """Whether a Prefect server answers `url`/health."""
    try:
        return httpx.get(f"{url}/health", timeout=PROBE_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def background_pid() -> int | None:
    """The PID in PREFECT_HOME/server.pid when that process is alive."""
    try:
        pid = int((prefect_home() / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def background_server_url() -> str | None:
    """The API URL of a server `cf2run server start` runs, when it answers."""
    if background_pid() is None:
        return None
    url = local_api_url()
    return url if answers(url) else None


def use_background_server() -> str | None:
    """Point this process at the background server when no server is configured; returns the
    URL in use, None when Prefect will start a temporary server."""
    configured = configured_api_url()
    if configured:
        return configured
    url = background_server_url()
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url
