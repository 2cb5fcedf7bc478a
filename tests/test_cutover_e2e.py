"""Zero-downtime cutover and rollback, through the migrate-function flow on the local cloud.

The story a user lives: v1 serves; v2 is broken (every request fails) -> its smoke test fails
on the candidate's tag URL, v1 keeps 100% of the traffic at the same URL and not one request
of a client that calls the URL throughout fails; a good v3 is promoted; `cf2run rollback`
brings v1 back. The client keeps calling through all of it and never sees an error.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from flowruns import migrate, migrate_with_task_runs
from typer.testing import CliRunner

from cf2run.cli import app
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.traffic import HISTORY_ANNOTATION
from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import FunctionSpec, Target

pytestmark = pytest.mark.usefixtures("prefect_api")

GOOD = '''
def hello(request):
    return "hello from {version}\\n"
'''
BROKEN = '''
def hello(request):
    raise RuntimeError("{version} is broken")
'''


def source(tmp_path: Path, version: str, code: str) -> Path:
    directory = tmp_path / version
    directory.mkdir()
    (directory / "main.py").write_text(code.format(version=version))
    return directory


class Caller(threading.Thread):
    """A client that calls the service URL (with an ID token) back to back and counts answers."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as http:
            while not self._done.is_set():
                try:
                    response = http.get(self.url)
                except httpx.TransportError as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                    continue
                if response.status_code == 200:
                    self.answers[response.text.strip()] += 1
                else:
                    self.failures.append(f"HTTP {response.status_code}: {response.text[:100]}")
                time.sleep(0.01)

    def wait_for(self, answer: str, more_than: int = 0, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.answers[answer] <= more_than:
            assert time.monotonic() < deadline, f"never answered {answer!r}: {self.answers}"
            time.sleep(0.05)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)


def traffic(cloud: Cloud, service: str) -> list[tuple[str, int, str]]:
    found = cloud.services.get_service(name=service)
    return sorted((t.revision.rsplit("/", 1)[-1], t.percent, t.tag) for t in found.traffic_statuses)


def test_failed_candidate_keeps_v1_serving_then_v3_is_promoted_and_rollback_returns_to_v1(
        localcloud: LocalCloud, cloud: Cloud, tmp_path: Path) -> None:
    target = Target(kind="local", localcloud_dir=localcloud.state_dir)
    name = f"cutover-{uuid.uuid4().hex[:6]}"
    v1 = FunctionSpec.model_validate({
        "name": name, "source": source(tmp_path, "v1", GOOD), "runtime": "python311",
        "entry_point": "hello", "smoke": {"expect_body": "hello from", "deadline_s": 60}})
    first, _ = migrate(v1, target)
    assert first.status == "succeeded", first.message
    assert first.url and first.revision and first.serving == [first.revision]
    service = f"projects/{target.project}/locations/{target.region}/services/{name}"

    caller = Caller(first.url, cloud.id_token(first.url))
    caller.start()
    caller.wait_for("hello from v1")

    # v2 fails every request: its smoke test fails on the candidate URL, v1 keeps everything.
    v2 = v1.model_copy(update={"source": source(tmp_path, "v2", BROKEN),
                               "smoke": v1.smoke.model_copy(update={"deadline_s": 3})})
    second, runs = migrate(v2, target)
    assert (second.status, second.failed_step) == ("failed", "smoke")
    assert second.revision and second.revision != first.revision
    assert f"Candidate {second.revision} was not promoted" in (second.message or "")
    assert f"{first.revision} keep(s) all the traffic at {first.url}" in (second.message or "")
    assert second.serving == [first.revision]
    assert f"discard[{name}]" in runs and f"promote[{name}]" not in runs
    assert traffic(cloud, service) == [(first.revision, 100, "")], "the candidate tag was not removed"
    assert cloud.services.get_service(name=service).uri == first.url
    assert caller.failures == [], "a request to v1 failed during the v2 attempt"
    assert set(caller.answers) == {"hello from v1"}

    # A good v3: smoke-tested on its tag, then promoted.
    v3 = v1.model_copy(update={"source": source(tmp_path, "v3", GOOD)})
    third, runs = migrate(v3, target)
    assert third.status == "succeeded", third.message
    assert third.url == first.url and third.serving == [third.revision]
    assert f"promote[{name}]" in runs
    assert f"traffic moved from {first.revision}" in (third.message or "")
    assert traffic(cloud, service) == [(third.revision, 100, "")]
    caller.wait_for("hello from v3")

    # Rollback: back to v1 (v2 was never promoted, so it is skipped), no new revision.
    revisions_before = {r.name for r in cloud.revisions.list_revisions(parent=service)}
    answer = CliRunner().invoke(app, ["rollback", name, "--target", "local"],
                                env={"CF2RUN_LOCALCLOUD_DIR": str(localcloud.state_dir)})
    assert answer.exit_code == 0, answer.output
    assert f"from {third.revision} to {first.revision}" in answer.output
    assert traffic(cloud, service) == [(first.revision, 100, "")]
    assert {r.name for r in cloud.revisions.list_revisions(parent=service)} == revisions_before
    caller.wait_for("hello from v1", more_than=caller.answers["hello from v1"])
    caller.stop()
    assert caller.failures == [], "a request failed during promote or rollback"
    history = cloud.services.get_service(name=service).annotations[HISTORY_ANNOTATION]
    assert history.split(",") == [first.revision]


def test_going_back_to_earlier_settings_smoke_tests_that_revision_as_a_candidate(
        localcloud: LocalCloud, cloud: Cloud, tmp_path: Path) -> None:
    """A, then B, then A again (within the deploy cache's hour): A's existing revision becomes
    the candidate under its tag, is smoke-tested there, then promoted; no revision is created.
    The cached deployment of the first run (A serving) is stale by then and is redone."""
    target = Target(kind="local", localcloud_dir=localcloud.state_dir)
    name = f"back-{uuid.uuid4().hex[:6]}"
    a = FunctionSpec.model_validate({
        "name": name, "source": source(tmp_path, "v1", GOOD), "runtime": "python311",
        "entry_point": "hello", "smoke": {"expect_body": "hello from", "deadline_s": 60}})
    b = a.model_copy(update={"max_instances": 50})  # another revision that answers the same
    first, _ = migrate(a, target)
    second, _ = migrate(b, target)
    assert first.status == second.status == "succeeded" and second.serving == [second.revision]
    service = f"projects/{target.project}/locations/{target.region}/services/{name}"
    revisions = {r.name for r in cloud.revisions.list_revisions(parent=service)}

    third, runs = migrate_with_task_runs(a, target)
    assert third.status == "succeeded", third.message
    assert third.revision == first.revision and third.serving == [first.revision]
    deploys = [run.state.name for run in runs if run.name == f"deploy[{name}]" and run.state]
    assert "Completed" in deploys, f"A was promoted on a stale cached deploy: {deploys}"
    assert {r.name for r in cloud.revisions.list_revisions(parent=service)} == revisions
    assert traffic(cloud, service) == [(first.revision, 100, "")]
