"""migrate_fleet: every function of a manifest onto Cloud Run, many at a time.

    manifest -> [function: package, build, verify, deploy, smoke, promote] x N -> report

At most `max_parallel` functions at a time, and never more builds or Cloud Run writes than
the global concurrency limits standing for the quotas allow (cf2run/fleet/quotas.py), however
many fleets and workers share them. Each function's steps are task runs named by step and
function (`build[orders-api]`). One function's failure never stops the others: it is a row
of the report that says which step failed and why. A progress artifact moves as functions
finish; at the end a table artifact (one row per function) and a markdown report with totals.
The run ends Completed when every function passed, Failed (with the count) otherwise.
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any

from prefect import Task, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State
from pydantic import Field

from cf2run.fleet.fanout import Fanout, load, migrate_here, migrate_on_a_worker
from cf2run.fleet.lease_holders import RUN_HOOKS
from cf2run.fleet.plan import FunctionPlan, plan_function
from cf2run.fleet.progress import FleetProgress
from cf2run.fleet.quotas import ensure_limits
from cf2run.fleet.report import FleetReport
from cf2run.fleet.slots import settle
from cf2run.manifest.spec import FunctionSpec, Manifest, Target, TargetChanges
from cf2run.result_storage import reach_results
from cf2run.results import MigrationResult
from flows.migrate_function import run_step

#: Artifact keys of a run not started from a deployment (the CLI).
NO_DEPLOYMENT = "cli-fleet"
#: The progress artifact moves at most this often (seconds), and when the last function is done.
PROGRESS_EVERY_S = 2.0


def _run_name() -> str:
    manifest = flow_run.parameters.get("manifest")
    name = Path(manifest).name if isinstance(manifest, str | Path) else "manifest"
    return f"fleet[{name}]" + ("-dry-run" if flow_run.parameters.get("dry_run") else "")


@flow(name="migrate-fleet", flow_run_name=_run_name, log_prints=False, **RUN_HOOKS)
def migrate_fleet(
    manifest: Path | Manifest,
    target: TargetChanges = None,
    max_parallel: Annotated[int, Field(json_schema_extra={"allOf": [{"minimum": 1, "maximum": 500}]})]
    = 20,
    dry_run: bool = False,
    fanout: Fanout = "local",
    only: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    recheck: bool = False,
) -> State[FleetReport]:
    """Migrate a fleet of Cloud Functions to Cloud Run.

    Args:
        manifest: Path of a YAML manifest in the worker's checkout (e.g. deployments/fleet.yaml),
            or the manifest itself.
        target: Fields that replace the manifest target's (empty = the manifest's target).
        max_parallel: Functions migrated at the same time, 1 to 500 (builds are further limited
            by the cf2run-cloud-build concurrency limit, Cloud Run writes by cf2run-cloud-run-writes).
        dry_run: Only report what would happen (build needed or cached, deploy needed or
            unchanged); change no cloud resource. Planned in this flow run, whatever the fanout.
        fanout: 'local' migrates in this flow run's process; 'deployments' runs the
            migrate-function deployment per function, so every worker on the pool shares the fleet.
        only: Migrate only these functions (names).
        exclude: Skip these functions (names).
        recheck: Smoke-test (and compare with the old function) even the functions that did not
            change; off, an unchanged function whose revision passed when it was promoted is sent
            no request.
    """
    started = time.monotonic()
    fleet = load(manifest, target, only, exclude)
    logger = get_run_logger()
    if not dry_run:
        created = ensure_limits()
        if created:
            logger.info("created the quota limits %s with their defaults (cf2run setup)", created)
        if fanout == "deployments":  # each function's result is read back from the result storage
            reach_results(fleet.target)
    progress = FleetProgress(len(fleet.functions), PROGRESS_EVERY_S)
    outcomes = _fan_out(fleet, max_parallel, _one_function(fleet.target, dry_run, fanout, recheck),
                        progress.update)
    settle()  # the build slots are back on the server before the flow run's client closes
    report = FleetReport(dry_run=dry_run, fanout=fanout, seconds=round(time.monotonic() - started, 3))
    if dry_run:
        report.plans = [_as_plan(spec, outcome)
                        for spec, outcome in zip(fleet.functions, outcomes, strict=True)]
    else:
        report.results = [_as_result(spec, outcome)
                          for spec, outcome in zip(fleet.functions, outcomes, strict=True)]
    _publish(report, manifest)  # while the progress artifact shows the last function done
    progress.close()
    logger.info(report.summary)
    if report.failed:
        return Failed(message=report.summary, data=report)
    return Completed(message=report.summary, data=report)


def _fan_out(fleet: Manifest, max_parallel: int, one: Callable[[FunctionSpec], Any],
             progress: Callable[[int], None]) -> list[Any]:
    """Each function's outcome (or exception), in manifest order; `progress(done)` meanwhile.

    At most `max_parallel` threads, each with a copy of this flow run's context, so the task
    runs a function's steps make are this flow run's (as Prefect's ThreadPoolTaskRunner does).
    """
    specs = fleet.functions
    with ThreadPoolExecutor(max_workers=min(max_parallel, len(specs)), thread_name_prefix="fleet") as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, spec) for spec in specs]
        for done, _ in enumerate(as_completed(futures), start=1):
            progress(done)
    return [future.exception() or future.result() for future in futures]


def _one_function(target: Target, dry_run: bool, fanout: Fanout, recheck: bool
                  ) -> Callable[[FunctionSpec], Any]:
    """What a fleet does with each function: its plan, its migration here, or on a worker."""
    if dry_run:
        return _task_run_of(plan_function, target)
    if fanout == "local":
        return lambda spec: migrate_here(spec, target, recheck)
    return _task_run_of(migrate_on_a_worker, target, recheck)


def _task_run_of(step: Task[..., Any], *args: Any) -> Callable[[FunctionSpec], Any]:
    """`step(spec, *args)` as a task run of the fleet's flow run: its result, or its exception."""
    return lambda spec: run_step(step, spec, *args).result(raise_on_failure=False)


def _as_result(spec: FunctionSpec, outcome: Any) -> MigrationResult:
    if isinstance(outcome, MigrationResult):
        return outcome
    return MigrationResult(function=spec.name, status="failed", failed_step="flow", message=str(outcome))


def _as_plan(spec: FunctionSpec, outcome: Any) -> FunctionPlan:
    return outcome if isinstance(outcome, FunctionPlan) else FunctionPlan.failed(spec.name, outcome)


def artifact_key(manifest: Path | Manifest, dry_run: bool, what: str) -> str:
    """`DEPLOYMENT-MANIFEST[-dry-run]-WHAT` (`migrate-fleet-fleet-table`; `cli-fleet-...` from the
    CLI): the latest artifact of a key is the last run of that deployment over that manifest, a
    dry run never hiding a migration (keys hold lowercase letters, digits and dashes)."""
    source = Path(manifest).stem if isinstance(manifest, str | Path) else "manifest"
    key = f"{deployment.name or NO_DEPLOYMENT}-{source}{'-dry-run' if dry_run else ''}-{what}"
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key.lower()))


def _publish(report: FleetReport, manifest: Path | Manifest) -> None:
    """The table and the report artifacts, both at once (the server is still busy recording the
    fleet's task runs: each call waits there)."""
    what = "dry run" if report.dry_run else "migration"
    calls = [
        functools.partial(create_table_artifact, table=report.rows(),
                          key=artifact_key(manifest, report.dry_run, "table"),
                          description=f"Fleet {what}: one row per function (each failure in full "
                                      f"in {artifact_key(manifest, report.dry_run, 'report')})"),
        functools.partial(create_markdown_artifact, markdown=report.markdown(),
                          key=artifact_key(manifest, report.dry_run, "report"),
                          description=f"Fleet {what}: {report.summary}"),
    ]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="fleet-report") as pool:
        for created in [pool.submit(contextvars.copy_context().run, call) for call in calls]:
            created.result()
