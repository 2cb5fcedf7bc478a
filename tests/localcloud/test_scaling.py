"""Scale to zero in the local Cloud Run: idle revisions' processes stop, the next request starts
one (a cold start), min instances keep revisions warm, traffic splits and tags answer whether
instances run or not, and a restart starts only the warm ones. Real processes and requests, a
local cloud of each test's own with a short idle period; nothing is timed: the tests wait for
what the service log says happened (each process start and end is logged) and assert on
processes and answers."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import run_v2
from test_cloudrun import APP, LATEST, REVISION, Env, create, env_of, get, make_public, service_of, update

from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings

State = run_v2.Condition.State
IDLE_S = 0.5
#: An app that, once the file CRASH_IF names exists, exits at start instead of listening.
FRAGILE = '''\
import os, sys
if os.path.exists(os.environ["CRASH_IF"]):
    print("CRASH_IF exists: refusing to start", flush=True)
    sys.exit(3)
''' + APP


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Env]:
    with own_cloud(tmp_path / "state") as env:
        yield env


@contextlib.contextmanager
def own_cloud(state_dir: Path) -> Iterator[Env]:
    settings = LocalCloudSettings(ready_deadline_s=20, scale_to_zero_after_s=IDLE_S)
    with LocalCloud(state_dir=state_dir, settings=settings) as local:
        yield env_of(local)


def starts(env: Env, service: str, revision: str) -> list[int]:
    """The ports each process of `revision` listened on, in order (the app logs each start)."""
    pattern = rf"\[{re.escape(revision)}\] listening on (\d+)"
    return [int(port) for port in re.findall(pattern, env.logs(service))]


def stops(env: Env, service: str, revision: str) -> int:
    return env.logs(service).count(f"[{revision}] Container terminated on signal 15.")


def scaled_to_zero(env: Env, service: str, revision: str, times: int = 1) -> bool:
    """Wait (up to 60 s: the machine may be busy) until `revision` was stopped `times` times."""
    deadline = time.monotonic() + 60
    while stops(env, service, revision) < times:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def listens(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def public(env: Env, service_id: str, service: run_v2.Service) -> run_v2.Service:
    created = create(env, service_id, service)
    make_public(env, created.name)
    return created


def ready(env: Env, revision_name: str) -> bool:
    revision = env.revisions.get_revision(name=revision_name)
    return any(c.type_ == "Ready" and c.state == State.CONDITION_SUCCEEDED for c in revision.conditions)


def test_an_idle_revision_scales_to_zero_and_the_next_request_starts_one(cloud: Env) -> None:
    image = cloud.push_app(APP.format(greeting="hello"))
    service = public(cloud, "idle", service_of(image, revision="idle-one"))
    [first_port] = starts(cloud, "idle", "idle-one")

    assert scaled_to_zero(cloud, "idle", "idle-one")
    assert not listens(first_port)  # the process is gone
    assert ready(cloud, service.latest_ready_revision)  # Ready is the revision's, not an instance's
    again = cloud.services.get_service(name=service.name)
    assert again.terminal_condition.state == State.CONDITION_SUCCEEDED

    answer = get(service.uri)  # a cold start: held until the new process listens
    assert answer.status_code == 200 and answer.text == "hello from idle-one"
    assert len(starts(cloud, "idle", "idle-one")) == 2
    assert scaled_to_zero(cloud, "idle", "idle-one", times=2)  # and it idles out again


def test_min_instances_keep_revisions_warm(cloud: Env) -> None:
    image = cloud.push_app(APP.format(greeting="hi"))
    cold = public(cloud, "cold", service_of(image, revision="cold-one"))
    own_min = public(cloud, "warm", service_of(image, revision="warm-one",
                                               scaling=run_v2.RevisionScaling(min_instance_count=1)))
    service_min = run_v2.Service(template=service_of(image, revision="shared-one").template,
                                 scaling=run_v2.ServiceScaling(min_instance_count=1))
    shared = public(cloud, "shared", service_min)

    assert scaled_to_zero(cloud, "cold", "cold-one")  # an idle period has passed
    get(cold.uri)
    assert scaled_to_zero(cloud, "cold", "cold-one", times=2)  # and another one
    for service, revision in ((own_min, "warm-one"), (shared, "shared-one")):
        service_id = revision.split("-")[0]
        [port] = starts(cloud, service_id, revision)
        assert stops(cloud, service_id, revision) == 0 and listens(port)
        assert get(service.uri).text == f"hi from {revision}"
        assert starts(cloud, service_id, revision) == [port]  # no cold start: the same process


def test_a_tag_url_of_an_idle_candidate_answers_after_a_cold_start(cloud: Env) -> None:
    blue = cloud.push_app(APP.format(greeting="blue"))
    green = cloud.push_app(APP.format(greeting="green"))
    service = public(cloud, "tagged", service_of(blue, revision="tagged-blue"))
    candidate = run_v2.Service(service)
    candidate.template = service_of(green, revision="tagged-green").template
    candidate.traffic = [run_v2.TrafficTarget(type_=REVISION, revision="tagged-blue", percent=100),
                         run_v2.TrafficTarget(type_=LATEST, percent=0, tag="candidate")]
    updated = update(cloud, candidate)
    tag_url = next(t.uri for t in updated.traffic_statuses if t.tag == "candidate")

    assert scaled_to_zero(cloud, "tagged", "tagged-green")
    assert get(tag_url).text == "green from tagged-green"
    assert get(service.uri).text == "blue from tagged-blue"


def test_a_split_across_an_idle_and_a_warm_revision_answers_from_both(cloud: Env) -> None:
    one = cloud.push_app(APP.format(greeting="one"))
    two = cloud.push_app(APP.format(greeting="two"))
    warm = service_of(one, revision="split-one", scaling=run_v2.RevisionScaling(min_instance_count=1))
    service = public(cloud, "split", warm)
    split = run_v2.Service(service)
    split.template = service_of(two, revision="split-two").template
    split.traffic = [run_v2.TrafficTarget(type_=REVISION, revision="split-one", percent=50),
                     run_v2.TrafficTarget(type_=REVISION, revision="split-two", percent=50)]
    update(cloud, split)

    assert scaled_to_zero(cloud, "split", "split-two")
    assert stops(cloud, "split", "split-one") == 0
    seen = {get(service.uri).text for _ in range(20)}  # both: p = 1 - 2e-6
    assert seen == {"one from split-one", "two from split-two"}


def test_a_failed_cold_start_answers_503_and_the_log_says_why(cloud: Env, tmp_path: Path) -> None:
    marker = tmp_path / "crash"
    image = cloud.push_app(FRAGILE.format(greeting="fragile"))
    deployed = service_of(image, revision="fragile-one")
    deployed.template.containers[0].env.append(run_v2.EnvVar(name="CRASH_IF", value=str(marker)))
    service = public(cloud, "fragile", deployed)
    assert scaled_to_zero(cloud, "fragile", "fragile-one")

    marker.touch()  # from now on the app cannot start
    answer = get(service.uri)
    assert answer.status_code == 503
    logs = cloud.logs("fragile")
    assert "CRASH_IF exists: refusing to start" in logs
    assert re.search(r"\[fragile-one\] The request was aborted because there was no available "
                     r"instance\. .*exited with code 3", logs)
    assert ready(cloud, service.latest_ready_revision)  # an instance failed, not the revision

    marker.unlink()
    assert get(service.uri).text == "fragile from fragile-one"  # the next cold start works


def test_a_restart_starts_only_the_warm_revisions(tmp_path: Path) -> None:
    with own_cloud(tmp_path / "state") as first:
        image = first.push_app(APP.format(greeting="back"))
        cold = public(first, "lazy", service_of(image, revision="lazy-one"))
        public(first, "eager", service_of(image, revision="eager-one",
                                           scaling=run_v2.RevisionScaling(min_instance_count=1)))
    with own_cloud(tmp_path / "state") as second:  # restore is done when the cloud is started
        assert len(starts(second, "eager", "eager-one")) == 2
        assert len(starts(second, "lazy", "lazy-one")) == 1
        assert get(cold.uri).text == "back from lazy-one"
        assert len(starts(second, "lazy", "lazy-one")) == 2
