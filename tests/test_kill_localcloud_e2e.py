"""`kill -9` of `cf2run localcloud serve`, for real: a serve process of the test's own, the
pipeline against it through the official clients, and a real Prefect API.

What a user notices: nothing the local cloud started (fake-gcs-server, zygotes, revisions) keeps
running after its kill; a restart in the same state dir serves again (a second one while the
first lives is refused, naming its PID); a build in flight at the kill ends INTERNAL_ERROR (Cloud
Build's status for a build whose worker went away, cloudbuild.proto), and the rerun builds the
image again instead of reusing what that build had pushed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flowruns import migrate
from google.cloud.devtools import cloudbuild_v1
from serving import wait_serving
from test_migrate_e2e import builds_of, fresh_copy

from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import ImageRef
from cf2run.localcloud.endpoints import Endpoints
from cf2run.manifest.spec import FunctionSpec, Target, load_manifest

CF2RUN = Path(sys.executable).with_name("cf2run")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
Status = cloudbuild_v1.Build.Status
pytestmark = pytest.mark.usefixtures("prefect_api")


class Serve:
    """`cf2run localcloud serve --state-dir STATE` in its own process."""

    def __init__(self, state: Path, **knobs: str) -> None:
        self.state = state
        self.process = subprocess.Popen(
            [str(CF2RUN), "localcloud", "serve", "--state-dir", str(state)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, **{f"CF2RUN_LOCALCLOUD_{k.upper()}": v for k, v in knobs.items()}})
        wait_serving(self.process, state)

    def kill_9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def processes_of(state: Path, but: int | None = None) -> dict[int, str]:
    """Live processes that run in or on `state` (their command line or working directory)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (os.getpid(), but):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            zombie = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and (str(state) in cmdline or cwd.startswith(str(state))):
            found[int(proc.name)] = cmdline
    return found


def pushed(cloud: Cloud, target: Target, function: str) -> bool:
    """The function's build is WORKING and its image is in the registry."""
    return any(build.status == Status.WORKING
               and cloud.registry.head_manifest(ImageRef.parse(build.images[0])) is not None
               for build in builds_of(cloud, target, function))


def gone_within(state: Path, seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while (left := processes_of(state)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "cloud"
    yield state
    for pid in processes_of(state):  # whatever a failed test left
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spec(tmp_path: Path) -> FunctionSpec:
    sample = next(s for s in load_manifest(EXAMPLES / "manifest.yaml").functions if s.name == "hello-python")
    return fresh_copy(sample, tmp_path)


def test_kill_9_of_the_local_cloud_takes_its_processes_along_and_a_restart_serves_again(
        state: Path, spec: FunctionSpec) -> None:
    first = Serve(state)
    result, _ = migrate(spec, Target(kind="local", localcloud_dir=state))
    assert result.status == "succeeded", result.message
    running = processes_of(state, but=first.process.pid)
    assert any("fake-gcs-server" in cmd for cmd in running.values()), running
    assert len(running) >= 2, f"no revision process: {running}"

    first.kill_9()
    assert not gone_within(state, 10), "processes outlived the local cloud"

    again = Serve(state)
    try:
        refused = subprocess.run([str(CF2RUN), "localcloud", "serve", "--state-dir", str(state)],
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1
        assert f"a local cloud (pid {again.process.pid}) is already running in {state}" in refused.stderr
        assert "Traceback" not in refused.stderr
        rerun, _ = migrate(spec, Target(kind="local", localcloud_dir=state))
        assert rerun.status == "succeeded", rerun.message
    finally:
        again.stop()
    assert not gone_within(state, 10), "processes outlived a clean stop"


def test_a_build_in_flight_at_the_kill_ends_internal_error_and_the_rerun_builds_again(
        state: Path, spec: FunctionSpec) -> None:
    first = Serve(state, build_latency_s="600")  # builds push their image, then stay WORKING
    target = Target(kind="local", localcloud_dir=state)
    cloud = Cloud.for_target(target)
    failed: list[object] = []
    flow = threading.Thread(target=lambda: failed.append(migrate(spec, target)[0]))
    flow.start()
    deadline = time.monotonic() + 300
    while not pushed(cloud, target, spec.name):  # the build pushed; it stays WORKING
        assert time.monotonic() < deadline and flow.is_alive(), failed
        time.sleep(0.5)
    first.kill_9()
    flow.join(timeout=300)  # its build step gives up on the unreachable local cloud
    assert not flow.is_alive()

    again = Serve(state)
    try:
        cloud = Cloud.local(Endpoints.running(state))  # new channels: the old ones back off a while
        (interrupted,) = builds_of(cloud, target, spec.name)
        assert interrupted.status == Status.INTERNAL_ERROR, interrupted
        assert "stopped while this build was queued or running" in interrupted.status_detail
        rerun, _ = migrate(spec, target)
        assert rerun.status == "succeeded", rerun.message
        assert rerun.build_cached is False, "reused the image of a build that failed"
        statuses = [b.status for b in builds_of(cloud, target, spec.name)]
        assert statuses == [Status.SUCCESS, Status.INTERNAL_ERROR]
    finally:
        again.stop()
