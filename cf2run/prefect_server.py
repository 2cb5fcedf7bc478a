"""Which Prefect server a cf2run command reports to, found before Prefect is imported.

Without `PREFECT_API_URL` (in the environment or the active Prefect profile), every flow run
of a command starts a temporary Prefect server, which alone takes 15-20 s (bench/cli_rerun.py)
and forgets the runs when the command ends. A server the user keeps running in the background
(`prefect server start --background`: Prefect writes its PID to `PREFECT_HOME/server.pid`) is
used instead when it answers: the command starts in seconds and its runs stay in that
server's UI. `use_background_server` sets `PREFECT_API_URL` for this process only; nothing
else in the user's configuration changes.
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
       "are gone when it ends; `prefect server start --background` keeps one running, with its UI, "
       "and the next commands use it")


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


def background_server_url() -> str | None:
    """The API URL of a server `prefect server start --background` runs, when it answers."""
    pid_file = prefect_home() / PID_FILE
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return None
    host = os.environ.get("PREFECT_SERVER_API_HOST", "127.0.0.1")
    port = os.environ.get("PREFECT_SERVER_API_PORT", "4200")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/api"
    try:
        answered = httpx.get(f"{url}/health", timeout=PROBE_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return None
    return url if answered else None


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
