"""The output-only fields of Cloud Run resources, filled as Google fills them.

Pure functions: they take a resource and what happened to it, and return the new resource
(never mutating their arguments), so the service module only decides *when* things happen.

Google's shapes: a Service's readiness is `terminal_condition` (type ``Ready``); its
`conditions` are those of its sub-resources (``ConfigurationsReady``, ``RoutesReady``); a
Revision's `conditions` are ``Ready``, ``ContainerHealthy`` and ``ResourcesAvailable``.
`traffic_statuses` mirror the traffic targets that are in effect (a tag's carries its URL).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from google.cloud import run_v2

from cf2run.localcloud.cloudrun.rules import LATEST, REVISION, Target
from cf2run.localcloud.iam.metadata import DEFAULT_EMAIL

State = run_v2.Condition.State
Reason = run_v2.Condition.CommonReason


def now() -> datetime:
    return datetime.now(UTC)


def new_etag() -> str:
    """An opaque, quoted etag, as Cloud Run v2 answers them."""
    return f'"{secrets.token_urlsafe(16)}"'


def condition(type_: str, state: int, message: str = "", reason: int | None = None
              ) -> run_v2.Condition:
    """A condition that changed now (`state`: a Condition.State, `reason`: a CommonReason)."""
    fields = {"reason": reason} if reason is not None else {}
    severity = (run_v2.Condition.Severity.ERROR if state == State.CONDITION_FAILED
                else run_v2.Condition.Severity.SEVERITY_UNSPECIFIED)
    return run_v2.Condition(type_=type_, state=state, message=message, severity=severity,
                            last_transition_time=now(), **fields)


def short_name(name: str) -> str:
    """The last segment of a resource name (``.../revisions/svc-00001-abc`` -> ``svc-00001-abc``)."""
    return name.rsplit("/", 1)[-1]


# -- services ------------------------------------------------------------------------------


#: What Cloud Run fills in (a caller's values for them are ignored); kept across updates.
_OUTPUT_FIELDS = ("uid", "create_time", "creator", "uri", "urls", "conditions", "traffic_statuses",
                  "latest_ready_revision", "latest_created_revision", "observed_generation",
                  "delete_time", "expire_time")


def accepted(name: str, given: run_v2.Service, current: run_v2.Service | None,
             template: run_v2.RevisionTemplate) -> run_v2.Service:
    """The service as stored when a Create/Update is accepted: the caller's fields, the output
    fields of `current` (if any), a new generation and etag, reconciling."""
    service = run_v2.Service(given)
    service.name = name
    service.template = template
    for field in _OUTPUT_FIELDS:
        if current is None:
            delattr(service, field)
        else:
            setattr(service, field, getattr(current, field))
    if current is None:
        service.uid = str(uuid.uuid4())
        service.create_time = now()
        service.creator = DEFAULT_EMAIL
    service.generation = 1 if current is None else current.generation + 1
    service.last_modifier = DEFAULT_EMAIL
    service.update_time = now()
    service.etag = new_etag()
    service.reconciling = True
    service.terminal_condition = condition("Ready", State.CONDITION_RECONCILING,
                                           "Deploying revision.")
    return service


def serving(service: run_v2.Service, *, uri: str, latest: str, targets: Sequence[Target],
            tag_urls: dict[str, str], generation: int) -> run_v2.Service:
    """`service` after generation `generation` became ready: `latest` is its latest ready
    revision and traffic follows `targets` (a target's `revision` None = LATEST)."""
    done = _reconciled(service, generation)
    done.uri = uri
    done.urls = [uri]
    done.latest_ready_revision = f"{service.name}/revisions/{latest}"
    done.traffic_statuses = [
        run_v2.TrafficTargetStatus(type_=LATEST if t.revision is None else REVISION,
                                   revision=t.revision or "", percent=t.percent, tag=t.tag,
                                   uri=tag_urls.get(t.tag, "") if t.tag else "")
        for t in targets]
    done.terminal_condition = condition("Ready", State.CONDITION_SUCCEEDED)
    done.conditions = [condition("RoutesReady", State.CONDITION_SUCCEEDED),
                       condition("ConfigurationsReady", State.CONDITION_SUCCEEDED)]
    return done


def failed(service: run_v2.Service, *, reason: str, generation: int) -> run_v2.Service:
    """`service` after generation `generation` failed: its traffic stays where it was."""
    done = _reconciled(service, generation)
    done.terminal_condition = condition("Ready", State.CONDITION_FAILED, reason,
                                        Reason.REVISION_FAILED)
    routes = (condition("RoutesReady", State.CONDITION_SUCCEEDED) if service.latest_ready_revision
              else condition("RoutesReady", State.CONDITION_FAILED, reason, Reason.REVISION_FAILED))
    done.conditions = [routes, condition("ConfigurationsReady", State.CONDITION_FAILED, reason,
                                         Reason.REVISION_FAILED)]
    return done


def _reconciled(service: run_v2.Service, generation: int) -> run_v2.Service:
    done = run_v2.Service(service)
    done.observed_generation = generation
    done.reconciling = done.generation != generation
    done.etag = new_etag()
    return done


def resolved_targets(service: run_v2.Service) -> list[Target]:
    """The traffic in effect (from `traffic_statuses`), LATEST resolved to its revision."""
    latest = short_name(service.latest_ready_revision) if service.latest_ready_revision else None
    return [Target(t.revision or latest, t.percent, t.tag) for t in service.traffic_statuses]


def not_found(kind: str, name: str) -> str:
    """Cloud Run's NOT_FOUND message for a resource (`kind` ``SERVICE`` or ``REVISION``)."""
    parts = name.split("/")
    if len(parts) >= 6:
        return (f"Resource '{parts[-1]}' of kind '{kind}' in region '{parts[3]}' in project "
                f"'{parts[1]}' does not exist.")
    return f"Resource '{name}' of kind '{kind}' does not exist."


# -- revisions -----------------------------------------------------------------------------


def new_revision(service: run_v2.Service, revision: str, template: run_v2.RevisionTemplate,
                 log_uri: str) -> run_v2.Revision:
    """A revision of `service` made from `template` (defaults filled), not ready yet."""
    when = now()
    return run_v2.Revision(
        name=f"{service.name}/revisions/{revision}", uid=str(uuid.uuid4()), generation=1,
        labels=template.labels, annotations=template.annotations, create_time=when,
        update_time=when, service=service.name, scaling=template.scaling,
        vpc_access=template.vpc_access,
        max_instance_request_concurrency=template.max_instance_request_concurrency,
        timeout=template.timeout, service_account=template.service_account,
        containers=template.containers, volumes=template.volumes,
        execution_environment=template.execution_environment,
        encryption_key=template.encryption_key, session_affinity=template.session_affinity,
        reconciling=True, observed_generation=1, log_uri=log_uri, creator=DEFAULT_EMAIL,
        etag=new_etag(),
        conditions=[condition("Ready", State.CONDITION_RECONCILING, "Deploying revision."),
                    condition("ContainerHealthy", State.CONDITION_PENDING),
                    condition("ResourcesAvailable", State.CONDITION_RECONCILING)])


def revision_ready(revision: run_v2.Revision) -> run_v2.Revision:
    done = run_v2.Revision(revision)
    done.reconciling = False
    done.conditions = [condition("Ready", State.CONDITION_SUCCEEDED),
                       condition("ContainerHealthy", State.CONDITION_SUCCEEDED),
                       condition("ResourcesAvailable", State.CONDITION_SUCCEEDED)]
    done.update_time = now()
    done.etag = new_etag()
    return done


def revision_failed(revision: run_v2.Revision, reason: str) -> run_v2.Revision:
    done = run_v2.Revision(revision)
    done.reconciling = False
    done.conditions = [
        condition("Ready", State.CONDITION_FAILED, reason, Reason.REVISION_FAILED),
        condition("ContainerHealthy", State.CONDITION_FAILED, reason, Reason.REVISION_FAILED),
        condition("ResourcesAvailable", State.CONDITION_SUCCEEDED)]
    done.update_time = now()
    done.etag = new_etag()
    return done


def is_ready(revision: run_v2.Revision) -> bool:
    return any(c.type_ == "Ready" and c.state == State.CONDITION_SUCCEEDED
               for c in revision.conditions)
