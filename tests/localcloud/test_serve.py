"""`cf2run localcloud serve`: a persistent local cloud that other processes find and that
survives restarts — services come back on the same URLs — and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from builder_samples import PYTHON_MAIN, python_function
from google.cloud import run_v2
from serving import wait_serving
from test_cloudrun import APP, Env, service_of
from test_scaling import listens

from cf2run.errors import LocalCloudNotRunning, LocalCloudStarting
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.cloudbuild.builder import build_function
from cf2run.localcloud.endpoints import Endpoints
from cf2run.localcloud.settings import LocalCloudSettings
from cf2run.manifest.spec import Target

CF2RUN = Path(sys.executable).with_name("cf2run")
PARENT = "projects/local-project/locations/us-central1"
IMAGE = "us-central1-docker.pkg.dev/local-project/cf2run/hello:v1"


class Serve:
    """One `cf2run localcloud serve` process on a state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Endpoints:
        return wait_serving(self.launch(), self.state_dir)

    def launch(self) -> subprocess.Popen[bytes]:
        """Start it, not waiting until it serves."""
        self.process = subprocess.Popen([str(CF2RUN), "localcloud", "serve", "--state-dir",
                                         str(self.state_dir)], stdout=subprocess.DEVNULL)
        return self.process

    def kill_9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    server = Serve(tmp_path / "cloud")
    yield server
    if server.process and server.process.poll() is None:
        server.stop()


def processes_using(directory: Path) -> list[int]:
    """Live processes whose working directory is inside `directory` (revisions are)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd").startswith(str(directory)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def cf2run(*args: str) -> str:
    return run_cf2run(*args, check=True).stdout


def run_cf2run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CF2RUN), *args], check=check, capture_output=True, text=True, timeout=60)


def get(url: str, token: str) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_restart_brings_services_back_on_the_same_urls(serve: Serve, tmp_path: Path) -> None:
    endpoints = serve.start()
    cloud = Cloud.local(endpoints)
    source = python_function(tmp_path / "src", main=PYTHON_MAIN.replace(
        "def hello(request):\n", "def hello(request):\n    print('handling', request.path)\n"))
    build_function(source, {"GOOGLE_FUNCTION_TARGET": "hello"}, IMAGE, cloud.registry,
                   tmp_path / "cache", log=lambda line: None)
    service = run_v2.Service(template=run_v2.RevisionTemplate(
        containers=[run_v2.Container(image=IMAGE)]))
    created = cloud.services.create_service(parent=PARENT, service_id="hello",
                                            service=service).result(timeout=120)
    token = cloud.id_token(created.uri)
    assert "hello from python" in get(created.uri, token).text
    assert get(created.uri, "not-a-token").status_code == 401  # a refused token (cloudrun/router.py)

    # What a user reaches for from a shell: a token for the URL, and the revision's output.
    printed = cf2run("localcloud", "token", created.uri, "--state-dir", str(serve.state_dir))
    assert get(created.uri, printed.strip()).status_code == 200
    logs = cf2run("localcloud", "logs", "hello", "--state-dir", str(serve.state_dir))
    revision = created.latest_ready_revision.rsplit("/", 1)[-1]
    assert any(revision in line and "handling /" in line for line in logs.splitlines()), logs

    assert serve.stop() == 0
    with pytest.raises(httpx.ConnectError):
        get(created.uri, token)
    assert processes_using(serve.state_dir) == [], "a revision outlived the local cloud"
    with pytest.raises(LocalCloudNotRunning) as stopped:  # its endpoints.json says so
        Endpoints.read(serve.state_dir)
    assert f"cf2run localcloud serve --state-dir {serve.state_dir}" in str(stopped.value)

    again = serve.start()
    assert again == endpoints, "the services' endpoints moved after a restart"
    restored = Cloud.local(again).services.get_service(name=f"{PARENT}/services/hello")
    assert restored.uri == created.uri
    assert "hello from python" in get(created.uri, token).text
    assert serve.stop() == 0
    assert processes_using(serve.state_dir) == []


#: An app that listens only once the file GATE exists: a warm revision of it holds a restarted local
#: cloud in its restore (after its token service listens, before its last services do) until then.
GATED = "import os, time\nwhile not os.path.exists({gate!r}):\n    time.sleep(0.05)\n" + APP


def test_a_command_while_a_killed_serve_restarts_is_told_it_is_starting(serve: Serve, tmp_path: Path) -> None:
    """The race of a restart after `kill -9`: the killed instance's endpoints.json was never marked,
    the new one's token service (the port `Endpoints.running` probes) answers first, and a command
    went ahead against a half-started cloud. Held in that state for real by a warm revision that
    cannot start yet, a command is now told the local cloud is still starting, and works once it
    serves; a serve killed while starting is reported as such, not as starting forever."""
    gate = tmp_path / "gate"
    gate.touch()
    state = serve.state_dir
    endpoints = serve.start()
    cf2run("localcloud", "create-repository", "apps", "--state-dir", str(state))
    cloud = Cloud.local(endpoints)
    pusher = Env(cloud.services, cloud.revisions, LocalCloudSettings(), cloud.registry, str, str)
    image = pusher.push_app(GATED.format(gate=str(gate), greeting="warm"))
    created = cloud.services.create_service(parent=PARENT, service_id="warm", service=service_of(
        image, scaling=run_v2.RevisionScaling(min_instance_count=1))).result(timeout=120)
    token = cloud.id_token(created.uri)

    serve.kill_9()
    gate.unlink()
    for attempt in ("killed while starting", "served"):
        starting = serve.launch()
        while not listens(Endpoints.port_of(endpoints.accounts)):  # what the old check took for "running"
            assert starting.poll() is None, "serve exited while starting"
            time.sleep(0.05)
        command = run_cf2run("localcloud", "token", created.uri, "--state-dir", str(state))
        assert command.returncode == 2, command.stdout
        assert f"the local cloud in {state} is still starting (pid {starting.pid})" in command.stderr
        assert f"cf2run localcloud serve --state-dir {state}" in command.stderr
        with pytest.raises(LocalCloudStarting):
            Cloud.for_target(Target(kind="local", localcloud_dir=state))
        if attempt == "killed while starting":
            serve.kill_9()
            command = run_cf2run("localcloud", "token", created.uri, "--state-dir", str(state))
            assert command.returncode == 2
            assert f"its process (pid {starting.pid}) ended while it was starting" in command.stderr

    gate.touch()
    assert wait_serving(starting, state) == endpoints
    assert get(created.uri, token).text == "warm from " + created.latest_ready_revision.rsplit("/", 1)[-1]
    assert run_cf2run("localcloud", "token", created.uri, "--state-dir", str(state)).returncode == 0

