"""`cf2run server start` / `stop`, for real: the server it starts outlives the command, a
`cf2run migrate` without PREFECT_API_URL reports its run to it (not to a temporary server of
its own, 15-20 s), and `cf2run server stop` stops it. (`prefect server start --background`
dies within seconds on its reader-less pipes: cf2run/background_server.py.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from cf2run.localcloud.server import LocalCloud
from cf2run.prefect_server import PID_FILE, answers
from prefect_server.processes import BIN, ROOT, free_port


def cf2run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "cf2run"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def server_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """No Prefect server configured, a PREFECT_HOME and a port of the test's own; whatever
    `cf2run server start` left is stopped at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_API_PORT": str(free_port())}
    yield env
    cf2run(["server", "stop"], env)


def test_server_start_outlives_the_command_and_migrate_reports_to_it(
        server_env: dict[str, str], localcloud: LocalCloud, tmp_path: Path) -> None:
    started = cf2run(["server", "start"], server_env)
    assert started.returncode == 0, started.stdout + started.stderr
    api_url = f"http://127.0.0.1:{server_env['PREFECT_SERVER_API_PORT']}/api"
    assert f"export PREFECT_API_URL={api_url}" in started.stdout
    assert answers(api_url), "the server still answers after `cf2run server start` exited"
    pid = int((Path(server_env["PREFECT_HOME"]) / PID_FILE).read_text())

    again = cf2run(["server", "start"], server_env)
    assert again.returncode == 1 and f"already answers at {api_url}" in again.stderr

    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "main.py").write_text("def hello(request):\n    return 'from the cli'\n")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "target": {"kind": "local", "localcloud_dir": str(localcloud.state_dir)},
        "functions": [{"name": "cli-background", "source": "fn", "runtime": "python311",
                       "entry_point": "hello", "smoke": {"expect_body": "from the cli"}}]}))
    done = cf2run(["migrate", str(manifest)], server_env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Starting temporary server" not in output
    assert "no Prefect server configured" not in output  # the tip is for commands without one
    runs = SyncPrefectClient(api_url).read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["migrate[cli-background]"])))
    assert [run.state_name for run in runs] == ["Completed"], "the run is on the background server"

    stopped = cf2run(["server", "stop"], server_env)
    assert stopped.returncode == 0 and f"PID {pid}" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not answers(api_url)
    assert not (Path(server_env["PREFECT_HOME"]) / PID_FILE).exists()
    status = cf2run(["server", "status"], server_env)
    assert status.returncode == 1 and "no Prefect server running" in status.stdout
