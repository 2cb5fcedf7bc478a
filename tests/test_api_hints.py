"""A Google API error retrying will not fix reaches the user with what to do: the role, on what,
for every API the pipeline calls (cf2run/gcp/api_hints.py), and end to end through the local cloud."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowruns import migrate
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from test_migrate_e2e import fresh_copy

from cf2run.errors import BuildFailed
from cf2run.gcp.api_hints import API_OF_STEP, explain
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import Fault, LocalCloudSettings
from cf2run.manifest.spec import Target, load_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROLES = {"package": "roles/storage.objectAdmin", "build": "roles/cloudbuild.builds.editor",
         "verify": "roles/artifactregistry.writer", "deploy": "roles/run.admin",
         "promote": "roles/run.admin", "parity": "roles/cloudfunctions.viewer",
         "credentials": "roles/iam.serviceAccountTokenCreator"}


@pytest.mark.parametrize("step", sorted(ROLES))
def test_a_refused_call_names_the_role_each_steps_api_needs(step: str) -> None:
    message = explain(api_exceptions.PermissionDenied("caller does not have permission"), step)
    assert ROLES[step] in message and API_OF_STEP[step].name in message


def test_a_disabled_api_says_which_to_enable_and_googles_failures_say_run_again() -> None:
    disabled = api_exceptions.PermissionDenied("API has not been used", errors=(), details=())
    disabled._error_info = type("Info", (), {"reason": "SERVICE_DISABLED", "domain": "", "metadata": {}})()
    assert "gcloud services enable cloudbuild.googleapis.com" in explain(disabled, "build")
    internal = explain(api_exceptions.InternalServerError("internal error"), "deploy")
    assert "Google's side" in internal and "run again later" in internal
    token = explain(auth_exceptions.RefreshError("iamcredentials: 403"), "credentials")
    assert "roles/iam.serviceAccountTokenCreator" in token


def test_an_error_with_its_own_hint_keeps_it() -> None:
    own = BuildFailed("build b of f ended FAILURE", hint="fix the source")
    assert explain(own, "build") == str(own)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(("method", "code", "step", "expected"), [
    ("CloudBuild.CreateBuild", "PERMISSION_DENIED", "build", "roles/cloudbuild.builds.editor"),
    ("Services.CreateService", "PERMISSION_DENIED", "deploy", "roles/run.admin"),
    ("Services.CreateService", "INTERNAL", "deploy", "failed on Google's side"),
])
def test_the_migration_says_what_to_do_about_a_refused_or_failing_call(
        method: str, code: str, step: str, expected: str, localcloud: LocalCloud,
        knobs: LocalCloudSettings, tmp_path: Path) -> None:
    sample = next(s for s in load_manifest(EXAMPLES / "manifest.yaml").functions if s.name == "hello-python")
    spec = fresh_copy(sample, tmp_path)
    knobs.faults = [Fault(method=method, code=code)]
    result, _ = migrate(spec, Target(kind="local", localcloud_dir=localcloud.state_dir))
    assert result.status == "failed" and result.failed_step == step
    assert expected in (result.message or ""), result.message
