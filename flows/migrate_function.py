"""migrate_function: one Cloud Function onto Cloud Run, step by step.

    check_secrets -> package_source -> submit_pack_build -> verify_image -> deploy_service
        -> smoke_test -> parity_check (when the manifest names the old function) -> promote

`check_secrets` (for a function that names secrets) asks Secret Manager whether every secret the
manifest names exists and is enabled, so a missing one stops the migration before anything is
uploaded, built or deployed.

A service that already serves gets the new revision as a candidate (no traffic, its own tag
URL); the smoke test calls that URL, parity compares its answers with the old function's, and
only when both pass does `promote` move the traffic (and, for a public service, add the
allUsers binding). When either fails, `discard` removes the tag and the previous revision keeps
serving, untouched (`parity.on_difference: warn` promotes a candidate that differs, and the
result says so).

A rerun that changes nothing (no new revision, no candidate: the revision already serves all
the traffic) has nothing to vet: when that revision passed its checks when it was promoted
(cf2run/vetting.py), smoke and parity send it no request and promote only converges the
invokers, like `terraform apply` with no changes; `recheck` tests it anyway.

Each step is a Prefect task run named after the step and the function (`build[orders-api]`),
retried only on transient errors and cached across flow runs on its content. `migrate` runs
the steps wherever it is called (this flow, or a fleet's thread: no flow run per function
there) and returns a `MigrationResult`; the flow publishes it (a summary, the
service URL and the build log as artifacts) and ends Failed, naming the step, when a step
failed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, TypeVar, cast

from google.cloud import run_v2
from prefect import Task, flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import opaque

from cf2run import events, vetting
from cf2run.errors import CandidateRejected, ImageVerificationError, ParityDiffers, SmokeTestFailed
from cf2run.fleet.lease_holders import RUN_HOOKS
from cf2run.fleet.quotas import build_lane, build_turn
from cf2run.fleet.slots import settle
from cf2run.forms import override
from cf2run.gcp import secret_check
from cf2run.gcp.api_hints import explain
from cf2run.gcp.cloud import Cloud
from cf2run.manifest.spec import FunctionSpec, Target, TargetChanges
from cf2run.results import Deployment, MigrationResult, ParityResult, SmokeResult
from tasks.build import submit_pack_build
from tasks.deploy import deploy_service, still_in_effect
from tasks.package import package_source
from tasks.parity import parity_check
from tasks.policy import retried
from tasks.promote import discard_candidate, promote_revision
from tasks.secrets import check_secrets
from tasks.smoke import smoke_test
from tasks.verify import verify_image

T = TypeVar("T")


def run_step(step: Task[..., T], *args: Any) -> State[T]:
    """`step(*args)` as a task run of the caller's flow run, its final state.

    The arguments go in `opaque`: Prefect takes each for what it is (the task run still records
    an argument another step returned as its input) without walking every field of every
    nested model three times per task run, which was a seventh of a fleet process' CPU."""
    return cast("State[T]", step(*map(opaque, args), return_state=True))


class _Steps:
    """Runs tasks in order, timing each and remembering which one runs and which came from cache."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.timings: dict[str, float] = {}
        self.cached: dict[str, bool] = {}

    def run(self, name: str, step: Task[..., T], *args: Any, refresh: bool = False) -> T:
        self.current = name
        started = time.monotonic()
        try:
            if refresh:
                step = step.with_options(refresh_cache=True)
            state = run_step(step, *args)
            self.cached[name] = state.name == "Cached"
            return state.result()
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)


@flow(name="migrate-function", flow_run_name="migrate[{spec.name}]", log_prints=False,
      persist_result=True, **RUN_HOOKS)
def migrate_function(spec: FunctionSpec, target: TargetChanges = None,
                     recheck: bool = False) -> State[MigrationResult]:
    """Migrate one function: package, pack build, verify, deploy, smoke test, parity, promote.

    Args:
        spec: The function, as in a manifest (its `source` is a path in the worker's checkout).
        target: Where to migrate to; the fields set replace the embedded local cloud's defaults.
        recheck: Smoke-test (and compare with the old function) even when nothing changed; off, an
            unchanged function whose revision passed when it was promoted sends it no request.
    """
    return migrate_and_publish(spec, override(Target(), target), recheck)


def migrate_and_publish(spec: FunctionSpec, target: Target, recheck: bool = False
                        ) -> State[MigrationResult]:
    """The migration of one function in this flow run, its artifacts, and its final state."""
    result = migrate(spec, target, recheck)
    settle()  # its build slot is back on the server before the flow run's client closes
    create_markdown_artifact(markdown=summary(result, events.missing_trigger_note(spec)),
                             key=_key(spec, "summary"), description=f"Migration of {spec.name}")
    _publish_link(spec, "build-log", result.build_log_url, "Cloud Build log",
                  f"The Cloud Build log of {spec.name}'s image")
    if result.status == "succeeded":
        _publish_link(spec, "url", result.url, "Cloud Run service URL",
                      f"Where {spec.name} serves now (revision {result.revision})")
    return final_state(result)


def final_state(result: MigrationResult) -> State[MigrationResult]:
    """Failed, naming the step, when the migration failed; Completed otherwise. The result is
    the state's data either way (a flow run's, or a fleet's `function[NAME]` task run's)."""
    if result.status == "failed":
        return Failed(message=f"{result.function}: {result.failed_step} failed: {result.message}",
                      data=result)
    return Completed(message=f"{result.function} serves at {result.url}", data=result)


def migrate(spec: FunctionSpec, target: Target, recheck: bool = False) -> MigrationResult:
    """The steps of one migration, as task runs of whatever flow or task calls this (the
    migrate-function flow, or a fleet's flow run, in one of its threads); a failure is the result's
    `failed_step` and `message`, never an exception. `recheck`: smoke-test (and compare) a
    revision that serves unchanged too."""
    with ExitStack() as lane:
        lane.enter_context(build_lane())  # packaged just in time for a build slot
        return _migrate(spec, target, leave_lane=lane.close, recheck=recheck)


def _migrate(spec: FunctionSpec, target: Target, leave_lane: Callable[[], None],
             recheck: bool) -> MigrationResult:
    logger = get_run_logger()
    steps = _Steps()
    result = MigrationResult(function=spec.name, status="failed",
                             eventarc=events.eventarc_command(spec, target))
    note = events.missing_trigger_note(spec)
    if note:
        logger.warning(note)
    try:
        steps.current = "credentials"  # checked before anything is changed: no ID token, no migration
        retried(Cloud.for_target(target).check_identity)
        secret_warnings = steps.run("secrets", check_secrets, spec, target) \
            if secret_check.uses(spec, target) else []  # no task run for a function without secrets
        with build_turn():
            archive = steps.run("package", package_source, spec, target)
        result.warnings = secret_warnings + archive.warnings
        built = steps.run("build", submit_pack_build, spec, target, archive)
        leave_lane()
        try:
            image = steps.run("verify", verify_image, spec, target, built)
        except ImageVerificationError as error:
            if not steps.cached["build"]:
                raise
            # A cached build result whose image left the registry (deleted, tag moved): the
            # cache was wrong, not the build. Build again, once, so a rerun converges.
            logger.warning("cached build of %s is stale (%s); building again", spec.name, error)
            built = steps.run("build", submit_pack_build, spec, target, archive, refresh=True)
            image = steps.run("verify", verify_image, spec, target, built)
        result.digest, result.build_cached = built.digest, built.cached or steps.cached["build"]
        result.build_log_url, result.runtime_note = built.log_url, image.runtime_note
        deployment = steps.run("deploy", deploy_service, spec, target, image, archive.sha256)
        current = None
        if steps.cached["deploy"] or not deployment.changed:
            current = retried(lambda: still_in_effect(Cloud.for_target(target), deployment))
        if steps.cached["deploy"] and current is None:
            # A cached candidate was promoted or discarded since; a cached deployment whose
            # revision no longer has the traffic (A, B, then A again) would skip A's smoke test.
            deployment = steps.run("deploy", deploy_service, spec, target, image, archive.sha256,
                                   refresh=True)
        result.url, result.revision = deployment.url, deployment.revision
        vetted = _vetted(spec, deployment, current) if current is not None and not recheck else None
        if vetted is not None:  # nothing to vet: no candidate, and this revision passed when promoted
            promoted = steps.run("promote", promote_revision, spec, target, deployment, True)
            result.serving, result.status, result.unchanged = promoted.serving, "succeeded", True
            result.message = (f"unchanged, not tested again: {deployment.revision} serves all the "
                              f"traffic (when promoted: {vetted})")
            if promoted.changed:  # the manifest's ingress, or a candidate tag left behind
                result.message += "; promote updated the service's ingress or tags"
            return _finish(result, steps)
        try:
            smoke = _passed_or_discarded(steps, "smoke", smoke_test, spec, target, deployment, result)
        except SmokeTestFailed as error:
            if not steps.cached["deploy"]:
                raise
            # The service may have changed since the cached deploy (deleted, redeployed by
            # hand): deploy again, for real, before calling the function broken.
            logger.warning("smoke test after a cached deploy of %s failed (%s); deploying again",
                           spec.name, error)
            deployment = steps.run("deploy", deploy_service, spec, target, image, archive.sha256,
                                   refresh=True)
            result.url, result.revision = deployment.url, deployment.revision
            smoke = _passed_or_discarded(steps, "smoke", smoke_test, spec, target, deployment, result)
        parity = _parity(steps, spec, target, deployment, result, smoke)
        promoted = steps.run("promote", promote_revision, spec, target, deployment)
        result.serving = promoted.serving
        result.status = "succeeded"
        result.message = ("smoke not run: the service's ingress keeps this worker out "
                          "(accepted by smoke.accept_unreachable)" if smoke.unreachable
                          else f"smoke {smoke.status} in {smoke.latency_s:.2f}s")
        if parity is not None:
            result.message += f"; parity {parity.verdict}" + (
                f": {'; '.join(parity.diffs)}" if parity.warned else "")
        elif spec.parity.enabled:
            result.message += "; parity not checked (the candidate is unreachable from this worker)"
        if promoted.uid:  # what lets an unchanged rerun test nothing (cf2run/vetting.py)
            vetting.record(vetting.vetting_key(spec, deployment.service, promoted.uid, deployment.revision),
                           deployment.revision, result.message)
        if promoted.changed:
            result.message += f"; traffic moved from {', '.join(promoted.previous)}"
    except Exception as error:
        result.failed_step, result.message = steps.current, explain(error, steps.current)
        logger.error("%s failed at %s: %s", spec.name, steps.current, error)
    return _finish(result, steps)


def _finish(result: MigrationResult, steps: _Steps) -> MigrationResult:
    result.timings = steps.timings
    return result


def _vetted(spec: FunctionSpec, deployment: Deployment, current: run_v2.Service) -> str | None:
    """What the checks found when the revision serving all of `current`'s traffic was promoted,
    if it was (cf2run/vetting.py); None: it is tested now."""
    if not current.uid:
        return None
    return vetting.recorded(vetting.vetting_key(spec, deployment.service, current.uid, deployment.revision))


def _passed_or_discarded(steps: _Steps, name: str, check: Task[..., T], spec: FunctionSpec,
                         target: Target, deployment: Deployment, result: MigrationResult) -> T:
    """The check before promotion (smoke, parity); when it rejects a candidate, the candidate's tag
    is removed and the error says what keeps serving (a new service: that it stays private)."""
    try:
        return steps.run(name, check, spec, target, deployment)
    except CandidateRejected as error:
        if deployment.created and spec.allow_unauthenticated:
            raise error.with_outcome("; the new service stays private (not made public)") from error
        if not deployment.candidate_url:
            raise
        try:
            kept = steps.run("discard", discard_candidate, spec, target, deployment)
            result.serving = kept.serving
            outcome = (f"{', '.join(kept.serving)} keep(s) all the traffic at {kept.url}; tag "
                       f"{deployment.tag!r} removed")
        except Exception as discard_error:
            outcome = (f"the traffic never moved to it, but removing its tag {deployment.tag!r} "
                       f"failed: {discard_error}")
        steps.current = name
        raise error.with_outcome(f". Candidate {deployment.revision} was not promoted: {outcome}") \
            from error


def _parity(steps: _Steps, spec: FunctionSpec, target: Target, deployment: Deployment,
            result: MigrationResult, smoke: SmokeResult) -> ParityResult | None:
    """The parity check, when the manifest names the old function and the smoke test reached the
    candidate; its verdict goes into `result` (a difference that fails: raised, candidate discarded)."""
    if not spec.parity.enabled or smoke.unreachable:
        return None
    try:
        checked = _passed_or_discarded(steps, "parity", parity_check, spec, target, deployment, result)
    except ParityDiffers as error:
        if error.result is not None:
            result.parity, result.parity_diffs = error.result.verdict, error.result.diffs
        raise
    result.parity, result.parity_diffs = checked.verdict, checked.diffs
    return checked


def summary(result: MigrationResult, note: str | None = None) -> str:
    """A short markdown report of one migration (`note`: what the manifest could add)."""
    lines = [f"## {result.function}: {result.status}", ""]
    if result.failed_step:
        lines += [f"**Failed step:** `{result.failed_step}`", "", f"> {result.message}", ""]
    lines += ["| what | value |", "|---|---|",
              f"| URL | {result.url or '-'} |",
              f"| Image digest | `{result.digest or '-'}` |",
              f"| Revision | {result.revision or '-'} |",
              f"| Serving | {', '.join(result.serving) or '-'} |",
              f"| Build | {result.build_note} |"]
    if result.parity:
        lines.append(f"| Parity | {result.parity} |")
    lines += [f"| {step} | {seconds:.2f}s |" for step, seconds in result.timings.items()]
    if result.parity_diffs:
        lines += ["", "**Parity differences** (old function vs new revision):", ""]
        lines += [f"- {diff}" for diff in result.parity_diffs]
    if result.eventarc:
        lines += ["", "**Eventarc trigger to create** (once you switch the events over from the "
                      "Cloud Function):", "", "```sh", result.eventarc, "```"]
    if note:
        lines += ["", f"> {note}"]
    if result.warnings:
        lines += ["", "**Warnings:**", ""] + [f"- {warning}" for warning in result.warnings]
    return "\n".join(lines) + "\n"


def _publish_link(spec: FunctionSpec, what: str, link: str | None, text: str, description: str) -> None:
    if link:
        create_link_artifact(link=link, link_text=text, key=_key(spec, what), description=description)


def _key(spec: FunctionSpec, what: str) -> str:
    """Artifact keys may hold only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]", "-", f"{spec.name.lower()}-{what}")
