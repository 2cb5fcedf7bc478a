"""A secret the manifest names but Secret Manager lacks is found before anything is created:
`cf2run plan` names it, and a migration stops at its `secrets` step, before the upload, the build,
the service and any revision, with the field, the secret and the command that fixes it. Against
the real local cloud, through the official clients and a real Prefect API.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from flowruns import migrate
from typer.testing import CliRunner

from cf2run.cli import app
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import Fault, LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, Target

pytestmark = pytest.mark.usefixtures("prefect_api")
MAIN_PY = "import os\n\n\ndef hello(request):\n    return 'key ' + os.environ['API_KEY']\n"


def function(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    source = tmp_path / "fn"
    source.mkdir(exist_ok=True)
    (source / "main.py").write_text(MAIN_PY + f"# {uuid.uuid4()}\n")
    return {"name": f"sec-{uuid.uuid4().hex[:6]}", "source": str(source), "runtime": "python311",
            "entry_point": "hello", "smoke": {"expect_body": "key "}, **fields}


def services_named(cloud: Cloud, name: str) -> list[str]:
    listed = cloud.services.list_services(parent="projects/local-project/locations/us-central1")
    return [s.name for s in listed if s.name.endswith(f"/services/{name}")]


def builds_tagged(cloud: Cloud, name: str) -> list[str]:
    return [b.id for b in cloud.builds.list_builds(project_id="local-project", filter=f'tags="fn-{name}"')]


def test_a_missing_secret_stops_the_migration_before_anything_is_created_then_it_migrates(
        localcloud: LocalCloud, cloud: Cloud, tmp_path: Path) -> None:
    key, files = f"api-key-{uuid.uuid4().hex[:6]}", f"tls-{uuid.uuid4().hex[:6]}"
    spec = FunctionSpec.model_validate(function(
        tmp_path, secret_env={"API_KEY": key},
        secret_volumes=[{"mount_path": "/etc/tls", "secret": files}]))
    target = Target(kind="local", localcloud_dir=localcloud.state_dir)

    failed, _ = migrate(spec, target)
    assert failed.status == "failed"
    assert failed.failed_step == "secrets", failed.message
    assert f"secret_env API_KEY: secret {key} (version latest) does not exist" in failed.message
    assert f"secret_volumes[0]: secret {files} (version latest) does not exist" in failed.message
    assert f"gcloud secrets create {key} --project=local-project" in failed.message
    assert "--data-file" in failed.message
    assert services_named(cloud, spec.name) == [], "a service was created before the check"
    assert builds_tagged(cloud, spec.name) == [], "a build ran before the check"

    localcloud.cloudrun.secrets.add_version("local-project", key, b"s3cret")
    localcloud.cloudrun.secrets.add_version("local-project", files, b"-----BEGIN-----")
    migrated, _ = migrate(spec, target)
    assert migrated.status == "succeeded", migrated.message
    assert "s3cret" not in migrated.message


def write_manifest(tmp_path: Path, localcloud: LocalCloud, spec: dict[str, Any]) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"target": {"kind": "local", "localcloud_dir": str(localcloud.state_dir)},
                                    "functions": [spec]}))
    return path


def test_plan_names_a_missing_secret_and_a_disabled_version_and_is_not_ok(
        localcloud: LocalCloud, cloud: Cloud, tmp_path: Path) -> None:
    missing, tls = f"api-key-{uuid.uuid4().hex[:6]}", f"tls-{uuid.uuid4().hex[:6]}"
    localcloud.cloudrun.secrets.add_version("local-project", tls, b"cert")
    cloud.secrets.disable_secret_version(name=f"projects/local-project/secrets/{tls}/versions/1")
    spec = function(tmp_path, secret_env={"API_KEY": missing},
                    secret_volumes=[{"mount_path": "/etc/tls", "secret": tls}])
    answer = CliRunner().invoke(app, ["plan", str(write_manifest(tmp_path, localcloud, spec))])
    assert answer.exit_code == 1, answer.output
    assert f"{spec['name']}: create service" in answer.output, "the rest of the plan is still shown"
    assert (f"  problem: secret_env API_KEY: secret {missing} (version latest) does not exist in project "
            f"local-project: create it with `gcloud secrets create {missing} --project=local-project "
            "--data-file=FILE`") in answer.output, answer.output
    assert (f"  problem: secret_volumes[0]: version 1 (latest) of secret {tls} in project local-project is "
            f"DISABLED, so Cloud Run cannot read it: enable it with `gcloud secrets versions enable 1 "
            f"--secret={tls} --project=local-project`") in answer.output, answer.output
    assert services_named(cloud, spec["name"]) == []

    cloud.secrets.enable_secret_version(name=f"projects/local-project/secrets/{tls}/versions/1")
    localcloud.cloudrun.secrets.add_version("local-project", missing, b"k")
    again = CliRunner().invoke(app, ["plan", str(write_manifest(tmp_path, localcloud, spec))])
    assert again.exit_code == 0 and "problem:" not in again.output, again.output


def test_a_check_secret_manager_refuses_is_a_warning_naming_the_roles(
        localcloud: LocalCloud, knobs: LocalCloudSettings, tmp_path: Path) -> None:
    knobs.secrets_denied = True
    spec = function(tmp_path, secret_env={"API_KEY": "whatever"})
    answer = CliRunner().invoke(app, ["plan", str(write_manifest(tmp_path, localcloud, spec))])
    assert answer.exit_code == 0, answer.output
    assert ("note: secret_env API_KEY: could not check secret whatever in project local-project "
            "(Permission 'secretmanager.versions.get' denied") in answer.output, answer.output
    assert "roles/secretmanager.viewer" in answer.output
    assert ("gcloud secrets add-iam-policy-binding whatever --project=local-project "
            "--member=serviceAccount:local-project@appspot.gserviceaccount.com "
            "--role=roles/secretmanager.secretAccessor") in answer.output, answer.output


def test_secret_manager_failing_transiently_is_retried_and_the_migration_succeeds(
        localcloud: LocalCloud, knobs: LocalCloudSettings, tmp_path: Path) -> None:
    """GetSecretVersion answers UNAVAILABLE to its first two calls (100%, then 0%): the secrets
    step is retried as transient, and the migration succeeds."""
    key = f"api-key-{uuid.uuid4().hex[:6]}"
    localcloud.cloudrun.secrets.add_version("local-project", key, b"s3cret")
    spec = FunctionSpec.model_validate(function(tmp_path, secret_env={"API_KEY": key}))
    knobs.faults = [Fault(method="SecretManagerService.GetSecretVersion", code="UNAVAILABLE", first_n=2)]
    before = localcloud.faults.injected["SecretManagerService.GetSecretVersion"]

    migrated, runs = migrate(spec, Target(kind="local", localcloud_dir=localcloud.state_dir))

    assert migrated.status == "succeeded", migrated.message
    assert localcloud.faults.injected["SecretManagerService.GetSecretVersion"] - before == 2
    assert runs[f"secrets[{spec.name}]"] == 3, runs
