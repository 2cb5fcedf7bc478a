"""Cloud Build's own failures, end to end: the pipeline against the local cloud through the
official clients and a real Prefect API.

What a user notices: a build Cloud Build ends INTERNAL_ERROR (or with a first timeout) is built
again and the migration succeeds, never blaming the source; a CreateBuild whose answer was lost
after the build started is not built twice (the retry joins the build); a build that times out
twice fails, naming build_timeout_s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flowruns import migrate
from google.cloud.devtools import cloudbuild_v1
from test_migrate_e2e import builds_of, fresh_copy, revisions_of

from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import BuildFault, Fault, LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, Target, load_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
Status = cloudbuild_v1.Build.Status
pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def target(localcloud: LocalCloud) -> Target:
    return Target(kind="local", localcloud_dir=localcloud.state_dir)


@pytest.fixture
def spec(tmp_path: Path) -> FunctionSpec:
    sample = next(s for s in load_manifest(EXAMPLES / "manifest.yaml").functions if s.name == "hello-python")
    return fresh_copy(sample, tmp_path)


@pytest.mark.parametrize("status", ["INTERNAL_ERROR", "TIMEOUT"])
def test_a_build_cloud_build_itself_failed_is_built_again_and_the_migration_succeeds(
        status: str, spec: FunctionSpec, target: Target, cloud: Cloud, knobs: LocalCloudSettings) -> None:
    knobs.build_faults = [BuildFault(image=f"/{spec.name}:", status=status, first_n=1)]  # type: ignore[arg-type]
    result, run_counts = migrate(spec, target)
    assert result.status == "succeeded", result.message
    assert run_counts[f"build[{spec.name}]"] == 2, run_counts
    statuses = [b.status for b in builds_of(cloud, target, spec.name)]
    assert statuses == [Status.SUCCESS, getattr(Status, status)]
    assert len(revisions_of(cloud, target, spec.name)) == 1


def test_a_lost_create_build_answer_joins_the_started_build_instead_of_starting_another(
        spec: FunctionSpec, target: Target, cloud: Cloud, knobs: LocalCloudSettings) -> None:
    """On Google a retried CreateBuild can start a second build: the first one's answer was lost
    (a timeout, a dropped connection) after the build was created. Here CreateBuild takes effect
    and answers UNAVAILABLE; the retry finds the build of the same image and waits for it."""
    knobs.build_latency_s = 3  # still WORKING when the step is retried
    knobs.faults = [Fault(method="CloudBuild.CreateBuild", code="UNAVAILABLE", first_n=1, after_effect=True)]
    result, run_counts = migrate(spec, target)
    assert result.status == "succeeded", result.message
    assert run_counts[f"build[{spec.name}]"] == 2, run_counts
    assert [b.status for b in builds_of(cloud, target, spec.name)] == [Status.SUCCESS], "a duplicate build"


def test_a_build_that_times_out_twice_fails_naming_the_timeout_not_the_source(
        spec: FunctionSpec, target: Target, cloud: Cloud, knobs: LocalCloudSettings) -> None:
    knobs.build_faults = [BuildFault(image=f"/{spec.name}:", status="TIMEOUT")]
    result, run_counts = migrate(spec, target)
    assert result.status == "failed" and result.failed_step == "build"
    assert run_counts[f"build[{spec.name}]"] == 2, "a timeout is retried once, not more"
    assert "build_timeout_s" in (result.message or "") and "fix the source" not in (result.message or "")
    assert [b.status for b in builds_of(cloud, target, spec.name)] == [Status.TIMEOUT] * 2
