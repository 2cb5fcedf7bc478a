"""Reliability, measured (issue 18, "Measured, kept"): bad input, transient faults, kills, cutovers.

    .venv/bin/python bench/reliability.py              # all four parts (~10 min on 2 CPUs)
    .venv/bin/python bench/reliability.py --parts inputs,cutover --no-readme

Against an in-process `LocalCloud` (its `FaultInjector` counts every call it receives; its own
internal registry traffic is exempt from the fault knob) and a temporary Prefect server:

(1) inputs: every case of bench/reliability_inputs.py through `cf2run plan`; refused clearly =
    exit 2, the message names the field or file, no traceback or internal class, and the local
    cloud received no call;
(2) faults: N functions (each naming a secret) migrated as one fleet with every call the
    pipeline makes (gRPC, Secret Manager included, registry, Cloud Storage) failing with
    UNAVAILABLE at probability P;
(3) kills: `cf2run migrate` of a new function killed (SIGKILL) while each step runs, then rerun:
    converged (succeeded, URL answers), builds of its image and revisions of its service
    counted (goal: 1 each), rerun wall time;
(4) cutover: load generators call a service while it is migrated to a new revision 3 times;
    failed requests counted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from _common import REPO, Stopwatch, command_line, machine, markdown_table, seconds, write_section
from reliability_inputs import BadInput, corpus

SECTION = "reliability"
INTERNAL_NAMES = ("FunctionSpec", "Target(", "Traceback", "ValidationError", "pydantic")
STEPS = ("package", "build", "deploy", "smoke", "promote")
#: A rerun stalls when it takes this much longer than an uninterrupted run: the shortest lease
#: Prefect's server grants a concurrency slot (what a dead run's slots made reruns wait for).
STALL_S = 60.0


# -- (1) bad inputs -----------------------------------------------------------------------------


def refused_clearly(case: BadInput, root: Path, local: Any) -> tuple[bool, str]:
    from typer.testing import CliRunner

    from cf2run.cli import app

    root.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=root))
    manifest = case.write(directory, local.state_dir)
    before = sum(local.faults.calls.values())
    answer = CliRunner().invoke(app, ["plan", str(manifest), *case.args])
    calls = sum(local.faults.calls.values()) - before
    output = answer.output + (f"\n{answer.exception!r}" if answer.exception and answer.exit_code != 2 else "")
    problems = []
    if answer.exit_code != 2:
        problems.append(f"exit {answer.exit_code}")
    if case.mentions.lower() not in output.lower():
        problems.append(f"does not name {case.mentions!r}")
    if any(word in output for word in INTERNAL_NAMES):
        problems.append("shows internals")
    if calls:
        problems.append(f"{calls} cloud call(s)")
    first_line = " ".join(output.strip().splitlines()[:1])[:140]
    return not problems, f"{case.label}: {', '.join(problems)} ({first_line})"


def bad_inputs(root: Path, local: Any) -> tuple[int, list[str]]:
    cases = list(corpus())
    failures = []
    for case in cases:
        ok, detail = refused_clearly(case, root, local)
        if not ok:
            failures.append(detail)
    return len(cases), failures


# -- shared: manifests and migrations -----------------------------------------------------------


def write_manifest(directory: Path, local: Any, functions: dict[str, str], slow: bool = False,
                   secret: str | None = None) -> Path:
    """A manifest of functions name -> their answer, public, smoke-tested on their body. `slow`:
    each source carries 40 MB of random bytes and answers after a second, so that packaging and
    the smoke test last long enough to be killed in. `secret`: each names it (secret_env), so the
    migration asks Secret Manager about it."""
    entries = []
    for name, body in functions.items():
        source = directory / name
        source.mkdir(parents=True, exist_ok=True)
        pause = "    import time; time.sleep(1)\n" if slow else ""
        (source / "main.py").write_text(f"def hello(request):\n{pause}    return {body!r}\n")
        if slow:
            (source / "padding.bin").write_bytes(os.urandom(40 * 1024 * 1024))
        entries.append({"name": name, "source": str(source), "runtime": "python311", "entry_point": "hello",
                        "allow_unauthenticated": True, "smoke": {"expect_body": body},
                        **({"secret_env": {"FAULTS_SECRET": secret}} if secret else {})})
    path = directory / "manifest.yaml"
    path.write_text(yaml.safe_dump({"target": {"kind": "local", "localcloud_dir": str(local.state_dir)},
                                    "functions": entries}))
    return path


def cf2run(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(REPO / ".venv/bin/cf2run"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def answers(url: str, body: str) -> bool:
    try:
        return httpx.get(url, timeout=30).text.strip() == body
    except httpx.HTTPError:
        return False


def service(cloud: Any, name: str) -> str:
    return f"projects/local-project/locations/us-central1/services/{name}"


# -- (2) faults ---------------------------------------------------------------------------------


def under_faults(root: Path, local: Any, cloud: Any, env: dict[str, str], n: int,
                 probability: float) -> tuple[int, list[str], float, str]:
    from cf2run.localcloud.settings import Fault

    prefix = f"flt-{uuid.uuid4().hex[:4]}"
    functions = {f"{prefix}-{i}": f"answer {i}" for i in range(n)}
    local.cloudrun.secrets.add_version("local-project", prefix, b"not-a-real-secret")
    manifest = write_manifest(root / prefix, local, functions, secret=prefix)
    before, injected_before = local.faults.calls.copy(), local.faults.injected.copy()
    local.settings.faults = [Fault(method="*", code="UNAVAILABLE", probability=probability)]
    watch = Stopwatch()
    try:
        process = cf2run(["fleet", str(manifest)], env)
        output, _ = process.communicate(timeout=1800)
    finally:
        local.settings.faults = []
    elapsed = watch.elapsed
    calls, injected = local.faults.calls - before, local.faults.injected - injected_before
    apis = sorted({method.split(".", 1)[0] for method in calls})
    summary = (f"{calls.total()} calls received ({', '.join(apis)}), {injected.total()} failed by the knob")
    missing = []
    for name, body in functions.items():
        try:
            url = cloud.services.get_service(name=service(cloud, name)).uri
        except Exception as error:
            missing.append(f"{name}: no service ({type(error).__name__})")
            continue
        if not answers(url, body):
            missing.append(f"{name}: {url} does not answer {body!r}")
    if process.returncode != 0:
        missing.append(f"fleet exit {process.returncode}: {output.strip().splitlines()[-1:]}")
    return n - sum(1 for m in missing if not m.startswith("fleet exit")), missing, elapsed, summary


# -- (3) kills ----------------------------------------------------------------------------------


def running_step(client: Any, flow_run_names: set[str]) -> str | None:
    """The step (task run name's prefix) running now in the newest flow run, if any."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateName

    runs = client.read_task_runs(task_run_filter=TaskRunFilter(state=TaskRunFilterState(
        name=TaskRunFilterStateName(any_=["Running"]))), limit=50)
    for run in runs:
        step = run.name.split("[", 1)[0].split("-", 1)[0]
        if step in STEPS and any(name in run.name for name in flow_run_names):
            return step
    return None


def kill_at(step: str, root: Path, local: Any, cloud: Any, env: dict[str, str],
            baseline_s: float) -> list[str]:
    from prefect.client.orchestration import get_client

    name = f"kill-{step}-{uuid.uuid4().hex[:4]}"
    body = f"{name} answers"
    manifest = write_manifest(root / name, local, {name: body}, slow=True)
    process = cf2run(["fleet", str(manifest)], env)
    killed_in = "never (finished first)"
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            now = running_step(client, {name})
            if now == step or (now and STEPS.index(now) > STEPS.index(step)):
                os.killpg(process.pid, signal.SIGKILL)
                killed_in = now
                break
            time.sleep(0.02)
    process.wait()
    watch = Stopwatch()
    rerun = cf2run(["fleet", str(manifest)], env)
    output, _ = rerun.communicate(timeout=900)
    elapsed = watch.elapsed
    parent = service(cloud, name)
    try:
        url = cloud.services.get_service(name=parent).uri
        revisions = len(list(cloud.revisions.list_revisions(parent=parent)))
    except Exception:
        url, revisions = "", 0
    builds = sum(1 for build in cloud.builds.list_builds(project_id="local-project")
                 if any(f"/{name}:" in image for image in build.images))
    converged = rerun.returncode == 0 and bool(url) and answers(url, body)
    stalled = elapsed > baseline_s + STALL_S
    verdict = "met" if converged and builds == 1 and revisions == 1 and not stalled else "missed"
    tail = "" if rerun.returncode == 0 else f" ({output.strip().splitlines()[-1][:100]})"
    return [step, killed_in, "yes" if converged else f"no{tail}", str(builds), str(revisions),
            seconds(elapsed), verdict]


# -- (4) cutovers under load --------------------------------------------------------------------


class Load(threading.Thread):
    """Calls a URL back to back; counts answers and failures (transport errors, non-200)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.ok = url, 0
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._done.is_set():
                try:
                    response = http.get(self.url)
                except httpx.TransportError as error:
                    self.failures.append(type(error).__name__)
                    continue
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {response.status_code}")

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=60)


def cutovers(root: Path, local: Any, cloud: Any, env: dict[str, str], times: int,
             clients: int) -> tuple[int, list[str], int]:
    name = f"cut-{uuid.uuid4().hex[:4]}"
    migrate_once: Callable[[int], int] = lambda version: cf2run(  # noqa: E731
        ["migrate", str(write_manifest(root / f"{name}-v{version}", local, {name: f"v{version}"}))],
        env).wait(timeout=900)
    assert migrate_once(0) == 0, "the first migration failed"
    url = cloud.services.get_service(name=service(cloud, name)).uri
    load = [Load(url) for _ in range(clients)]
    for generator in load:
        generator.start()
    failed_migrations = sum(1 for version in range(1, times + 1) if migrate_once(version) != 0)
    time.sleep(1)
    for generator in load:
        generator.stop()
    revisions = len(list(cloud.revisions.list_revisions(parent=service(cloud, name))))
    if revisions != times + 1 or not answers(url, f"v{times}"):
        failed_migrations += 1  # a cutover that did not happen measured nothing
    return sum(g.ok for g in load), [f for g in load for f in g.failures], failed_migrations


# -- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="inputs,faults,kills,cutover")
    parser.add_argument("--n", type=int, default=10, help="functions migrated under faults")
    parser.add_argument("--p", type=float, default=0.2, help="probability of a fault on every call")
    parser.add_argument("--cutovers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="load generators during cutovers")
    parser.add_argument("--others", default="", help="what else ran on the machine (for the README)")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    root = Path(tempfile.mkdtemp(prefix="cf2run-reliability-"))
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from cf2run.gcp.cloud import Cloud
    from cf2run.localcloud.server import LocalCloud
    from cf2run.localcloud.settings import LocalCloudSettings

    machine_line = machine()
    goals: list[list[str]] = []
    details: list[str] = []
    kills: list[list[str]] = []
    with LocalCloud(state_dir=root / "localcloud", settings=LocalCloudSettings()) as local, \
            prefect_test_harness(server_startup_timeout=120):
        cloud = Cloud.local(local.endpoints)
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
               "CF2RUN_LOCALCLOUD_DIR": str(local.state_dir)}
        if "inputs" in parts:
            tried, failures = bad_inputs(root / "inputs", local)
            print(f"inputs: {tried - len(failures)}/{tried} refused clearly", flush=True)
            goals.append(["bad inputs refused clearly before any cloud call (every one of >= 100)",
                          f"{tried - len(failures)} of {tried}",
                          "met" if not failures and tried >= 100 else "missed"])
            if failures:
                details += ["Bad inputs not refused clearly:", "", *[f"- {f}" for f in failures], ""]
        if "faults" in parts:
            done, missing, elapsed, calls = under_faults(root / "faults", local, cloud, env, args.n, args.p)
            print(f"faults: {done}/{args.n} migrated in {elapsed:.0f} s ({calls})", flush=True)
            goals.append([f"functions migrated under {args.p:.0%} UNAVAILABLE on every call (all)",
                          f"{done} of {args.n} ({seconds(elapsed)}; {calls})",
                          "met" if not missing else "missed"])
            if missing:
                details += ["Under faults:", "", *[f"- {m}" for m in missing], ""]
        if "kills" in parts:
            # Builds and Cloud Run writes (deploy, promote) last 3 s, as remote ones would.
            local.settings.build_latency_s = local.settings.deploy_latency_s = 3.0
            name = f"uncut-{uuid.uuid4().hex[:4]}"
            watch = Stopwatch()
            cf2run(["fleet", str(write_manifest(root / name, local, {name: "x"}, slow=True))], env).wait()
            baseline_s = watch.elapsed
            print(f"kills: an uninterrupted run takes {baseline_s:.1f} s", flush=True)
            for step in STEPS:
                kills.append(kill_at(step, root / "kills", local, cloud, env, baseline_s))
                print("kill:", kills[-1], flush=True)
            local.settings.build_latency_s = local.settings.deploy_latency_s = 0.0
            met = all(row[-1] == "met" for row in kills)
            goals.append([f"kill -9 of `cf2run fleet` at each step, rerun: converges, 1 build, 1 revision, "
                          f"no stall (rerun under {seconds(baseline_s)} uninterrupted + {STALL_S:.0f} s)",
                          f"{sum(row[-1] == 'met' for row in kills)} of {len(kills)}",
                          "met" if met else "missed"])
        if "cutover" in parts:
            ok, failures, failed_migrations = cutovers(root / "cutover", local, cloud, env, args.cutovers,
                                                       args.clients)
            print(f"cutover: {len(failures)} failed of {ok + len(failures)}", flush=True)
            goals.append([f"failed requests during {args.cutovers} cutovers under load (0)",
                          f"{len(failures)} of {ok + len(failures)} ({args.clients} clients"
                          f"{f'; {failed_migrations} migration(s) failed' if failed_migrations else ''})",
                          "met" if not failures and not failed_migrations else "missed"])
            if failures:
                details += ["Failed requests:", "", f"- {sorted(set(failures))}", ""]
    shown = command_line().split(" --others")[0]  # what else ran is said once, after the command
    body = [f"Measured {machine_line}.", f"`{shown}`" + (f"; also running: {args.others}."
                                                                    if args.others else "."), "",
            markdown_table(["goal (issue 18)", "measured", ""], goals), ""]
    if kills:
        body += [markdown_table(["killed while", "was running", "rerun converged", "builds of the image",
                                 "revisions", "rerun wall", ""], kills), ""]
    text = "\n".join(body + details)
    print(text)
    if not args.no_readme:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
