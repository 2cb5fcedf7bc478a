"""promote / discard: after the smoke test, move the service's traffic (or do not).

- `promote`: the tested revision gets 100% of the traffic and the candidate tag goes (a first
  deploy already has all the traffic: nothing moves), and in the same update the service gets
  the manifest's ingress (a service setting: the candidate ran under the one the service had,
  tasks/deploy.py; an ingress-only change is an update of its own). Then, and only then, the
  members the spec names get ``roles/run.invoker`` (``allUsers`` for a public service, and its
  ``invokers``; tasks/invokers.py): nobody outside could reach a revision before it passed its
  smoke test. The step is done only when they have it (a failure fails it: retried when
  transient) and, for a public service, the URL answers a caller without a token (not asked
  again on an unchanged rerun that changed nothing: flows/migrate_function.py). The promoted
  revision is added to the history that `cf2run rollback` reads (cf2run/gcp/traffic.py).
- `discard`: the candidate failed its smoke test; its tag goes, and the revisions that served
  keep all the traffic (they never lost any).

Both are read-modify-write with the etag read (`move_traffic`): a concurrent change makes
Cloud Run answer ABORTED, and the change is computed again on the fresh service. A write that
changes nothing is not sent, so a rerun of an unchanged function writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from google.cloud import run_v2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cf2run.errors import DeployFailed
from cf2run.fleet.quotas import cloud_run_write
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.traffic import all_to, candidate_tag, same_traffic, serving, with_promoted, without_tag
from cf2run.manifest import mapping
from cf2run.manifest.principals import ALL_USERS
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import Deployment, TrafficChange
from tasks.deploy import SUCCEEDED, Log, again_on_aborted, api_step, get_service, log, wait_for
from tasks.invokers import ensure_invokers, wanted_invokers
from tasks.policy import RETRIES
from tasks.smoke import IAM_PROPAGATION_STATUSES, answers_without_token

#: What a traffic change wants: (traffic, annotations), or None when nothing has to change.
Change = Callable[[run_v2.Service], tuple[list[run_v2.TrafficTarget], dict[str, str]] | None]


def move_traffic(cloud: Cloud, name: str, change: Change, step: str, logger: Log = log,
                 ingress: run_v2.IngressTraffic | None = None) -> TrafficChange:
    """Read the service, apply `change` (and `ingress`, when given), UpdateService with the etag
    read; again on ABORTED (`again_on_aborted`)."""
    return again_on_aborted(lambda: _move_once(cloud, name, change, step, logger, ingress),
                            f"{step}: {name}", logger)


def _move_once(cloud: Cloud, name: str, change: Change, step: str, logger: Log,
               ingress: run_v2.IngressTraffic | None) -> TrafficChange:
    current = get_service(cloud.services, name, step)
    if current is None:
        raise DeployFailed(f"{step}: service {name} does not exist",
                           hint="check the service name, project and region (or migrate it first)")
    before = serving(current)
    wanted = change(current)
    new_ingress = ingress is not None and ingress != current.ingress
    if wanted is None and not new_ingress:
        return TrafficChange(service=name, url=current.uri, serving=before, previous=before, changed=False,
                             uid=current.uid or None)
    update = run_v2.Service(current)
    if wanted is not None:
        update.traffic, update.annotations = wanted
    if new_ingress:
        assert ingress is not None
        logger.info("%s: ingress of %s becomes %s (was %s)", step, name, ingress.name,
                    run_v2.IngressTraffic(current.ingress).name)
        update.ingress = ingress
    target = update.traffic[0].revision if update.traffic else ""
    cloud_run_write()
    with api_step(f"UpdateService {name} (traffic)", step=step):
        operation = cloud.services.update_service(service=update)
    final = wait_for(operation, cloud, name, target, step)
    if final.terminal_condition.state != SUCCEEDED:
        raise DeployFailed(f"{step}: {name} is not Ready after moving its traffic: "
                           f"{final.terminal_condition.message or 'no reason given'}",
                           hint="check the service's revisions in the Cloud Run console")
    after = serving(final)
    logger.info("%s: traffic of %s now on %s (was %s)", step, name, ", ".join(after),
                ", ".join(before) or "nothing")
    return TrafficChange(service=name, url=final.uri, serving=after, previous=before, changed=True,
                         uid=final.uid or None)


def promote(cloud: Cloud, spec: FunctionSpec, deployment: Deployment, logger: Log = log,
            unchanged: bool = False) -> TrafficChange:
    """All traffic to the deployed revision, the candidate tag removed; then the invokers.
    `unchanged`: the revision served all the traffic already and passed its checks when it was
    promoted, so a public URL is checked again only if this promote changed something (the
    traffic, the ingress, or allUsers granted anew)."""
    revision, tag = deployment.revision, candidate_tag(spec.name)

    def change(current: run_v2.Service) -> tuple[list[run_v2.TrafficTarget], dict[str, str]] | None:
        traffic = all_to(current, revision, drop_tags=[tag])
        if same_traffic(current, traffic):
            return None
        return traffic, with_promoted(current, serving(current), revision)

    moved = move_traffic(cloud, deployment.service, change, "promote", logger,
                         ingress=run_v2.IngressTraffic(mapping.INGRESS[spec.ingress]))
    invokers = ensure_invokers(cloud.services, deployment.service, wanted_invokers(spec), logger)
    if invokers.members is not None:
        moved.public = ALL_USERS in invokers.members
        moved.invokers = [m for m in invokers.members if m != ALL_USERS]
    settled = unchanged and not moved.changed and ALL_USERS not in invokers.granted
    if spec.allow_unauthenticated and not settled:  # done when the public gets in (IAM takes a moment)
        status = answers_without_token(moved.url, spec.smoke.deadline_s, logger.info)
        if status in IAM_PROPAGATION_STATUSES:
            raise DeployFailed(f"promote: {moved.url} still answers {status} to callers without a token "
                               f"after {spec.smoke.deadline_s:g}s, though allUsers may invoke it",
                               hint="IAM changes can take minutes to apply: run the migration again; "
                                    "if it persists, check the service's IAM policy and ingress")
    return moved


def discard(cloud: Cloud, deployment: Deployment, logger: Log = log) -> TrafficChange:
    """Remove the candidate's tag; the traffic stays on the revisions that served it."""
    tag = deployment.tag

    def change(current: run_v2.Service) -> tuple[list[run_v2.TrafficTarget], dict[str, str]] | None:
        if tag is None:
            return None
        traffic = without_tag(current, tag)
        return None if same_traffic(current, traffic) else (traffic, dict(current.annotations))

    return move_traffic(cloud, deployment.service, change, "discard", logger)


@task(name="promote", task_run_name="promote[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def promote_revision(spec: FunctionSpec, target: Target, deployment: Deployment,
                     unchanged: bool = False) -> TrafficChange:
    """Move all traffic to the smoke-tested revision; make the service public if the spec says so
    (`unchanged`: see `promote`)."""
    return promote(Cloud.for_target(target), spec, deployment, get_run_logger(), unchanged)


@task(name="discard", task_run_name="discard[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def discard_candidate(spec: FunctionSpec, target: Target, deployment: Deployment) -> TrafficChange:
    """Drop a candidate that failed its smoke test: its tag goes, the traffic never moved."""
    return discard(Cloud.for_target(target), deployment, get_run_logger())
