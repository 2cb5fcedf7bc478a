"""One function of a fleet: migrate it here or on any worker.

The quotas the fleet shares are taken by the steps themselves (tasks/build.py holds a slot of
the concurrent-builds limit while its build runs; the Cloud Run writes take the rate limit),
so several fleets and workers share them too.

- `fanout="local"` (`migrate_here`): the migrate-function steps run in this process, as task
  runs of the fleet's flow run (`build[NAME]`; a failed step's task run ends Failed). No flow
  run and no wrapper task run per function: each costs the Prefect server about what a step's
  task run costs, and orchestration is most of a fleet's CPU (bench/README.md).
- `fanout="deployments"` (`migrate_on_a_worker`, a `function[NAME]` task run that ends Failed
  when the function failed): a run of the migrate-function deployment (`run_deployment`), so
  any worker on the pool takes it; its `MigrationResult` is read back from Prefect's result
  storage (shared by the workers: the same `PREFECT_HOME` on one machine, otherwise the Cloud
  Storage bucket `cf2run setup --results-bucket` made the server's default: cf2run/result_storage.py).

Either way the function gives one `MigrationResult`, and its failure is that result, never
an exception: one function cannot stop or fail the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import State

from cf2run.errors import SpecError
from cf2run.forms import override
from cf2run.manifest.spec import FunctionSpec, Manifest, Target, load_manifest
from cf2run.results import MigrationResult
from flows.migrate_function import final_state, migrate

Fanout = Literal["local", "deployments"]
#: The single-function deployment in prefect.yaml ("flow name/deployment name").
MIGRATE_FUNCTION_DEPLOYMENT = "migrate-function/migrate-function"
#: How often a fleet asks about a function's deployment run (seconds).
POLL_S = 2.0


def load(manifest: Path | str | Manifest, target: Target | None = None,
         only: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> Manifest:
    """The manifest (a YAML path, relative to the working directory, or a Manifest), selected.

    The fields `target` was given replace the manifest's target's. SpecError names the file,
    function and field.
    """
    loaded = manifest if isinstance(manifest, Manifest) else load_manifest(Path(manifest))
    if target is not None:
        loaded = loaded.model_copy(update={"target": override(loaded.target, target)})
    try:
        return loaded.select(only, exclude)
    except SpecError as error:
        where = "the manifest" if isinstance(manifest, Manifest) else str(manifest)
        raise SpecError(f"{where}: {error.message}", hint=error.hint) from None


def migrate_here(spec: FunctionSpec, target: Target, recheck: bool = False) -> MigrationResult:
    """Migrate one function of a fleet in this process: every failure is a result."""
    try:
        return migrate(spec, target, recheck)
    except Exception as error:  # the orchestration itself broke (e.g. the API went away)
        return broken(spec, error)


@task(name="function", task_run_name="function[{spec.name}]", cache_policy=NO_CACHE)
def migrate_on_a_worker(spec: FunctionSpec, target: Target, recheck: bool = False
                        ) -> State[MigrationResult]:
    """Run the migrate-function deployment for `spec`, wait for it, and read its result. The
    task run ends Failed when the function failed (so the UI shows which), with the failed
    result as its data: every failure is a result."""
    try:
        result = result_of(_run_deployment(spec, target, recheck), spec.name)
    except Exception as error:  # the orchestration itself broke (API down, deployment missing)
        result = broken(spec, error)
    return final_state(result)


def broken(spec: FunctionSpec, error: Exception) -> MigrationResult:
    return MigrationResult(function=spec.name, status="failed", failed_step="flow",
                           message=f"{type(error).__name__}: {error}")


def _run_deployment(spec: FunctionSpec, target: Target, recheck: bool) -> FlowRun:
    parameters: dict[str, Any] = {"spec": portable(spec),
                                  "target": target.model_dump(mode="json", exclude_none=True)}
    if recheck:  # only when asked: a deployment made before the parameter existed takes the rest
        parameters["recheck"] = True
    return cast(FlowRun, run_deployment(
        MIGRATE_FUNCTION_DEPLOYMENT,
        parameters=parameters,
        idempotency_key=f"{flow_run.get_id()}-{spec.name}" if flow_run.get_id() else None,
        poll_interval=POLL_S, timeout=None))


def portable(spec: FunctionSpec) -> dict[str, Any]:
    """`spec` as deployment parameters; a source inside the working directory stays relative,
    so a worker in another checkout of the same repository finds it in its own checkout. Unset
    fields (None) are left out: the deployment's schema, the run form's, has no null for them."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    if spec.source.is_relative_to(Path.cwd()):
        data["source"] = str(spec.source.relative_to(Path.cwd()))
    return data


def result_of(run: FlowRun, function: str) -> MigrationResult:
    """The MigrationResult a migrate-function run returned (or what its state says, if unreadable)."""
    state = run.state
    if state is None:
        return MigrationResult(function=function, status="failed", failed_step="flow",
                               message=f"flow run {run.name} has no state")
    try:
        result = state.result(raise_on_failure=False)
    except Exception as error:
        result = error
    if isinstance(result, MigrationResult):
        return result
    status: Literal["succeeded", "failed"] = "succeeded" if state.is_completed() else "failed"
    return MigrationResult(
        function=function, status=status, failed_step=None if status == "succeeded" else "flow",
        message=f"{state.name}: {state.message or result} (flow run {run.name}; its result could not "
                "be read: give the workers shared result storage with `cf2run setup "
                "--results-bucket BUCKET`, see README)")
