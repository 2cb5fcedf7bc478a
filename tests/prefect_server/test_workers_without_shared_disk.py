"""A fleet fanned out over workers that share no disk but the checkout they run from.

Two `prefect worker start` processes, each with its own PREFECT_HOME and working directory, and
results on the local cloud's Cloud Storage (`cf2run setup --results-bucket`: a GcsBucket block,
the server's default result storage). What a user sees: the fleet completes with every function's
result read back by the fleet run (URL, digest and revision in its table), both workers took
function runs, nothing was written under either worker's PREFECT_HOME, and a rerun is fully
cached, whichever worker takes which function: every build and deploy task run is Cached (their
cache records are in the bucket), no build is started and no revision created.
"""

from __future__ import annotations

from pathlib import Path

from google.cloud import run_v2
from prefect.client.schemas.objects import FlowRun

from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.endpoints import Endpoints
from cf2run.manifest.spec import Target
from prefect_server.conftest import RESULTS_BUCKET
from prefect_server.stack import PrefectStack
from prefect_server.test_fleet_on_server import FLEET, answers, table_rows

#: The fleet, as a path in the checkout: the run's worker reads it from its own.
MANIFEST = "tests/prefect_server/fleet_in_checkout/fleet.yaml"
FUNCTIONS = ["spread-a", "spread-b", "spread-c"]
PARAMETERS = {"manifest": MANIFEST, "fanout": "deployments", "max_parallel": len(FUNCTIONS)}
#: The label a worker gives the flow runs it runs (prefect/workers/base.py `_give_worker_labels_to_flow_run`).
WORKER_LABEL = "prefect.worker.name"


def cloud_of(stack: PrefectStack) -> Cloud:
    return Cloud.local(Endpoints.read(stack.localcloud_dir))


def workers_that_ran(runs: list[FlowRun]) -> dict[str, str]:
    """Which worker ran each flow run: the label the worker that won it gives it (the UI shows it)."""
    return {run.name: str(run.labels.get(WORKER_LABEL)) for run in runs}


def builds_and_revisions(stack: PrefectStack) -> tuple[int, dict[str, list[str]]]:
    """How many builds the project has had, and each service's revisions."""
    cloud, target = cloud_of(stack), Target()
    builds = len(list(cloud.builds.list_builds(project_id=target.project)))
    revisions = {}
    for name in FUNCTIONS:
        service = f"projects/{target.project}/locations/{target.region}/services/{name}"
        found = cloud.revisions.list_revisions(request=run_v2.ListRevisionsRequest(parent=service))
        revisions[name] = sorted(revision.name for revision in found)
    return builds, revisions


def default_result_storage(stack: PrefectStack) -> tuple[str, str]:
    """The server's default result storage: its block (TYPE/NAME) and bucket."""
    with stack.client() as client:
        block_id = client.read_server_default_result_storage().default_result_storage_block_id
        assert block_id is not None, "cf2run setup --results-bucket sets the server's default"
        block = client.read_block_document(block_id)
    return f"{block.block_type.slug if block.block_type else ''}/{block.name}", block.data["bucket"]


def files_under(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()] if directory.exists() else []


def test_a_fleet_spread_over_workers_without_a_shared_disk_reads_every_result_and_reruns_cached(
        stack_without_shared_disk: PrefectStack) -> None:
    stack = stack_without_shared_disk
    assert default_result_storage(stack) == ("gcs-bucket/cf2run-results", RESULTS_BUCKET)
    run = stack.run_deployment_like_the_ui(FLEET, PARAMETERS)

    assert run.state and run.state.is_completed(), stack.explain(run)
    rows = {row["function"]: row for row in table_rows(stack, run)}
    assert sorted(rows) == FUNCTIONS
    for name, row in rows.items():  # only a result read back from the bucket carries these
        assert row["status"] == "succeeded" and row["digest"] and row["revision"], row
        assert row["build"].startswith("built"), row
        assert answers(stack, row["URL"]) == f"hello from {name}"
    children = stack.children(run)
    assert sorted(child.name for child in children) == [f"migrate[{fn}]" for fn in FUNCTIONS]
    took = workers_that_ran(children)
    assert set(took.values()) == {"w1", "w2"}, f"both workers must take function runs: {took}"
    for worker in ("w1", "w2"):
        home = stack.worker_dir(worker) / "prefect-home"
        assert home.is_dir(), f"{worker} must run with its own PREFECT_HOME"
        assert files_under(home / "storage") == [], f"{worker} persisted results on its own disk"
    before = builds_and_revisions(stack)

    again = stack.run_deployment_like_the_ui(FLEET, PARAMETERS)

    assert again.state and again.state.is_completed(), stack.explain(again)
    rerun = {row["function"]: row for row in table_rows(stack, again)}
    for name, row in rerun.items():
        assert row["build"].startswith("cached"), row
        assert (row["digest"], row["revision"]) == (rows[name]["digest"], rows[name]["revision"]), row
    reruns = stack.children(again)
    steps = {task.name: task.state_name for task in stack.task_runs(reruns)}
    expected = {f"{step}[{fn}]": "Cached" for fn in FUNCTIONS for step in ("build", "deploy")}
    assert {name: steps.get(name) for name in expected} == expected, \
        f"cache keys must resolve on any worker: {steps}; taken by {workers_that_ran(reruns)}"
    assert builds_and_revisions(stack) == before, "a cached rerun starts no build and creates no revision"

