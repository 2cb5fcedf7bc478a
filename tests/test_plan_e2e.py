"""`cf2run plan` against the local cloud: before a migration, right after it, and after the
manifest changed. Read-only: planning never creates a build, a service or a revision.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.iam.v1 import policy_pb2
from typer.testing import CliRunner

from cf2run.cli import app
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import load_manifest
from cf2run.results import MigrationResult
from flows.migrate_function import migrate_function

pytestmark = pytest.mark.usefixtures("prefect_api")

SECRET_VALUE = "never-print-me-4711"


def write(tmp_path: Path, localcloud: LocalCloud, **fields: Any) -> Path:
    """A manifest with one function (name fixed per test), on the session's local cloud."""
    (tmp_path / "fn").mkdir(exist_ok=True)
    if not (tmp_path / "fn" / "main.py").exists():
        (tmp_path / "fn" / "main.py").write_text("def hello(request):\n    return 'hi'\n")
    function = {"name": fields.pop("name"), "source": "fn", "runtime": "python311",
                "entry_point": "hello", "env": {"MODE": "dev"}, "smoke": {"expect_body": "hi"}, **fields}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"target": {"kind": "local", "localcloud_dir": str(localcloud.state_dir)},
                                    "functions": [function]}))
    return path


def plan(path: Path) -> str:
    answer = CliRunner().invoke(app, ["plan", str(path)])
    assert answer.exit_code == 0, answer.output
    return answer.output


def test_plan_shows_create_then_nothing_then_a_readable_diff(
        localcloud: LocalCloud, cloud: Cloud, tmp_path: Path) -> None:
    name = f"plan-{uuid.uuid4().hex[:6]}"
    service = f"projects/local-project/locations/us-central1/services/{name}"
    localcloud.cloudrun.secrets.add_version("local-project", "api-key", SECRET_VALUE.encode())

    path = write(tmp_path, localcloud, name=name)
    before = plan(path)
    assert f"{name}: create service {service}" in before
    assert "build: needed:" in before
    assert "+ image: (built by this migration)" in before
    assert "+ env.MODE: 'dev'" in before
    assert "+ limits.cpu: 0.167" in before and "+ limits.memory: 256Mi" in before
    assert "+ scaling.concurrency: 1" in before
    # gen1's default max instances (3000) kept, not Cloud Run's 100, and the plan says why.
    assert "+ scaling.max_instances: 3000" in before
    assert ("note: max instances 3000: max_instances is unset, so the function keeps gen1's default "
            "(Cloud Run's own default would be 100)") in before
    assert "+ service_account: local-project@appspot.gserviceaccount.com" in before
    assert "+ iam: private (ID token needed)" in before
    listed = cloud.services.list_services(parent="projects/local-project/locations/us-central1")
    assert service not in {s.name for s in listed}, "planning created the service"

    manifest = load_manifest(path)
    result = migrate_function(manifest.functions[0], manifest.target, return_state=True).result()
    assert isinstance(result, MigrationResult) and result.status == "succeeded", result

    same = plan(path)
    assert f"{name}: unchanged" in same and "build: cached (image exists)" in same
    assert "no changes" in same and f"url: {result.url} (serving {result.revision})" in same

    # Someone else lets ops in; the manifest names the team instead (cf2run adds, never removes).
    cloud.services.set_iam_policy(request={"resource": service, "policy": policy_pb2.Policy(
        etag=cloud.services.get_iam_policy(request={"resource": service}).etag,
        bindings=[policy_pb2.Binding(role="roles/run.invoker", members=["user:ops@example.com"])])})
    changed = write(tmp_path, localcloud, name=name, env={"MODE": "prod"}, memory="512Mi",
                    max_instances=5, allow_unauthenticated=True, secret_env={"API_KEY": "api-key"},
                    invokers=["group:team@example.com"])
    diff = plan(changed)
    assert "+ invoker group:team@example.com: roles/run.invoker" in diff, diff
    assert ("~ invoker user:ops@example.com: roles/run.invoker -> roles/run.invoker; not in the "
            "manifest, cf2run does not remove invokers; remove it by hand: gcloud run services "
            f"remove-iam-policy-binding {name} --member=user:ops@example.com --role=roles/run.invoker"
            ) in diff, diff
    assert f"{name}: update: new revision as a candidate" in diff
    assert "build: cached (image exists)" in diff, "only service settings changed: no new build"
    for line in ("~ env.MODE: 'dev' -> 'prod'", "+ env.API_KEY: secret api-key:latest",
                 "~ limits.memory: 256Mi -> 512Mi", "~ limits.cpu: 0.167 -> 0.333",
                 "~ scaling.max_instances: 3000 -> 5",
                 "~ iam: private (ID token needed) -> public (allUsers may invoke)"):
        assert line in diff, diff
    assert "image" not in diff.split("build:")[1].split("\n", 1)[1], "the image did not change"
    assert SECRET_VALUE not in diff

    (tmp_path / "fn" / "main.py").write_text("def hello(request):\n    return 'hi again'\n")
    rebuilt = plan(path)
    assert "build: needed:" in rebuilt
    assert f"~ image: us-central1-docker.pkg.dev/local-project/cf2run/{name}@{result.digest} -> " \
           "(built by this migration)" in rebuilt
    revisions = [r.name for r in cloud.revisions.list_revisions(parent=service)]
    assert len(revisions) == 1, "planning created a revision"


def test_plan_says_what_parity_compares_against(localcloud: LocalCloud, tmp_path: Path) -> None:
    old = "https://us-central1-local-project.cloudfunctions.net/orders"
    path = write(tmp_path, localcloud, name=f"plan-{uuid.uuid4().hex[:6]}",
                 parity={"old_url": old, "requests": [{"path": "/order"}], "json_fields": ["order.id"],
                         "headers": ["content-type"], "on_difference": "warn"})
    assert (f"  parity: 2 request(s) to {old} and to the candidate; compares status and body (JSON-equal "
            "when both are JSON) (only order.id), headers content-type; a difference is a warning "
            "(promoted anyway)") in plan(path)
    quiet = write(tmp_path, localcloud, name=f"plan-{uuid.uuid4().hex[:6]}")
    assert "parity:" not in plan(quiet)


def test_plan_and_migrate_agree_after_a_rollback(localcloud: LocalCloud, cloud: Cloud,
                                                 tmp_path: Path) -> None:
    """A, then B, then a rollback to A: the manifest (B) is not what serves. plan says that B's
    revision comes back (no new one), migrate does exactly that, and then both say unchanged."""
    name = f"plan-rb-{uuid.uuid4().hex[:6]}"
    service = f"projects/local-project/locations/us-central1/services/{name}"
    path = write(tmp_path, localcloud, name=name)

    def migrated() -> MigrationResult:
        manifest = load_manifest(path)
        result = migrate_function(manifest.functions[0], manifest.target, return_state=True).result()
        assert isinstance(result, MigrationResult) and result.status == "succeeded", result
        return result

    first = migrated()
    (tmp_path / "fn" / "main.py").write_text("def hello(request):\n    return 'hi, B'\n")
    second = migrated()
    rolled = CliRunner().invoke(app, ["rollback", name, "--manifest", str(path)])
    assert rolled.exit_code == 0 and f"to {first.revision}" in rolled.output, rolled.output

    after_rollback = plan(path)
    assert (f"{name}: update: revision {second.revision} exists and serves nothing now: it is the "
            "candidate again") in after_rollback, after_rollback
    assert "no new revision" in after_rollback and "build: cached" in after_rollback
    again = migrated()
    assert (again.revision, again.serving) == (second.revision, [second.revision])
    assert f"{name}: unchanged" in plan(path)
    assert len(list(cloud.revisions.list_revisions(parent=service))) == 2, "no new revision"


def test_a_source_that_cannot_be_packaged_is_bad_input_exit_2(localcloud: LocalCloud, tmp_path: Path) -> None:
    path = write(tmp_path, localcloud, name=f"plan-empty-{uuid.uuid4().hex[:6]}")
    (tmp_path / "fn" / "main.py").unlink()  # an empty source directory: nothing to upload
    answer = CliRunner().invoke(app, ["plan", str(path)])
    assert answer.exit_code == 2, answer.output
    assert "has no files to upload" in answer.output
