"""Where a Cloud Run service's traffic goes: pure functions over `run_v2.Service`.

The cutover (REFERENCE §4: a tag gets its own URL; tag + service name at most 46 characters):

- a new revision of a service that already serves is deployed as a *candidate*: the traffic
  that is in effect stays exactly where it is (pinned to revisions, so the new template does
  not take a LATEST share) and the candidate gets 0% under the tag `candidate_tag(name)`;
- promote: 100% to the candidate, the tag removed, other tags kept;
- discard: the candidate's tag removed, the rest unchanged;
- rollback: 100% to an earlier revision.

Which revisions cf2run promoted is kept on the service, in the annotation `HISTORY_ANNOTATION`
(oldest first), so a rollback goes back to a revision that passed its smoke test, not merely to
the newest Ready one (a discarded candidate is Ready too).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.cloud import run_v2

LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
#: Cloud Run: a traffic tag and the service name together are at most 46 characters.
MAX_TAG_AND_SERVICE = 46
CANDIDATE_TAGS = ("candidate", "cand", "c")
#: Not in a namespace the v2 API refuses (REFERENCE §4).
HISTORY_ANNOTATION = "cf2run/promoted-revisions"
HISTORY_LENGTH = 10


def short_name(resource: str) -> str:
    """The last segment of a resource name (revisions are named either way)."""
    return resource.rsplit("/", 1)[-1]


def candidate_tag(service_id: str) -> str:
    """The tag a candidate revision gets: 'candidate', shortened when the service name is long."""
    for tag in CANDIDATE_TAGS:
        if len(tag) + len(service_id) <= MAX_TAG_AND_SERVICE:
            return tag
    raise ValueError(f"service name {service_id!r} leaves no room for a traffic tag (tag + service "
                     f"name must be at most {MAX_TAG_AND_SERVICE} characters)")


def in_effect(service: run_v2.Service) -> list[run_v2.TrafficTarget]:
    """The traffic in effect (`traffic_statuses`), every target pinned to its revision.

    A LATEST target becomes its revision (the latest ready one), so that a new template does
    not silently take its share.
    """
    latest = short_name(service.latest_ready_revision)
    pinned = []
    for status in service.traffic_statuses:
        revision = short_name(status.revision) if status.revision else latest
        if not revision or (not status.percent and not status.tag):
            continue
        pinned.append(run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=status.percent,
                                           tag=status.tag))
    return pinned


def serving(service: run_v2.Service) -> list[str]:
    """Revisions that carry a share of the traffic now, the biggest share first."""
    shares: dict[str, int] = {}
    for target in in_effect(service):
        if target.percent:
            shares[target.revision] = shares.get(target.revision, 0) + target.percent
    return sorted(shares, key=lambda revision: -shares[revision])


def with_candidate(service: run_v2.Service, revision: str, tag: str) -> list[run_v2.TrafficTarget]:
    """The traffic in effect, plus `revision` at 0% under `tag` (replacing an older use of it)."""
    kept = [target for target in in_effect(service) if target.tag != tag]
    return [*kept, run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=0, tag=tag)]


def without_tag(service: run_v2.Service, tag: str) -> list[run_v2.TrafficTarget]:
    """The traffic in effect without `tag` (its revision keeps any share it had, untagged)."""
    targets = []
    for target in in_effect(service):
        if target.tag == tag:
            if not target.percent:
                continue
            target = run_v2.TrafficTarget(type_=REVISION, revision=target.revision,
                                          percent=target.percent)
        targets.append(target)
    return targets


def all_to(service: run_v2.Service, revision: str, drop_tags: Sequence[str] = ()
           ) -> list[run_v2.TrafficTarget]:
    """100% to `revision`; other tags stay (at 0%) except those in `drop_tags`."""
    tagged = [run_v2.TrafficTarget(type_=REVISION, revision=target.revision, percent=0, tag=target.tag)
              for target in in_effect(service) if target.tag and target.tag not in drop_tags]
    return [run_v2.TrafficTarget(type_=REVISION, revision=revision, percent=100), *tagged]


def same_traffic(service: run_v2.Service, traffic: Sequence[run_v2.TrafficTarget]) -> bool:
    """Whether `traffic` is what is in effect already (order and LATEST-vs-pinned aside)."""
    def key(targets: Sequence[run_v2.TrafficTarget]) -> list[tuple[str, int, str]]:
        return sorted((t.revision, t.percent, t.tag) for t in targets)
    return key(in_effect(service)) == key(traffic)


def tag_url(service: run_v2.Service, tag: str) -> str | None:
    """The URL Cloud Run gave `tag`, if the tag is in effect."""
    return next((status.uri for status in service.traffic_statuses if status.tag == tag and status.uri),
                None)


# -- what cf2run promoted ---------------------------------------------------------------------


def history(service: run_v2.Service) -> list[str]:
    """The revisions cf2run promoted on this service, oldest first."""
    text = service.annotations.get(HISTORY_ANNOTATION, "")
    return [name for name in text.split(",") if name]


def with_promoted(service: run_v2.Service, previous: Sequence[str], revision: str) -> dict[str, str]:
    """The service's annotations after `revision` replaced `previous` (the biggest share first)."""
    names = [name for name in history(service) if name != revision]
    if previous and (not names or names[-1] != previous[0]) and previous[0] != revision:
        names.append(previous[0])
    names.append(revision)
    return {**service.annotations, HISTORY_ANNOTATION: ",".join(names[-HISTORY_LENGTH:])}


def rolled_back(service: run_v2.Service, revision: str) -> dict[str, str]:
    """The service's annotations after a rollback to `revision`: the history ends with it."""
    names = history(service)
    if revision in names:
        names = names[:len(names) - names[::-1].index(revision)]
    else:
        names.append(revision)
    return {**service.annotations, HISTORY_ANNOTATION: ",".join(names[-HISTORY_LENGTH:])}
