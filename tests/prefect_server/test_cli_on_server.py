"""The `cf2run` command with a Prefect server running in the background, as `prefect server start
--background` leaves one: a command without PREFECT_API_URL reports to it (its runs stay in that
server's UI) instead of starting a temporary server of its own for 15-20 s."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from cf2run.prefect_server import PID_FILE
from prefect_server.processes import BIN, ROOT
from prefect_server.stack import PrefectStack


def test_a_command_without_a_configured_server_uses_the_background_one(
        stack: PrefectStack, tmp_path: Path) -> None:
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "main.py").write_text("def hello(request):\n    return 'from the cli'\n")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "target": {"kind": "local", "localcloud_dir": str(stack.localcloud_dir)},
        "functions": [{"name": "cli-background", "source": "fn", "runtime": "python311",
                       "entry_point": "hello", "smoke": {"expect_body": "from the cli"}}]}))
    home = Path(stack.env["PREFECT_HOME"])
    (home / PID_FILE).write_text(str(stack.server_pid))  # what `prefect server start --background` writes
    port = stack.api_url.rsplit(":", 1)[1].split("/")[0]
    env = {k: v for k, v in stack.env.items() if k != "PREFECT_API_URL"} | {"PREFECT_SERVER_API_PORT": port}
    try:
        done = subprocess.run([str(BIN / "cf2run"), "migrate", str(manifest)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        (home / PID_FILE).unlink()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Starting temporary server" not in output
    assert "no Prefect server configured" not in output  # the tip is for commands without one
    runs = stack.client().read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["migrate[cli-background]"])))
    assert [run.state_name for run in runs] == ["Completed"], "the run is on the background server"
