"""deploy_service: create or update the Cloud Run v2 service so it serves the verified image.

- `service_for` (pure) turns the spec into the `run_v2.Service` to send: the image by digest,
  the gen1 settings as fields (REFERENCE §4, §5), labels marking it as cf2run's, and a
  revision named from a hash of everything else, so the same digest and settings always give
  the same revision name and any change gives a new one.
- `deploy` (plain, takes the clients) reads the service; a missing one is created with the
  revision serving all its traffic (nobody used it yet; it is not made public before its smoke
  test passes); one that already serves our revision is left untouched (no write at all); on
  one that serves another revision the new revision is a *candidate*: it gets 0% of the
  traffic under a tag with its own URL, and the traffic in effect stays where it is until the
  promote step (tasks/promote.py) moves it. Updates carry the etag they were read with. It
  waits for the operation and the Ready condition and reports Google's reason when the
  revision fails (the previous revisions keep serving: Cloud Run routes to Ready revisions).
- Ingress is the service's, not a revision's (Cloud Run applies it to every revision and tag
  URL at once): a candidate is deployed under the service's *current* ingress, and the
  manifest's takes effect when promote moves the traffic (a discarded candidate changes
  nothing). It is left out of the revision name, so an ingress-only change makes no revision:
  the service already serves it, and promote changes the ingress alone.
- `deploy_service` is the Prefect task, cached across flow runs on digest + settings + target.
- Who may invoke the service (``allUsers`` for ``allow_unauthenticated``, the spec's
  ``invokers``) is granted by the promote step, after the smoke test (tasks/invokers.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

from google.api_core import exceptions as api_exceptions
from google.api_core import operation as lro
from google.api_core.future import polling
from google.cloud import run_v2
from prefect import get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

from cf2run.errors import DeployFailed, TransientError
from cf2run.fleet.quotas import cloud_run_write
from cf2run.gcp import api_hints
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import ImageRef
from cf2run.gcp.traffic import REVISION, candidate_tag, serving, short_name, tag_url, with_candidate
from cf2run.manifest import mapping
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import Deployment, VerifiedImage
from tasks.policy import RETRIES, is_transient

Log: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"

#: Bump when `service_for` changes what it sends, so existing services get a new revision.
REVISION_SCHEME = 1
REVISION_SUFFIX_LEN = 10
MAX_REVISION_NAME = 63
MANAGED_BY_LABEL = ("managed-by", "cf2run")
SOURCE_LABEL = "cf2run-source"
SOURCE_LABEL_LEN = 12
CLIENT = "cf2run"
#: How many times a read-modify-write is tried again when its etag went stale meanwhile.
ETAG_ATTEMPTS = 3
#: How long to wait for Cloud Run to bring a revision to Ready (how often to ask: cf2run/gcp/cloud.py).
DEPLOY_TIMEOUT_S = 900.0

SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST

log: logging.Logger = logging.getLogger(__name__)
T = TypeVar("T")


# -- the service we want (pure) ------------------------------------------------------------------


def parent_of(target: Target) -> str:
    return f"projects/{target.project}/locations/{target.region}"


def service_path(target: Target, name: str) -> str:
    """``projects/P/locations/R/services/NAME``."""
    return f"{parent_of(target)}/services/{name}"


def service_labels(spec: FunctionSpec, source_sha256: str | None = None) -> dict[str, str]:
    """The spec's labels plus ``managed-by: cf2run`` and ``cf2run-source: <short source sha>``."""
    labels = {**spec.labels, MANAGED_BY_LABEL[0]: MANAGED_BY_LABEL[1]}
    if source_sha256:
        labels[SOURCE_LABEL] = source_sha256.removeprefix("sha256:").lower()[:SOURCE_LABEL_LEN]
    return labels


def service_for(spec: FunctionSpec, target: Target, image: VerifiedImage,
                source_sha256: str | None = None) -> run_v2.Service:
    """The Service to create or update (without `name`: Create takes it as `service_id`); the gen1
    settings are mapped by cf2run.manifest.mapping.

    Cloud Run needs `cpu_idle` set explicitly once resources are given; True keeps a
    function's billing model (CPU only during requests), and below 1 vCPU it is required.
    """
    labels = service_labels(spec, source_sha256)
    container = run_v2.Container(
        image=f"{ImageRef.parse(image.image).name}@{image.digest}",
        env=mapping.container_env(spec, target),
        resources=run_v2.ResourceRequirements(
            limits={"cpu": spec.effective_cpu, "memory": spec.memory}, cpu_idle=True),
        volume_mounts=mapping.volume_mounts(spec),
    )
    scaling = run_v2.RevisionScaling(min_instance_count=spec.min_instances,
                                     max_instance_count=mapping.max_instances(spec))
    template = run_v2.RevisionTemplate(
        labels=labels,
        containers=[container],
        max_instance_request_concurrency=spec.concurrency,
        timeout=timedelta(seconds=spec.timeout_s),
        scaling=scaling,
        service_account=mapping.service_account(spec, target),
        volumes=mapping.volumes(spec, target),
        vpc_access=mapping.vpc_access(spec, target),
    )
    service = run_v2.Service(labels=labels, client=CLIENT, ingress=mapping.INGRESS[spec.ingress],
                             template=template)
    revision = revision_name(spec.name, service)
    service.template.revision = revision
    service.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=100)]
    return service


def revision_name(name: str, service: run_v2.Service) -> str:
    """``NAME-<hash>``: the hash of every field of `service` that is set (revision and traffic aside).

    Only set fields count, so a newer google-cloud-run with new proto fields gives the same names.
    Ingress is not a revision's setting: it counts as 'all' whatever it is (names made before
    ingress was left out stay the same for the services that have 'all').
    The result is a valid revision id: service-name prefix, lowercase hex, at most 63 characters.
    """
    settings = run_v2.Service(service)
    settings.template.revision = ""
    settings.traffic = []
    settings.ingress = run_v2.IngressTraffic(mapping.INGRESS["all"])
    text = run_v2.Service.to_json(settings, sort_keys=True, indent=None, use_integers_for_enums=False,
                                  always_print_fields_with_no_presence=False)
    digest = str(hash_objects(REVISION_SCHEME, json.loads(text), raise_on_failure=True))
    length = min(REVISION_SUFFIX_LEN, MAX_REVISION_NAME - len(name) - 1)
    return f"{name}-{digest[:length]}"


def still_in_effect(cloud: Cloud, deployment: Deployment) -> run_v2.Service | None:
    """The service, read now, when a deployment (read back from the cache, or one that changed
    nothing) still says what it does: no candidate waiting (a cached one was promoted or
    discarded since) and all the traffic on its revision; None otherwise. A, then B, then A
    again within the cache's life: A's cached deployment says A serves, while B does; deploying
    again makes A the candidate, smoke-tested before promote."""
    if deployment.candidate_url:
        return None
    current = get_service(cloud.services, deployment.service)
    return current if current is not None and serving(current) == [deployment.revision] else None


def kept_from(existing: run_v2.Service, wanted: run_v2.Service) -> run_v2.Service:
    """The Service to send to update `existing` to `wanted`: what a deploy owns (the template,
    the traffic, client and cf2run's own labels) from `wanted`, every other field as the service
    has it (description, custom audiences, invoker check, Binary Authorization, service-level
    scaling, others' labels, annotations: cf2run's promotion history and others'; and the
    ingress, which only promote changes).

    An UpdateService without an update mask replaces the whole service: a field not sent is
    cleared (AIP-134; the Cloud Run v2 UpdateServiceRequest's mask is optional).
    """
    update = run_v2.Service(existing)
    update.template = wanted.template
    update.traffic = wanted.traffic
    update.client = wanted.client
    update.labels = {**existing.labels, **wanted.labels}
    return update


def serves(existing: run_v2.Service, wanted: run_v2.Service) -> bool:
    """Whether `existing` runs `wanted`'s revision, Ready, with all traffic and its labels (the
    ingress is promote's to change: see the module docstring)."""
    revision = wanted.template.revision
    latest_ready = short_name(existing.latest_ready_revision)
    on_revision = sum(
        status.percent for status in existing.traffic_statuses
        if short_name(status.revision or (latest_ready if status.type_ == LATEST else "")) == revision)
    return (existing.template.revision == revision
            and existing.terminal_condition.state == SUCCEEDED
            and on_revision == 100
            and all(existing.labels.get(key) == value for key, value in wanted.labels.items()))


# -- talking to Cloud Run ------------------------------------------------------------------------


@contextmanager
def api_step(what: str, hint: str | None = None, step: str = "deploy_service") -> Iterator[None]:
    """Permanent API errors become DeployFailed naming the step; transient ones pass (Prefect retries)."""
    try:
        yield
    except api_exceptions.GoogleAPICallError as error:
        if is_transient(error):
            raise
        raise DeployFailed(f"{step}: {what} failed: {error.message or error}",
                           hint=hint or _hint_for(error)) from error


def _hint_for(error: api_exceptions.GoogleAPICallError) -> str:
    if isinstance(error, api_exceptions.PermissionDenied | api_exceptions.Unauthenticated):
        return api_hints.hint_for(error, api_hints.RUN) or ""
    if isinstance(error, api_exceptions.InvalidArgument) and "maxScale may not exceed" in str(error):
        return (f"the project's Cloud Run quota in this region allows fewer instances than the "
                f"function's max_instances (unset = gen1's {mapping.GEN1_DEFAULT_MAX_INSTANCES}) for "
                "its cpu and memory: set max_instances in the manifest to at most the number Google "
                "names, or request a quota increase (https://cloud.google.com/run/quotas)")
    if isinstance(error, api_exceptions.InvalidArgument | api_exceptions.FailedPrecondition):
        return "fix the function's settings in the manifest (the message names the field)"
    return "check the Cloud Run service in the console, then run the migration again"


def get_service(services: run_v2.ServicesClient, name: str, step: str = "deploy_service"
                ) -> run_v2.Service | None:
    """The service, or None when there is none."""
    with api_step(f"GetService {name}", step=step):
        try:
            return services.get_service(name=name)
        except api_exceptions.NotFound:
            return None


def again_on_aborted(once: Callable[[], T], what: str, logger: Log) -> T:
    """`once()`, a read-modify-write that sends the etag it read, done again from the read when the
    resource changed meanwhile (Cloud Run and IAM answer ABORTED: AIP-154, google.aip.dev/154),
    ETAG_ATTEMPTS times at most; then a TransientError (Prefect retries the step)."""
    for attempt in range(1, ETAG_ATTEMPTS + 1):
        try:
            return once()
        except api_exceptions.Aborted as error:
            logger.warning("%s: changed meanwhile (attempt %d of %d): %s", what, attempt, ETAG_ATTEMPTS,
                           error.message)
    raise TransientError(f"{what}: kept changing ({ETAG_ATTEMPTS} attempts)", hint="run it again")


def deploy(cloud: Cloud, spec: FunctionSpec, target: Target, image: VerifiedImage,
           source_sha256: str | None = None, logger: Log = log) -> Deployment:
    """Bring the service to run `service_for(...)`: create it, add a candidate, or nothing; done
    again on a stale etag (`again_on_aborted`)."""
    return again_on_aborted(lambda: _deploy_once(cloud, spec, target, image, source_sha256, logger),
                            f"deploy_service: {spec.name}", logger)


def _deploy_once(cloud: Cloud, spec: FunctionSpec, target: Target, image: VerifiedImage,
                 source_sha256: str | None, logger: Log) -> Deployment:
    """One read-modify-write of `deploy`."""
    wanted = service_for(spec, target, image, source_sha256)
    name = service_path(target, spec.name)
    revision = wanted.template.revision
    existing = get_service(cloud.services, name)
    if existing is not None and serves(existing, wanted):
        logger.info("%s already serves %s (%s): nothing to deploy", spec.name, revision, image.digest)
        if existing.ingress != wanted.ingress:
            logger.info("%s: its ingress becomes %s at promote", spec.name, spec.ingress)
        return Deployment(service=name, revision=revision, digest=image.digest, url=existing.uri,
                          changed=False, previous=[revision])
    previous = serving(existing) if existing is not None else []
    tag = candidate_tag(spec.name) if previous else None
    if existing is not None:
        wanted = kept_from(existing, wanted)
    if tag is not None:
        assert existing is not None
        wanted.traffic = with_candidate(existing, revision, tag)
        logger.info("deploying %s as a candidate under tag %r; %s keep(s) the traffic", revision, tag,
                    ", ".join(previous))
    try:
        final = _write(cloud, target, spec.name, wanted, existing, logger)
    except DeployFailed as error:
        if existing is None or not previous:
            raise
        restored = _restore(cloud, name, existing, logger)
        raise DeployFailed(f"{error.message}; the traffic never moved: {', '.join(previous)} keep(s) "
                           f"serving it; {restored}", hint=error.hint) from error
    url = tag_url(final, tag) if tag is not None else None
    if tag is not None and url is None:
        raise DeployFailed(f"deploy_service: {name} is Ready but its traffic tag {tag!r} has no URL",
                           hint="check the service's traffic in the Cloud Run console")
    return Deployment(service=name, revision=revision, digest=image.digest, url=final.uri,
                      changed=True, created=existing is None, tag=tag, candidate_url=url,
                      previous=previous)


def _restore(cloud: Cloud, name: str, before: run_v2.Service, logger: Log) -> str:
    """Put a service whose candidate never got Ready back as it was `before` the deploy (its template
    names the revision that serves, so Cloud Run reuses it: no new revision), so no failed candidate
    keeps a tag and the service is Ready again. Says what became of it; never raises."""
    try:
        current = get_service(cloud.services, name)
        if current is None:
            return "the service is gone"
        update = run_v2.Service(before)
        update.etag = current.etag
        cloud_run_write()
        with api_step(f"UpdateService {name} (restore)"):
            operation = cloud.services.update_service(service=update)
        final = wait_for(operation, cloud, name, before.template.revision)
    except Exception as error:  # a report of what could not be undone, never a second failure
        logger.warning("could not put %s back as it was before the failed candidate: %s", name, error)
        return f"the failed candidate could not be removed ({error}); run the migration again"
    state = "Ready" if final.terminal_condition.state == SUCCEEDED else "not Ready"
    logger.info("%s is back as it was before the failed candidate (%s)", name, state)
    return f"the failed candidate was removed and the service is back as it was ({state})"


def _write(cloud: Cloud, target: Target, service_id: str, wanted: run_v2.Service,
           existing: run_v2.Service | None, logger: Log) -> run_v2.Service:
    """CreateService or UpdateService (with the etag read), then wait until the revision is Ready."""
    revision = wanted.template.revision
    name = service_path(target, service_id)
    if existing is None:
        logger.info("creating service %s with revision %s (private until its smoke test passes)",
                    name, revision)
        cloud_run_write()
        with api_step(f"CreateService {name}"):
            try:
                operation = cloud.services.create_service(parent=parent_of(target), service=wanted,
                                                    service_id=service_id)
            except api_exceptions.AlreadyExists as error:
                raise TransientError(f"deploy_service: {name} was created by someone else meanwhile",
                                     hint="retrying updates it instead") from error
    else:
        logger.info("updating service %s to revision %s (was %s)", name, revision,
                    existing.template.revision or "unnamed")
        update = run_v2.Service(wanted)
        update.name = name
        update.etag = existing.etag
        cloud_run_write()
        with api_step(f"UpdateService {name}"):
            operation = cloud.services.update_service(service=update)
    final = wait_for(operation, cloud, name, revision)
    if final.terminal_condition.state != SUCCEEDED:
        reason = _with_details(final.terminal_condition.message or "no reason given",
                               _revision_problems(cloud.revisions, name, revision))
        raise DeployFailed(f"deploy_service: {name} is not Ready after deploying revision {revision}: "
                           f"{reason}", hint=_READY_HINT)
    logger.info("service %s runs revision %s at %s", name, revision, final.uri)
    return final


_READY_HINT = ("read the revision's logs (Cloud Run console, or `cf2run localcloud logs SERVICE`); "
               "a function that does not start is usually a wrong entry point or a missing dependency")


def wait_for(operation: lro.Operation, cloud: Cloud, name: str, revision: str,
             step: str = "deploy_service") -> run_v2.Service:
    """The operation's Service, polled at `cloud.polling.operation`; a failed operation is
    DeployFailed with Google's message (not retried)."""
    what = f"{name} revision {revision}"
    backoff = cloud.polling.operation
    schedule = polling.DEFAULT_POLLING.with_delay(
        initial=backoff.first_s, maximum=backoff.maximum_s, multiplier=backoff.factor)
    try:
        result = operation.result(polling=schedule.with_timeout(DEPLOY_TIMEOUT_S))
    except TimeoutError as error:  # concurrent.futures.TimeoutError since 3.11
        raise DeployFailed(f"{step}: {what} was not Ready within {DEPLOY_TIMEOUT_S:g}s",
                           hint=_READY_HINT) from error
    except api_exceptions.GoogleAPICallError as error:
        if not (operation.operation.done and operation.operation.HasField("error")):
            raise  # polling itself failed: transport trouble, retried by Prefect if transient
        message = _with_details(operation.operation.error.message or str(error),
                                _revision_problems(cloud.revisions, name, revision))
        raise DeployFailed(f"{step}: {what} failed: {message}", hint=_READY_HINT) from error
    if not isinstance(result, run_v2.Service):  # pragma: no cover - the API promises a Service
        raise DeployFailed(f"{step}: {what}: the operation returned {type(result).__name__}")
    return result


def _revision_problems(revisions: run_v2.RevisionsClient, service: str, revision: str) -> list[str]:
    """The distinct messages of a revision's failed conditions ([] when it cannot be read)."""
    try:
        found = revisions.get_revision(name=f"{service}/revisions/{revision}")
    except api_exceptions.GoogleAPICallError:
        return []
    messages = [c.message or f"{c.type_}: {c.reason.name}" for c in found.conditions if c.state == FAILED]
    return list(dict.fromkeys(messages))


def _with_details(message: str, details: list[str]) -> str:
    """`message` plus whichever of `details` it does not already say."""
    extra = [detail for detail in details if detail not in message]
    return f"{message} ({'; '.join(extra)})" if extra else message


# -- the Prefect task ------------------------------------------------------------------------------


def deploy_cache_key(spec: FunctionSpec, target: Target, image: VerifiedImage,
                     source_sha256: str | None = None) -> str:
    """Content key of a deploy: the target, the revision name (digest + every setting) and IAM intent."""
    revision = service_for(spec, target, image, source_sha256).template.revision
    return "deploy-" + str(hash_objects(target.model_dump(mode="json"), spec.name, revision, image.digest,
                                        spec.allow_unauthenticated, raise_on_failure=True))


def _deploy_key_fn(context: TaskRunContext, inputs: dict[str, Any]) -> str:
    return deploy_cache_key(inputs["spec"], inputs["target"], inputs["image"], inputs.get("source_sha256"))


@task(name="deploy", task_run_name="deploy[{spec.name}]",
      cache_policy=CacheKeyFnPolicy(cache_key_fn=_deploy_key_fn) + TASK_SOURCE,
      persist_result=True, cache_expiration=timedelta(hours=1), **RETRIES)
def deploy_service(spec: FunctionSpec, target: Target, image: VerifiedImage,
                   source_sha256: str | None = None) -> Deployment:
    """Create the service, or add a candidate revision running `image` by digest (`source_sha256`:
    for the label); see `deploy`."""
    cloud = Cloud.for_target(target)
    return deploy(cloud, spec, target, image, source_sha256, get_run_logger())
