"""Running the migrate-function flow in a test and reading back what Prefect recorded."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun

from cf2run.results import MigrationResult
from cf2run.spec import FunctionSpec, Target
from flows.migrate_function import migrate_function


def migrate(spec: FunctionSpec, target: Target) -> tuple[MigrationResult, dict[str, int]]:
    """Run the flow; its result and each task run's run count by task run name."""
    result, runs = migrate_with_task_runs(spec, target)
    return result, {run.name: run.run_count for run in runs}


def migrate_with_task_runs(spec: FunctionSpec, target: Target) -> tuple[MigrationResult, list[TaskRun]]:
    """Run the flow; its result and the task runs Prefect recorded for it."""
    state = migrate_function(spec, target, return_state=True)
    result = state.result(raise_on_failure=False)
    assert isinstance(result, MigrationResult), result
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
    return result, runs
