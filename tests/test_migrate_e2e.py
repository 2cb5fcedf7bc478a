"""The whole pipeline against the local cloud, through the official clients and a real Prefect API.

What a user notices: the samples migrate and answer their smoke requests; a rerun builds
nothing and creates no revision; a transient fault in any API is retried (visible as the task
run's run count) and the migration still completes; each step's task run records the steps
it takes its input from (the UI's graph); a build failure stops the migration at the
build step with the builder's message, and nothing is deployed.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from flowruns import migrate, migrate_with_task_runs
from google.api_core import exceptions as api_exceptions
from google.cloud.devtools import cloudbuild_v1
from rich.console import Console

from cf2run.fleet.report import result_rows
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import Fault, LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, Target, load_manifest
from cf2run.report import results_table
from flows.migrate_function import summary

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def target(localcloud: LocalCloud) -> Target:
    return Target(kind="local", localcloud_dir=localcloud.state_dir)


@pytest.fixture(scope="module")
def samples() -> dict[str, FunctionSpec]:
    manifest = load_manifest(EXAMPLES / "manifest.yaml")
    return {spec.name: spec for spec in manifest.functions}


def fresh_copy(spec: FunctionSpec, tmp_path: Path) -> FunctionSpec:
    """The same function under a new name and with a new source hash, so nothing is cached."""
    source = tmp_path / spec.source.name
    shutil.copytree(spec.source, source, ignore=shutil.ignore_patterns("node_modules"))
    marker = source / ("main.py" if spec.language == "python" else "index.js")
    marker.write_text(marker.read_text() + f"\n// {uuid.uuid4()}\n".replace("//", "#" if
                      spec.language == "python" else "//"))
    return spec.model_copy(update={"name": f"{spec.name}-{uuid.uuid4().hex[:6]}", "source": source})


def builds_of(cloud: Cloud, target: Target, function: str) -> list[cloudbuild_v1.Build]:
    return [b for b in cloud.builds.list_builds(project_id=target.project, filter=f'tags="fn-{function}"')]


def revisions_of(cloud: Cloud, target: Target, function: str) -> list[str]:
    parent = f"projects/{target.project}/locations/{target.region}/services/{function}"
    return [r.name for r in cloud.revisions.list_revisions(parent=parent)]


@pytest.mark.parametrize("name", ["hello-python", "hello-node"])
def test_sample_migrates_then_rerun_builds_and_deploys_nothing(
        name: str, samples: dict[str, FunctionSpec], target: Target, cloud: Cloud) -> None:
    spec = samples[name]
    first, _ = migrate(spec, target)
    assert first.status == "succeeded", first.message
    assert first.build_cached is False
    assert first.url and first.digest and first.revision
    answer = httpx.get(first.url + spec.smoke.path,
                       headers={"Authorization": f"Bearer {cloud.id_token(first.url)}"})
    assert spec.smoke.expect_body and spec.smoke.expect_body in answer.text
    builds, revisions = builds_of(cloud, target, name), revisions_of(cloud, target, name)
    assert len(builds) == 1 and len(revisions) == 1

    again, _ = migrate(spec, target)
    assert again.status == "succeeded", again.message
    assert (again.url, again.digest, again.revision) == (first.url, first.digest, first.revision)
    assert len(builds_of(cloud, target, name)) == 1, "the rerun submitted a build"
    assert revisions_of(cloud, target, name) == revisions, "the rerun created a revision"


def test_each_step_records_the_steps_it_takes_its_input_from_as_the_ui_draws_them(
        samples: dict[str, FunctionSpec], target: Target, tmp_path: Path) -> None:
    """The flow run's graph in the Prefect UI: package -> build -> verify -> deploy -> smoke,
    promote (the steps hand each other their results, which Prefect records as task inputs)."""
    spec = fresh_copy(samples["hello-python"], tmp_path)
    result, runs = migrate_with_task_runs(spec, target)
    assert result.status == "succeeded", result.message
    names = {run.id: run.name.removesuffix(f"[{spec.name}]") for run in runs}
    upstream = {names[run.id]: {names[given.id] for inputs in run.task_inputs.values()
                                for given in inputs if given.input_type == "task_run"}
                for run in runs}
    assert upstream == {"package": set(), "build": {"package"}, "verify": {"build"},
                        "deploy": {"package", "verify"}, "smoke": {"deploy"}, "promote": {"deploy"}}


@pytest.mark.parametrize(("fault", "step"), [
    ("CloudBuild.CreateBuild", "build"),
    ("Registry.HeadManifest", "build"),
    ("Registry.GetManifest", "verify"),
    ("Services.CreateService", "deploy"),
])
def test_transient_fault_is_retried_and_migration_completes(
        fault: str, step: str, samples: dict[str, FunctionSpec], target: Target,
        knobs: LocalCloudSettings, localcloud: LocalCloud, tmp_path: Path) -> None:
    """The step whose call failed is tried again and the migration completes. Counted where the
    calls arrive (the local cloud's fault knob): the run count the Prefect server records for a
    retried task run comes from events it may take in out of order under load, and was read back
    as 1 now and then although the step ran twice."""
    spec = fresh_copy(samples["hello-python"], tmp_path)
    injected, calls = localcloud.faults.injected[fault], localcloud.faults.calls[fault]
    knobs.faults = [Fault(method=fault, code="UNAVAILABLE", first_n=1)]
    result, _ = migrate(spec, target)
    assert result.status == "succeeded", result.message
    assert localcloud.faults.injected[fault] - injected == 1, "the knob failed the first call"
    assert localcloud.faults.calls[fault] - calls >= 2, f"{step} called {fault} again after the fault"
    assert step in result.timings, result.timings


def test_build_failure_stops_at_build_with_builders_message_and_deploys_nothing(
        samples: dict[str, FunctionSpec], target: Target, cloud: Cloud, tmp_path: Path) -> None:
    spec = fresh_copy(samples["hello-python"], tmp_path).model_copy(
        update={"entry_point": "no_such_function"})
    result, run_counts = migrate(spec, target)
    assert result.status == "failed"
    assert result.failed_step == "build"
    # The log's own words, read back from the build's log (Cloud Build's status says only that the
    # step failed), and the fix in the manifest's words, not the buildpack variable.
    assert ("ERROR: File main.py is expected to contain a function named 'no_such_function'. Found: "
            "'hello' instead") in (result.message or ""), result.message
    assert ("entry_point 'no_such_function' is not a function main.py defines: set entry_point in "
            "the manifest") in (result.message or "")
    assert "GOOGLE_FUNCTION_TARGET" not in (result.message or "")
    assert run_counts[f"build[{spec.name}]"] == 1, "a build failure must not be retried"
    assert not any(name.startswith(("deploy", "smoke")) for name in run_counts)
    with pytest.raises(api_exceptions.NotFound):
        cloud.services.get_service(
            name=f"projects/{target.project}/locations/{target.region}/services/{spec.name}")


def test_missing_repository_fails_at_build_naming_it_and_the_create_command(
        samples: dict[str, FunctionSpec], target: Target, cloud: Cloud, tmp_path: Path) -> None:
    """Artifact Registry refuses a repository that does not exist (403 "... (or it may not
    exist)"): the migration stops at the build step's first registry call, before any build is
    submitted or anything deployed, and says to create the repository or grant the role."""
    repository = f"never-created-{uuid.uuid4().hex[:6]}"
    elsewhere = target.model_copy(update={"repository": repository})
    spec = fresh_copy(samples["hello-python"], tmp_path)
    result, run_counts = migrate(spec, elsewhere)
    assert result.status == "failed"
    assert result.failed_step == "build"
    message = result.message or ""
    assert (f'"projects/local-project/locations/us-central1/repositories/{repository}" '
            "(or it may not exist)") in message
    assert (f"gcloud artifacts repositories create {repository} --repository-format=docker "
            "--location=us-central1 --project=local-project") in message
    assert "roles/artifactregistry.writer" in message
    assert run_counts[f"build[{spec.name}]"] == 1, "a refusal is not transient: not retried"
    assert builds_of(cloud, elsewhere, spec.name) == []
    assert not any(name.startswith(("deploy", "smoke")) for name in run_counts)


def test_rerun_converges_after_the_service_was_deleted_by_hand(
        samples: dict[str, FunctionSpec], target: Target, cloud: Cloud, tmp_path: Path) -> None:
    spec = fresh_copy(samples["hello-python"], tmp_path)
    # The smoke test retries a refused connection (cold start) until its deadline before the
    # flow redeploys; keep that wait short here.
    spec = spec.model_copy(update={"smoke": spec.smoke.model_copy(update={"deadline_s": 10})})
    first, _ = migrate(spec, target)
    assert first.status == "succeeded", first.message
    name = f"projects/{target.project}/locations/{target.region}/services/{spec.name}"
    cloud.services.delete_service(name=name).result(timeout=60)

    # The deploy result is cached (same digest and settings), so the smoke test fails first;
    # the flow then deploys again for real instead of reporting a broken function.
    again, run_counts = migrate(spec, target)
    assert again.status == "succeeded", again.message
    assert cloud.services.get_service(name=name).latest_ready_revision.endswith(first.revision or "")
    assert run_counts[f"build[{spec.name}]"] == 1


def test_a_python_version_the_host_lacks_shows_in_the_result_and_the_tables(
        samples: dict[str, FunctionSpec], target: Target, tmp_path: Path) -> None:
    """The local cloud builds and runs with the host's Python; when the runtime names another
    (python312 on a 3.11 host), the migration's result, its table and the fleet's say so."""
    host = ".".join(str(part) for part in sys.version_info[:3])
    runtime = "python312" if sys.version_info[:2] != (3, 12) else "python311"
    spec = fresh_copy(samples["hello-python"], tmp_path).model_copy(update={"runtime": runtime})
    asked = spec.runtime_version  # what the build asks for: GOOGLE_RUNTIME_VERSION=3.12.x
    result, _ = migrate(spec, target)
    assert result.status == "succeeded", result.message
    expected = f"python {host} (the host's), not {asked} (GOOGLE_RUNTIME_VERSION)"
    assert result.runtime_note == expected

    console = Console(width=400, record=True)
    console.print(results_table([result]))
    assert f"built; local cloud: {expected}" in console.export_text()
    assert result_rows([result])[0]["build"] == f"built; local cloud: {expected}"
    assert f"built; local cloud: {expected}" in summary(result)


def test_a_failed_public_binding_is_retried_and_the_url_answers_without_a_token(
        samples: dict[str, FunctionSpec], target: Target, knobs: LocalCloudSettings,
        tmp_path: Path) -> None:
    """Issue 18: one transient SetIamPolicy failure left a public function private and the migration
    said ok. Now the promote step fails it (and Prefect retries), and ok means a caller without a
    token gets in."""
    spec = fresh_copy(samples["hello-python"], tmp_path).model_copy(update={"allow_unauthenticated": True})
    knobs.faults = [Fault(method="Services.SetIamPolicy", code="UNAVAILABLE", first_n=1)]
    result, run_counts = migrate(spec, target)
    assert result.status == "succeeded", result.message
    assert httpx.get(result.url, timeout=30).status_code == 200  # public: no token
    assert run_counts[f"promote[{spec.name}]"] == 2, run_counts


def test_invokers_are_granted_at_promote_through_a_transient_failure(
        samples: dict[str, FunctionSpec], target: Target, knobs: LocalCloudSettings,
        tmp_path: Path) -> None:
    """The invokers' grant is the promote step's job, as the public binding is: a transient
    SetIamPolicy failure fails the step, Prefect runs it again, and the member gets the role."""
    member = "serviceAccount:caller@local-project.iam.gserviceaccount.com"
    spec = fresh_copy(samples["hello-python"], tmp_path).model_copy(update={"invokers": [member]})
    knobs.faults = [Fault(method="Services.SetIamPolicy", code="UNAVAILABLE", first_n=1)]
    result, run_counts = migrate(spec, target)
    assert result.status == "succeeded", result.message
    assert run_counts[f"promote[{spec.name}]"] == 2, run_counts
    cloud = Cloud.for_target(target)
    policy = cloud.services.get_iam_policy(request={
        "resource": f"projects/{target.project}/locations/{target.region}/services/{spec.name}"})
    assert [list(b.members) for b in policy.bindings if b.role == "roles/run.invoker"] == [[member]]
    assert httpx.get(result.url or "", timeout=30).status_code == 403  # private: invokers need tokens


def test_a_public_binding_refused_for_good_fails_the_migration_naming_the_permission(
        samples: dict[str, FunctionSpec], target: Target, knobs: LocalCloudSettings,
        tmp_path: Path) -> None:
    spec = fresh_copy(samples["hello-python"], tmp_path).model_copy(update={"allow_unauthenticated": True})
    knobs.faults = [Fault(method="Services.SetIamPolicy", code="PERMISSION_DENIED", first_n=10,
                          message="Permission 'run.services.setIamPolicy' denied")]
    result, run_counts = migrate(spec, target)
    assert (result.status, result.failed_step) == ("failed", "promote"), result.message
    assert "run.services.setIamPolicy" in result.message and "roles/run.admin" in result.message
    assert run_counts[f"promote[{spec.name}]"] == 1, run_counts  # not retried: it would fail again
    assert httpx.get(result.url or "", timeout=30).status_code == 403  # still private, and said so
