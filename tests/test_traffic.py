"""Where the cutover sends traffic (cf2run/gcp/traffic.py) and where a rollback goes (cf2run/rollback.py).

Pure functions over the Service that Cloud Run answers; the e2e test (test_cutover_e2e.py)
checks the same on the local cloud.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import run_v2

from cf2run.errors import DeployFailed
from cf2run.gcp.traffic import (
    HISTORY_ANNOTATION,
    LATEST,
    REVISION,
    all_to,
    candidate_tag,
    history,
    in_effect,
    rolled_back,
    same_traffic,
    serving,
    with_candidate,
    with_promoted,
    without_tag,
)
from cf2run.rollback import previous_revision

NAME = "projects/p/locations/us-central1/services/svc"


def service(*statuses: tuple[str | None, int, str], promoted: str = "") -> run_v2.Service:
    """A Service as Cloud Run answers it; a status revision None = LATEST (svc-2 is the latest)."""
    found = run_v2.Service(name=NAME, latest_ready_revision=f"{NAME}/revisions/svc-2",
                           annotations={HISTORY_ANNOTATION: promoted} if promoted else {})
    found.traffic_statuses = [
        run_v2.TrafficTargetStatus(type_=LATEST if revision is None else REVISION,
                                   revision=revision or "", percent=percent, tag=tag)
        for revision, percent, tag in statuses]
    return found


def targets(traffic: list[run_v2.TrafficTarget]) -> list[tuple[str, int, str]]:
    assert all(t.type_ == REVISION for t in traffic), "every target must be pinned"
    return [(t.revision, t.percent, t.tag) for t in traffic]


@pytest.mark.parametrize(("length", "tag"), [(8, "candidate"), (37, "candidate"), (38, "cand"),
                                             (42, "cand"), (43, "c"), (45, "c")])
def test_candidate_tag_fits_cloud_runs_46_characters(length: int, tag: str) -> None:
    """REFERENCE §4: traffic tag + service name at most 46 characters."""
    name = "s" * length
    assert candidate_tag(name) == tag and len(tag) + len(name) <= 46


def test_a_latest_target_is_pinned_so_a_new_template_does_not_take_it() -> None:
    assert targets(in_effect(service((None, 100, "")))) == [("svc-2", 100, "")]


def test_candidate_gets_zero_percent_under_its_tag_and_the_split_stays() -> None:
    split = service(("svc-1", 30, ""), (None, 70, ""), ("svc-0", 0, "blue"))
    assert targets(with_candidate(split, "svc-3", "candidate")) == [
        ("svc-1", 30, ""), ("svc-2", 70, ""), ("svc-0", 0, "blue"), ("svc-3", 0, "candidate")]
    assert serving(split) == ["svc-2", "svc-1"]
    # An older candidate under the same tag is replaced, not kept.
    again = service(("svc-2", 100, ""), ("svc-3", 0, "candidate"))
    assert targets(with_candidate(again, "svc-4", "candidate")) == [
        ("svc-2", 100, ""), ("svc-4", 0, "candidate")]


def test_promote_gives_all_traffic_and_keeps_other_tags_but_not_the_candidates() -> None:
    current = service(("svc-2", 100, ""), ("svc-0", 0, "blue"), ("svc-3", 0, "candidate"))
    assert targets(all_to(current, "svc-3", drop_tags=["candidate"])) == [
        ("svc-3", 100, ""), ("svc-0", 0, "blue")]


def test_discard_removes_only_the_tag() -> None:
    current = service(("svc-2", 100, ""), ("svc-3", 0, "candidate"))
    assert targets(without_tag(current, "candidate")) == [("svc-2", 100, "")]


def test_same_traffic_ignores_order_and_latest_versus_pinned() -> None:
    current = service((None, 100, ""))
    assert same_traffic(current, all_to(current, "svc-2"))
    assert not same_traffic(current, all_to(current, "svc-1"))
    assert not same_traffic(service(("svc-2", 100, ""), ("svc-3", 0, "candidate")),
                            all_to(current, "svc-2"))


def test_history_records_what_served_before_and_rollback_truncates_it() -> None:
    first = service(("svc-1", 100, ""))
    after_v3 = with_promoted(first, ["svc-1"], "svc-3")
    assert after_v3[HISTORY_ANNOTATION] == "svc-1,svc-3"
    promoted = service(("svc-3", 100, ""), promoted=after_v3[HISTORY_ANNOTATION])
    assert history(promoted) == ["svc-1", "svc-3"]
    assert with_promoted(promoted, ["svc-3"], "svc-4")[HISTORY_ANNOTATION] == "svc-1,svc-3,svc-4"
    assert rolled_back(promoted, "svc-1")[HISTORY_ANNOTATION] == "svc-1"
    many = service(("svc-1", 100, ""), promoted=",".join(f"svc-{i}" for i in range(20)))
    assert len(history(service(promoted=with_promoted(many, [], "x")[HISTORY_ANNOTATION]))) == 10


def revision(name: str, minutes: int, ready: bool = True) -> run_v2.Revision:
    state = run_v2.Condition.State.CONDITION_SUCCEEDED if ready else run_v2.Condition.State.CONDITION_FAILED
    return run_v2.Revision(name=f"{NAME}/revisions/{name}",
                           create_time=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
                           conditions=[run_v2.Condition(type_="Ready", state=state)])


READY = [revision("svc-3", 3), revision("svc-2", 2), revision("svc-1", 1)]


def test_rollback_goes_to_the_revision_promoted_before_not_to_a_discarded_candidate() -> None:
    # svc-2 was a candidate that failed its smoke test: Ready, but never promoted.
    assert previous_revision(service(("svc-3", 100, ""), promoted="svc-1,svc-3"), READY) == "svc-1"


def test_rollback_without_history_goes_to_the_newest_older_ready_revision() -> None:
    assert previous_revision(service(("svc-3", 100, "")), READY) == "svc-2"
    assert previous_revision(service(("svc-3", 100, "")), [*READY[:1], READY[2]]) == "svc-1"


def test_rollback_refuses_when_there_is_nowhere_to_go() -> None:
    with pytest.raises(DeployFailed, match="no Ready revision before svc-1"):
        previous_revision(service(("svc-1", 100, "")), READY[2:])
    with pytest.raises(DeployFailed, match="serves no revision"):
        previous_revision(service(), READY)
