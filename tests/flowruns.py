"""Running the migrate-function flow in a test and reading back what Prefect recorded."""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun

from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import MigrationResult
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
    return result, recorded_task_runs(flow_run_id, steps=len(result.timings))


def recorded_task_runs(flow_run_id: UUID, steps: int) -> list[TaskRun]:
    """The flow run's task runs, at least `steps` of them, as the server records them (`settled`)."""
    with get_client(sync_client=True) as client:
        return settled(lambda: client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id]))), at_least=steps)


def settled(read: Callable[[], list[TaskRun]], at_least: int = 0, timeout_s: float = 30.0) -> list[TaskRun]:
    """`read()` again until it gives at least `at_least` task runs, each in a final state (or the
    timeout passed). The server records task runs from the events the flow sent, a moment after
    the flow returned: read at once, a retried step could still show its first run only."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = read()
        if len(runs) >= at_least and all(run.state and run.state.is_final() for run in runs):
            return runs
        if time.monotonic() > deadline:
            return runs
        time.sleep(0.2)
