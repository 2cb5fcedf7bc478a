"""A rerun that changes nothing tests nothing (`terraform apply` with no changes), on the local cloud.

What a user notices: the second run of an unchanged function sends its service no request (the
function's own process counts what it receives) and says it is unchanged, in the result and the
tables; a revision scaled to zero stays at zero; `recheck` smoke-tests it anyway. Whatever did
change is still tested: after a rollback the rerun makes the manifest's revision the candidate
again and smoke-tests it before it takes the traffic; a new service whose first smoke test
failed (its revision took the traffic, private) is tested again, not taken as vetted.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from flowruns import migrate
from rich.console import Console

from cf2run.fleet.report import result_rows
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import Fault, LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.plan import plan_function
from cf2run.report import results_table
from cf2run.results import MigrationResult
from cf2run.rollback import rollback
from flows.migrate_function import migrate_function

pytestmark = pytest.mark.usefixtures("prefect_api")

#: A function that writes a line to `requests` for every request its process receives.
COUNTING = '''
def hello(request):
    with open({requests!r}, "a") as seen:
        seen.write(request.path + "\\n")
    {answer}
'''
GOOD = 'return "hello from {version}\\n"'
BROKEN = 'raise RuntimeError("{version} is broken")'


class Function:
    """A function whose versions all count the requests their processes receive in one file."""

    def __init__(self, tmp_path: Path, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.requests = tmp_path / "requests.log"

    def version(self, version: str, answer: str = GOOD, **fields: object) -> FunctionSpec:
        source = self.tmp_path / version
        source.mkdir()
        (source / "main.py").write_text(COUNTING.format(requests=str(self.requests),
                                                        answer=answer.format(version=version)))
        return FunctionSpec.model_validate({
            "name": self.name, "source": source, "runtime": "python311", "entry_point": "hello",
            "smoke": {"expect_body": "hello from", "deadline_s": 60}, **fields})

    def received(self) -> int:
        return len(self.requests.read_text().splitlines()) if self.requests.exists() else 0


@pytest.fixture
def target(localcloud: LocalCloud) -> Target:
    return Target(kind="local", localcloud_dir=localcloud.state_dir)


def shown(result: MigrationResult) -> str:
    console = Console(width=400, record=True)
    console.print(results_table([result]))
    return console.export_text()


def test_unchanged_rerun_sends_no_request_and_says_so_and_recheck_smoke_tests(
        target: Target, tmp_path: Path) -> None:
    function = Function(tmp_path, "rerun")
    spec = function.version("v1")
    first, _ = migrate(spec, target)
    assert first.status == "succeeded", first.message
    assert not first.unchanged and (first.message or "").startswith("smoke 200")
    smoke_requests = function.received()
    assert smoke_requests >= 1

    again, runs = migrate(spec, target)
    assert again.status == "succeeded", again.message
    assert function.received() == smoke_requests, "the unchanged rerun sent the service a request"
    assert again.unchanged and again.revision == first.revision and again.serving == [first.revision]
    assert again.message == (f"unchanged, not tested again: {first.revision} serves all the traffic "
                             f"(when promoted: {first.message})")
    assert f"smoke[{spec.name}]" not in runs and f"promote[{spec.name}]" in runs
    assert "smoke" not in again.timings
    table = shown(again)  # the smoke column says what was done now, not "smoke 200"
    assert "│ unchanged, not tested again" in table and "│ smoke 200" not in table
    assert result_rows([again])[0]["message"].startswith("unchanged, not tested again")

    state = migrate_function(spec, target, recheck=True, return_state=True)
    checked = state.result()
    assert isinstance(checked, MigrationResult)
    assert checked.status == "succeeded" and not checked.unchanged
    assert (checked.message or "").startswith("smoke 200")
    assert function.received() > smoke_requests, "--recheck did not smoke-test the service"


def test_a_revision_scaled_to_zero_stays_at_zero_after_an_unchanged_rerun(
        localcloud: LocalCloud, knobs: LocalCloudSettings, target: Target, tmp_path: Path) -> None:
    function = Function(tmp_path, "zero")
    spec = function.version("v1")
    first, _ = migrate(spec, target)
    assert first.status == "succeeded", first.message and first.revision
    knobs.scale_to_zero_after_s = 0.5
    deadline = time.monotonic() + 30
    while localcloud.instances.runtime.address(first.revision or "") is not None:
        assert time.monotonic() < deadline, "the revision never scaled to zero"
        time.sleep(0.1)
    received = function.received()

    again, _ = migrate(spec, target)
    assert again.status == "succeeded" and again.unchanged, again.message
    assert localcloud.instances.runtime.address(first.revision or "") is None, \
        "the unchanged rerun cold-started the revision"
    assert function.received() == received


def test_after_a_rollback_the_rerun_smoke_tests_the_candidate_before_promoting_it(
        cloud: Cloud, target: Target, tmp_path: Path) -> None:
    function = Function(tmp_path, "rolled")
    v1, v2 = function.version("v1"), function.version("v2")
    first, _ = migrate(v1, target)
    second, _ = migrate(v2, target)
    assert first.status == second.status == "succeeded", (first.message, second.message)
    moved = rollback(cloud, target, function.name)
    assert moved.serving == [first.revision]
    plan = plan_function(v2, target, cloud)
    assert (plan.action, plan.reuses) == ("update", True), plan
    received = function.received()

    third, runs = migrate(v2, target)
    assert third.status == "succeeded", third.message
    assert not third.unchanged and (third.message or "").startswith("smoke 200")
    assert f"traffic moved from {first.revision}" in (third.message or "")
    assert third.serving == [second.revision]
    assert f"smoke[{function.name}]" in runs
    assert function.received() > received, "the candidate was promoted without a smoke request"


def test_a_new_service_whose_smoke_test_failed_is_tested_again_on_the_rerun(
        target: Target, tmp_path: Path) -> None:
    """Its revision took all the traffic when the service was created (private until the smoke
    test passes): traffic alone does not make it vetted."""
    function = Function(tmp_path, "unvetted")
    spec = function.version("v1", answer=BROKEN)
    spec = spec.model_copy(update={"smoke": spec.smoke.model_copy(update={"deadline_s": 3})})
    first, _ = migrate(spec, target)
    assert (first.status, first.failed_step) == ("failed", "smoke"), first.message
    received = function.received()
    assert received >= 1

    again, _ = migrate(spec, target)
    assert (again.status, again.failed_step) == ("failed", "smoke"), again.message
    assert not again.unchanged
    assert function.received() > received, "the rerun took an untested revision for a vetted one"


def test_a_read_between_steps_that_misses_its_deadline_is_tried_again(
        target: Target, knobs: LocalCloudSettings, localcloud: LocalCloud, tmp_path: Path) -> None:
    """The rerun's check that the revision still serves (a GetService between the cached deploy and
    promote, outside any task) meets a DEADLINE_EXCEEDED, as a client busy with hundreds of
    functions does: it is tried again like a step's call, not reported as a failed migration."""
    function = Function(tmp_path, "reread")
    spec = function.version("v1")
    first, _ = migrate(spec, target)
    assert first.status == "succeeded", first.message
    before = localcloud.faults.injected["Services.GetService"]
    knobs.faults = [Fault(method="Services.GetService", code="DEADLINE_EXCEEDED", first_n=2)]
    again, _ = migrate(spec, target)
    assert again.status == "succeeded", again.message
    assert again.unchanged, again.message
    assert localcloud.faults.injected["Services.GetService"] - before == 2, "the knob fired"
