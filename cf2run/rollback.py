"""`cf2run rollback SERVICE`: all traffic back to the revision that served before.

"Before" is the promotion history cf2run keeps on the service (cf2run/gcp/traffic.py): the last
revision promoted before the one serving now, so a candidate that failed its smoke test (Ready
for Cloud Run, but never promoted) is never chosen. A service cf2run has no history for falls
back to the newest Ready revision created before the serving one. `to` names a revision
explicitly. Only traffic moves: no revision is created, the template is left as it is.

    rollback(cloud, target, "orders-api")
"""

from __future__ import annotations

from google.cloud import run_v2

from cf2run.errors import DeployFailed
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.traffic import all_to, candidate_tag, history, rolled_back, same_traffic, serving, short_name
from cf2run.manifest.spec import Target
from cf2run.results import TrafficChange
from tasks.deploy import Log, api_step, log, service_path
from tasks.promote import move_traffic

STEP = "rollback"
READY = run_v2.Condition.State.CONDITION_SUCCEEDED


def is_ready(revision: run_v2.Revision) -> bool:
    return any(c.type_ == "Ready" and c.state == READY for c in revision.conditions)


def ready_revisions(revisions: run_v2.RevisionsClient, service: str) -> list[run_v2.Revision]:
    """The service's Ready revisions, newest first."""
    with api_step(f"ListRevisions {service}", step=STEP):
        listed = list(revisions.list_revisions(parent=service))
    ready = [revision for revision in listed if is_ready(revision)]
    return sorted(ready, key=lambda r: (r.create_time, r.name), reverse=True)


def previous_revision(service: run_v2.Service, ready: list[run_v2.Revision]) -> str:
    """The revision to go back to from what `service` serves now (see the module doc)."""
    current = serving(service)
    if not current:
        raise DeployFailed(f"{STEP}: {service.name} serves no revision; there is nothing to roll back",
                           hint="deploy the function with `cf2run migrate`")
    names = {short_name(r.name) for r in ready}
    promoted = history(service)
    if current[0] in promoted:  # what was promoted before the revision serving now
        promoted = promoted[:len(promoted) - 1 - promoted[::-1].index(current[0])]
    promoted = [name for name in promoted if name in names and name != current[0]]
    if promoted:
        return promoted[-1]
    created = {short_name(r.name): r.create_time for r in ready}
    older = [short_name(r.name) for r in ready if short_name(r.name) != current[0]
             and (current[0] not in created or r.create_time < created[current[0]])]
    if not older:
        raise DeployFailed(f"{STEP}: {service.name} has no Ready revision before {current[0]}",
                           hint="name one with --to REVISION (see `gcloud run revisions list`)")
    return older[0]


def rollback(cloud: Cloud, target: Target, service_id: str, to: str | None = None,
             logger: Log = log) -> TrafficChange:
    """Move all of `service_id`'s traffic to `to`, else to the revision that served before."""
    name = service_path(target, service_id)
    ready = ready_revisions(cloud.revisions, name)
    if to is not None and to not in {short_name(r.name) for r in ready}:
        raise DeployFailed(f"{STEP}: {to!r} is not a Ready revision of {name}",
                           hint=f"Ready revisions: {', '.join(short_name(r.name) for r in ready) or 'none'}")
    chosen: list[str] = []

    def change(current: run_v2.Service) -> tuple[list[run_v2.TrafficTarget], dict[str, str]] | None:
        goal = to or previous_revision(current, ready)
        chosen[:] = [goal]
        traffic = all_to(current, goal, drop_tags=[candidate_tag(service_id)])
        return None if same_traffic(current, traffic) else (traffic, rolled_back(current, goal))

    moved = move_traffic(cloud, name, change, STEP, logger)
    logger.info("%s: %s serves %s", STEP, name, ", ".join(moved.serving) or chosen[0])
    return moved
