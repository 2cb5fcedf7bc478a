"""A real Prefect deployment stack, as a user sets one up from the README.

    prefect server start          (SQLite in a temp PREFECT_HOME, its own port, 127.0.0.1)
    cf2run localcloud serve       (its own state dir)
    cf2run setup                  (work pool `cf2run`, quota limits)
    prefect deploy --all          (from this checkout's prefect.yaml)
    prefect worker start --pool cf2run   (started outside the checkout, no CF2RUN_CHECKOUT:
                                          the pull step has to find the checkout itself)

`running_stack(..., results_bucket=B, separate_workers=True)` is the stack of workers on machines
that share nothing but the server and the cloud: `cf2run setup --results-bucket B` puts results
on the local cloud's Cloud Storage, and each worker has its own PREFECT_HOME and working directory.

Tests talk to the server only through its API, as the UI does. Every process is stopped at
the end of the session, and so is any flow-run process a worker left behind.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from flowruns import settled
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, TaskRun
from serving import serving

from prefect_server.processes import BIN, ROOT, Service, free_port, kill_pid_group, start

SERVER_START_S = 180
RUN_TIMEOUT_S = 420


@dataclass
class PrefectStack:
    """The running stack and what tests ask it."""

    api_url: str
    env: dict[str, str]
    workdir: Path
    localcloud_dir: Path
    workers: list[Service] = field(default_factory=list)
    server_pid: int = 0
    #: Each worker in a directory of its own (`worker_dir`), its PREFECT_HOME there too.
    separate_workers: bool = False

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def client(self) -> SyncPrefectClient:
        return SyncPrefectClient(self.api_url)

    def worker_dir(self, name: str) -> Path:
        """Where worker `name` runs: its own directory, or the stack's one shared by all."""
        return self.workdir / "workers" / name if self.separate_workers else self.workdir

    def start_worker(self, name: str, limit: int | None = None) -> Service:
        args = [str(BIN / "prefect"), "worker", "start", "--pool", "cf2run", "--name", name]
        args += ["--limit", str(limit)] if limit else []
        directory, env = self.worker_dir(name), self.env
        if self.separate_workers:
            directory.mkdir(parents=True, exist_ok=True)
            env = env | {"PREFECT_HOME": str(directory / "prefect-home")}
        worker = start(f"worker-{name}", args, env, self.workdir / "logs", cwd=directory)
        self.workers.append(worker)
        worker.wait_until(lambda: f"Worker '{name}' started" in worker.output(), 120, "start")
        return worker

    def run_deployment_like_the_ui(self, deployment: str, parameters: dict[str, Any]) -> FlowRun:
        """What the UI's Run button does (create a run from the deployment); then wait for it."""
        with self.client() as client:
            found = client.read_deployment_by_name(deployment)
            run = client.create_flow_run_from_deployment(found.id, parameters=parameters)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (run.state and run.state.is_final()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{deployment} run {run.name} still {run.state_name} after "
                                       f"{RUN_TIMEOUT_S}s; worker logs in {self.workdir / 'logs'}")
                time.sleep(1)
                run = client.read_flow_run(run.id)
            return run

    def explain(self, run: FlowRun) -> str:
        """The run's state and the workers' last log lines: what a user would look at."""
        logs = "".join(f"\n--- {w.name} ---\n{w.output()[-3000:]}" for w in self.workers)
        reports = "".join(f"\n{a.data}" for a in self.artifacts(run) if a.type == "markdown")
        return f"{run.name}: {run.state_name}: {run.state.message if run.state else ''}{reports}{logs}"

    def children(self, run: FlowRun) -> list[FlowRun]:
        with self.client() as client:
            return client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))

    def task_runs(self, runs: list[FlowRun]) -> list[TaskRun]:
        """The task runs of these (ended) flow runs, once the server recorded their final states."""
        with self.client() as client:
            return settled(lambda: client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[run.id for run in runs])), limit=200))

    def artifacts(self, run: FlowRun) -> list[Artifact]:
        with self.client() as client:
            return client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))

    def leftover_flow_run_pids(self) -> list[int]:
        with self.client() as client:
            runs = client.read_flow_runs(limit=200)
        return [int(str(run.infrastructure_pid).rsplit(":", 1)[-1]) for run in runs
                if run.infrastructure_pid and str(run.infrastructure_pid).rsplit(":", 1)[-1].isdigit()]


def _environment(home: Path, api_url: str, localcloud_dir: Path) -> dict[str, str]:
    """The user's environment without any Prefect or cf2run setting, plus the stack's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CF2RUN_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_UI_ENABLED": "true",  # the browser checks (test_ui_in_browser.py)
        "PREFECT_SERVER_UI_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "CF2RUN_LOCALCLOUD_DIR": str(localcloud_dir),
    }


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@contextmanager
def running_stack(workdir: Path, results_bucket: str | None = None, separate_workers: bool = False,
                  worker_limit: int | None = None) -> Iterator[PrefectStack]:
    """Start the stack in `workdir` (`results_bucket`: `cf2run setup --results-bucket` it on the
    local cloud; `separate_workers`: see `PrefectStack.worker_dir`; `worker_limit`: the first
    worker's `--limit`); stop every process of it on the way out."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    localcloud_dir = workdir / "localcloud"
    env = _environment(workdir / "prefect-home", api_url, localcloud_dir)
    logs = workdir / "logs"
    services = [start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                         "--port", str(port)], env, logs)]
    the_stack = PrefectStack(api_url, env, workdir, localcloud_dir, server_pid=services[0].popen.pid,
                             separate_workers=separate_workers)
    try:
        services.append(start("localcloud", [str(BIN / "cf2run"), "localcloud", "serve",
                                             "--state-dir", str(localcloud_dir)], env, logs))
        services[0].wait_until(lambda: _healthy(api_url), SERVER_START_S, "healthy API")
        services[1].wait_until(lambda: serving(localcloud_dir), 120, "the local cloud serving")
        results = ["--results-bucket", results_bucket] if results_bucket else []
        _run([str(BIN / "cf2run"), "setup", *results], env, "cf2run setup")
        _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env, "prefect deploy --all")
        the_stack.start_worker("w1", worker_limit)
        yield the_stack
    finally:
        for worker in the_stack.workers:
            worker.stop()
        if _healthy(api_url):
            for pid in the_stack.leftover_flow_run_pids():
                kill_pid_group(pid)
        for service in reversed(services):
            service.stop()
