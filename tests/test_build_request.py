"""The Cloud Build request is the one `gcloud builds submit --pack` creates (REFERENCE §1)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2

from cf2run.gcp.build_outcome import build_error
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import SourceArchive
from tasks.build import image_for, image_tag, pack_build_request

SHA = "ab" * 32
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BUILD_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")  # Cloud Build's rule for build tags
DOCKER_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")  # OCI distribution's rule for image tags


def node_spec(**overrides: Any) -> FunctionSpec:
    fields = {"name": "hello-node", "source": str(EXAMPLES / "node-http"), "runtime": "nodejs20",
              "entry_point": "helloHttp", "build_env": {"NODE_ENV": "production",
                                                         "GOOGLE_LABEL_TEAM": "samples"}}
    return FunctionSpec.model_validate({**fields, **overrides})


def archive() -> SourceArchive:
    name = f"source/hello-node-{SHA[:16]}.tgz"
    return SourceArchive(uri=f"gs://local-project_cloudbuild/{name}", bucket="local-project_cloudbuild",
                         object_name=name, generation=1716400000123456, sha256=SHA, files=3, bytes=812)


def pack_step(*args: str) -> cloudbuild_v1.BuildStep:
    return cloudbuild_v1.BuildStep(name="gcr.io/k8s-skaffold/pack", entrypoint="pack", args=list(args))


def test_build_equals_the_gcloud_pack_build_field_by_field() -> None:
    spec, target = node_spec(), Target()
    image = image_for(spec, target, SHA)
    build = pack_build_request(spec, target, archive(), image)

    # "The build's source is `StorageSource(bucket, object, generation)`."
    assert build.source.storage_source == cloudbuild_v1.StorageSource(
        bucket="local-project_cloudbuild", object_=f"source/hello-node-{SHA[:16]}.tgz",
        generation=1716400000123456)
    # One step: gcloud's googlecloudsdk/command_lib/builds/submit_util.py, `_SetBuildSteps`, adds
    # the `pack config default-builder gcr.io/buildpacks/builder:latest` step only in the `else`
    # of `if builder is not None:`; with a builder it appends `--builder B` to the one
    # `gcr.io/k8s-skaffold/pack` step, entrypoint `pack`, args `build IMAGE --network cloudbuild
    # --env K=V ...` (no `--path`, no `--publish`). REFERENCE §1 (step 2) and §7.
    # Build env: REFERENCE §2 (target, signature type, runtime, version).
    assert len(build.steps) == 1
    assert build.steps[0] == pack_step(
        "build", image, "--network", "cloudbuild",
        "--env", "GOOGLE_FUNCTION_TARGET=helloHttp",
        "--env", "GOOGLE_FUNCTION_SIGNATURE_TYPE=http",
        "--env", "GOOGLE_RUNTIME=nodejs",
        "--env", "GOOGLE_RUNTIME_VERSION=20.x.x",
        "--env", "GOOGLE_LABEL_TEAM=samples",   # then build_env, sorted by name
        "--env", "NODE_ENV=production",
        "--builder", "gcr.io/buildpacks/builder:google-22")
    assert "--path" not in build.steps[0].args and "--publish" not in build.steps[0].args
    # "`images: [IMAGE]` — Cloud Build pushes it after the steps".
    assert list(build.images) == [image]
    assert image.startswith("us-central1-docker.pkg.dev/local-project/cf2run/hello-node:")
    # "`timeout` unset → server default 10 minutes. Set it explicitly (`"1200s"`)."
    assert build.timeout == timedelta(seconds=1200)  # proto-plus shows a Duration as a timedelta
    # Tags naming the tool and the function, valid Cloud Build tags.
    assert list(build.tags) == ["cf2run", "fn-hello-node"]
    assert all(BUILD_TAG_RE.match(tag) for tag in build.tags)
    # Nothing else: logging mode and options left to the service, as gcloud does.
    assert "options" not in build
    assert build.options.logging == cloudbuild_v1.BuildOptions.LoggingMode.LOGGING_UNSPECIFIED
    set_fields = {field.name for field, _ in cloudbuild_v1.Build.pb(build).ListFields()}
    assert set_fields == {"source", "steps", "images", "timeout", "tags"}

    # The whole message, as one golden value.
    assert build == cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(storage_source=build.source.storage_source),
        steps=[build.steps[0]], images=[image],
        timeout=duration_pb2.Duration(seconds=1200), tags=["cf2run", "fn-hello-node"])


def test_python_cloudevent_env_and_builder_from_target() -> None:
    spec = FunctionSpec.model_validate({
        "name": "storage-events", "source": str(EXAMPLES / "python-cloudevent"), "runtime": "python312",
        "entry_point": "on_event", "signature_type": "cloudevent"})
    target = Target(builder="gcr.io/buildpacks/builder:google-24", build_timeout_s=900)
    build = pack_build_request(spec, target, archive(), "img:x")
    [step] = build.steps  # a builder is given: no `pack config default-builder` step (submit_util.py)
    assert list(step.args) == [
        "build", "img:x", "--network", "cloudbuild",
        "--env", "GOOGLE_FUNCTION_TARGET=on_event",
        "--env", "GOOGLE_FUNCTION_SIGNATURE_TYPE=cloudevent",
        "--env", "GOOGLE_RUNTIME=python",
        "--env", "GOOGLE_RUNTIME_VERSION=3.12.x",
        "--builder", "gcr.io/buildpacks/builder:google-24"]
    assert build.timeout == timedelta(seconds=900)


def test_dollar_signs_are_escaped_for_cloud_build_substitutions() -> None:
    # "`$` in build args is a substitution: escape as `$$`."
    spec = node_spec(entry_point="$handler", build_env={"PRICE": "$5", "REF": "${PROJECT_ID}"})
    args = list(pack_build_request(spec, Target(), archive(), "img:x").steps[0].args)
    assert "GOOGLE_FUNCTION_TARGET=$$handler" in args
    assert "PRICE=$$5" in args
    assert "REF=$${PROJECT_ID}" in args
    assert not any(re.search(r"(?<!\$)\$(?!\$)", arg) for arg in args)


# -- the image tag: a function of the source and the build settings, nothing else -------------


def test_tag_is_stable_and_valid() -> None:
    tag = image_tag(node_spec(), Target(), SHA)
    assert tag == image_tag(node_spec(), Target(), SHA)
    assert DOCKER_TAG_RE.match(tag)
    assert image_for(node_spec(), Target(), SHA).endswith(f"/hello-node:{tag}")


@pytest.mark.parametrize(("spec_changes", "target_changes", "sha"), [
    ({}, {}, "cd" * 32),                                              # the source
    ({"runtime": "nodejs22"}, {}, SHA),
    ({"entry_point": "other"}, {}, SHA),
    ({"signature_type": "event"}, {}, SHA),
    ({"build_env": {"NODE_ENV": "production"}}, {}, SHA),               # one build env removed
    ({"build_env": {"NODE_ENV": "development", "GOOGLE_LABEL_TEAM": "samples"}}, {}, SHA),
    ({}, {"builder": "gcr.io/buildpacks/builder:google-24"}, SHA),
])
def test_tag_changes_with_the_source_and_every_build_setting(
        spec_changes: dict[str, Any], target_changes: dict[str, Any], sha: str) -> None:
    base = image_tag(node_spec(), Target(), SHA)
    assert image_tag(node_spec(**spec_changes), Target(**target_changes), sha) != base


@pytest.mark.parametrize(("spec_changes", "target_changes"), [
    ({"memory": "1Gi", "cpu": "1", "concurrency": 80, "timeout_s": 300}, {}),
    ({"env": {"GREETING": "hi"}, "labels": {"team": "x"}, "allow_unauthenticated": True}, {}),
    ({"min_instances": 1, "max_instances": 5, "ingress": "internal-only"}, {}),
    ({"smoke": {"path": "/health"}}, {}),
    ({"build_env": {"GOOGLE_LABEL_TEAM": "samples", "NODE_ENV": "production"}}, {}),  # same, reordered
    ({}, {"build_timeout_s": 3600, "project": "another-project", "region": "europe-west1"}),
])
def test_tag_ignores_what_the_build_does_not_see(
        spec_changes: dict[str, Any], target_changes: dict[str, Any]) -> None:
    assert image_tag(node_spec(**spec_changes), Target(**target_changes), SHA) == \
        image_tag(node_spec(), Target(), SHA)


def test_a_refused_push_names_the_repository_the_create_command_and_the_role() -> None:
    """A build whose push Artifact Registry refused (failure_info PUSH_FAILED, as the local Cloud
    Build reports it: tests/localcloud/test_cloudbuild.py) fails naming what to check: the repository
    may not exist, or the build's service account may not write to it."""
    target = Target(project="my-project", region="europe-west1", repository="functions")
    image = image_for(node_spec(), target, SHA)
    build = cloudbuild_v1.Build(
        id="b-1", status=cloudbuild_v1.Build.Status.FAILURE, log_url="http://logs/b-1",
        status_detail=f'error pushing image "{image}": exit status 1',
        failure_info=cloudbuild_v1.Build.FailureInfo(
            type_=cloudbuild_v1.Build.FailureInfo.FailureType.PUSH_FAILED))
    error = build_error(build, node_spec().name, image)
    assert f'error pushing image "{image}"' in error.message and "http://logs/b-1" in error.message
    assert error.hint is not None
    assert "projects/my-project/locations/europe-west1/repositories/functions exists" in error.hint
    assert ("gcloud artifacts repositories create functions --repository-format=docker "
            "--location=europe-west1 --project=my-project") in error.hint
    assert "roles/artifactregistry.writer" in error.hint and "cloudbuild.gserviceaccount.com" in error.hint

    step_failed = cloudbuild_v1.Build(id="b-2", status=cloudbuild_v1.Build.Status.FAILURE,
                                      status_detail='build step 0 "gcr.io/k8s-skaffold/pack" failed')
    assert "repositories create" not in (build_error(step_failed, node_spec().name, image).hint or "")


def _ended(status: str, failure: str = "FAILURE_TYPE_UNSPECIFIED") -> cloudbuild_v1.Build:
    return cloudbuild_v1.Build(
        id="b-9", status=getattr(cloudbuild_v1.Build.Status, status), status_detail="detail",
        timeout=timedelta(seconds=1200), log_url="http://logs/b-9",
        failure_info=cloudbuild_v1.Build.FailureInfo(
            type_=getattr(cloudbuild_v1.Build.FailureInfo.FailureType, failure)))


@pytest.mark.parametrize(("status", "failure"), [
    ("INTERNAL_ERROR", "FAILURE_TYPE_UNSPECIFIED"), ("EXPIRED", "FAILURE_TYPE_UNSPECIFIED"),
    ("FAILURE", "LOGGING_FAILURE"), ("TIMEOUT", "FAILURE_TYPE_UNSPECIFIED")])
def test_cloud_builds_own_failures_are_retried_and_never_blame_the_source(status: str, failure: str) -> None:
    error = build_error(_ended(status, failure), "fn", image_for(node_spec(), Target(), SHA))
    assert error.transient, f"{status}/{failure} must be retried"
    assert "fix the source" not in str(error)
    assert status in error.message and "http://logs/b-9" in error.message


def test_the_sources_failures_a_second_timeout_and_a_cancel_are_not_retried() -> None:
    image = image_for(node_spec(), Target(), SHA)
    failed = build_error(_ended("FAILURE", "USER_BUILD_STEP"), "fn", image)
    assert not failed.transient and "fix the source" in (failed.hint or "")
    again = build_error(_ended("TIMEOUT"), "fn", image, earlier=[_ended("TIMEOUT")])
    assert not again.transient and "build_timeout_s (now 1200)" in (again.hint or "")
    assert not build_error(_ended("CANCELLED"), "fn", image).transient
