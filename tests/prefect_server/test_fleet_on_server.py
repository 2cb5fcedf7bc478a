"""Fleet migrations on a real Prefect server, run by real workers from the deployments in prefect.yaml.

What a user of the Prefect UI sees: a fleet run started with the Run button ends Completed;
each function's steps are task runs named `step[function]`; the fleet's table artifact has
one row per function; the nightly deployment carries its (inactive) cron schedule; a fleet
with a broken function ends Failed while the other functions are deployed and answer; and
with `fanout="deployments"` every function is a run of the migrate-function deployment,
taken by the workers on the pool, with the same report as in-process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from fleet_samples import MISSING_ENTRY_POINT, answer, write_fleet
from prefect.client.schemas.objects import FlowRun

from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.endpoints import Endpoints
from prefect_server.processes import Service
from prefect_server.stack import PrefectStack

FLEET = "migrate-fleet/migrate-fleet"
STEPS = ("package", "build", "verify", "deploy", "smoke")


def table_rows(stack: PrefectStack, run: FlowRun) -> list[dict[str, Any]]:
    tables = [a for a in stack.artifacts(run) if a.type == "table"]
    assert len(tables) == 1, tables
    data = tables[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows


def step_task_runs(stack: PrefectStack, run: FlowRun) -> set[str]:
    """Names of the task runs of the fleet run and of its function runs (deployment runs)."""
    return {task_run.name for task_run in stack.task_runs([run, *stack.children(run)])}


def answers(stack: PrefectStack, url: str) -> str:
    cloud = Cloud.local(Endpoints.read(stack.localcloud_dir))
    return httpx.get(url, headers={"Authorization": f"Bearer {cloud.id_token(url)}"}, timeout=30).text


def test_fleet_run_started_like_the_ui_completes_with_every_step_and_one_row_per_function(
        stack: PrefectStack, tmp_path: Path) -> None:
    functions = ["fleet-a", "fleet-b"]
    manifest = write_fleet(tmp_path, functions)
    run = stack.run_deployment_like_the_ui(FLEET, {"manifest": str(manifest), "max_parallel": 2})

    assert run.state and run.state.is_completed(), stack.explain(run)
    names = step_task_runs(stack, run)
    assert {f"{step}[{fn}]" for fn in functions for step in STEPS} <= names, names
    rows = table_rows(stack, run)
    assert [row["function"] for row in rows] == functions
    assert all(row["status"] == "succeeded" and row["URL"] and row["digest"] for row in rows), rows
    assert all(row["build"] == "built" and row["seconds"] > 0 for row in rows), rows
    progress = [a for a in stack.artifacts(run) if a.type == "progress"]
    assert [a.data for a in progress] == [100.0]
    report = next(a for a in stack.artifacts(run) if a.type == "markdown")
    assert "2 of 2 succeeded" in str(report.data)


def test_nightly_deployment_carries_its_schedule_inactive(stack: PrefectStack) -> None:
    with stack.client() as client:
        nightly = client.read_deployment_by_name("migrate-fleet/migrate-fleet-nightly")
    schedules = [(getattr(s.schedule, "cron", None), s.active) for s in nightly.schedules]
    assert schedules == [("0 2 * * *", False)]
    assert nightly.parameters["manifest"] == "deployments/fleet.yaml"
    assert nightly.work_pool_name == "cf2run"


def test_migrate_function_deployment_shows_a_form_of_the_manifest_models(stack: PrefectStack) -> None:
    with stack.client() as client:
        schema = client.read_deployment_by_name("migrate-function/migrate-function").parameter_openapi_schema
    assert schema is not None
    spec = schema["definitions"]["FunctionSpec"]["properties"]
    assert schema["required"] == ["spec"]
    assert "python312" in spec["runtime"]["enum"]
    assert all(field.get("description") for field in spec.values()), spec


def test_one_broken_function_fails_the_fleet_and_the_others_are_deployed_and_serving(
        stack: PrefectStack, tmp_path: Path) -> None:
    manifest = write_fleet(tmp_path, ["fleet-a", "fleet-c"], broken=["fleet-broken"])
    run = stack.run_deployment_like_the_ui(FLEET, {"manifest": str(manifest)})

    assert run.state and run.state.is_failed(), stack.explain(run)
    assert run.state.message == "1 of 3 functions failed: fleet-broken (build)"
    rows = {row["function"]: row for row in table_rows(stack, run)}
    assert rows["fleet-broken"]["failed step"] == "build"
    assert rows["fleet-broken"]["message"].startswith("build of fleet-broken ended FAILURE")
    report = next(a for a in stack.artifacts(run) if a.type == "markdown")
    assert MISSING_ENTRY_POINT in str(report.data), "the report has each failure in full"
    failed = {t.name for t in stack.task_runs([run]) if t.state_name == "Failed"}
    assert failed == {"build[fleet-broken]"}, "the UI must show which function failed, at which step"
    for name in ("fleet-a", "fleet-c"):
        assert rows[name]["status"] == "succeeded", rows[name]
        assert answers(stack, rows[name]["URL"]) == answer(name)


def test_fanout_over_deployments_runs_each_function_on_the_workers_with_the_same_report(
        stack: PrefectStack, second_worker: Service, tmp_path: Path) -> None:
    functions = ["fleet-d", "fleet-e", "fleet-f"]  # new to this stack: each one tested, not unchanged
    manifest = write_fleet(tmp_path, functions)
    run = stack.run_deployment_like_the_ui(FLEET, {"manifest": str(manifest), "fanout": "deployments"})

    assert run.state and run.state.is_completed(), stack.explain(run)
    with stack.client() as client:
        single = client.read_deployment_by_name("migrate-function/migrate-function")
    children = stack.children(run)
    assert sorted(child.name for child in children) == [f"migrate[{fn}]" for fn in functions]
    assert all(child.deployment_id == single.id for child in children)
    assert all(child.infrastructure_pid and child.infrastructure_pid != run.infrastructure_pid
               for child in children), "each function must run in its own worker process"
    names = step_task_runs(stack, run)
    assert {f"{step}[{fn}]" for fn in functions for step in [*STEPS, "function"]} <= names, names
    remote = table_rows(stack, run)

    local = stack.run_deployment_like_the_ui(FLEET, {"manifest": str(manifest), "fanout": "local"})
    assert local.state and local.state.is_completed(), stack.explain(local)
    same = ("function", "status", "failed step", "URL", "digest", "revision")
    assert [{k: row[k] for k in same} for row in table_rows(stack, local)] == \
        [{k: row[k] for k in same} for row in remote]
    assert list(table_rows(stack, local)[0]) == list(remote[0])

