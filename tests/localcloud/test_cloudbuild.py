"""The local Cloud Build v1 through the official google-cloud-build client over a real socket.

Builds are shaped as `gcloud builds submit --pack` makes them (REFERENCE §1): the source is a
tar.gz uploaded to the storage emulator, two `gcr.io/k8s-skaffold/pack` steps, `images: [IMAGE]`.
"""

from __future__ import annotations

import copy
import io
import json
import re
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from builder_samples import node_function, python_function, typescript_function
from google.api_core import exceptions as gexc
from google.cloud import (
    run_v2,
    storage,  # type: ignore[attr-defined]
)
from google.cloud.devtools import cloudbuild_v1

from cf2run.gcp.cloud import Backoff, Cloud, Polling
from cf2run.gcp.oci import ImageRef, RegistryClient
from cf2run.localcloud.cloudbuild.api import CloudBuildService
from cf2run.localcloud.cloudbuild.steps import PackBuild, PackConfig, StepNotSupported, parse_step, substitute
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import Fault, FaultInjector, LocalCloudSettings
from cf2run.manifest.spec import Target

PROJECT = "demo-project"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
BUILDER = "gcr.io/buildpacks/builder:google-22"
Status = cloudbuild_v1.Build.Status
HELLO = {"GOOGLE_FUNCTION_TARGET": "hello"}


@dataclass
class Stack:
    """The Cloud Build service, the official clients around it, and its knobs."""

    settings: LocalCloudSettings
    service: CloudBuildService
    builds: cloudbuild_v1.CloudBuildClient
    storage: storage.Client
    registry: RegistryClient
    state_dir: Path
    storage_url: str


@pytest.fixture(scope="module", autouse=True)
def functions_repository(localcloud: LocalCloud) -> None:
    """The repository the builds push into, created first as a user would (Artifact Registry
    takes images only into a repository that exists)."""
    localcloud.repositories.ensure(PROJECT, REGION, "functions")


@pytest.fixture
def cb(localcloud: LocalCloud, cloud: Cloud, knobs: LocalCloudSettings) -> Stack:
    """The session's local cloud seen from Cloud Build's side; knobs put back after the test."""
    return Stack(settings=knobs, service=localcloud.cloudbuild, builds=cloud.builds,
                 storage=cloud.storage, registry=cloud.registry,
                 state_dir=localcloud.state_dir / "cloudbuild", storage_url=localcloud.cloudbuild.storage_url)


@pytest.fixture(scope="module")
def python_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return python_function(tmp_path_factory.mktemp("py") / "src")


@pytest.fixture(scope="module")
def node_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return node_function(tmp_path_factory.mktemp("node") / "src")


def upload_source(gcs: storage.Client, source: Path) -> cloudbuild_v1.StorageSource:
    """Tar and upload like gcloud: gs://PROJECT_cloudbuild/source/STAMP-UUID.tgz, if_generation_match=0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    bucket = gcs.bucket(f"{PROJECT}_cloudbuild")
    if not bucket.exists():
        gcs.create_bucket(bucket.name)
    blob = bucket.blob(f"source/{time.time():.6f}-{uuid.uuid4().hex}.tgz")
    blob.upload_from_string(buffer.getvalue(), content_type="application/gzip", if_generation_match=0)
    return cloudbuild_v1.StorageSource(bucket=bucket.name, object_=blob.name, generation=blob.generation)


def image_name(name: str) -> str:
    return f"{REGION}-docker.pkg.dev/{PROJECT}/functions/{name}:v1"


def pack_build(source: cloudbuild_v1.StorageSource | None, image: str, env: dict[str, str],
               **fields: Any) -> cloudbuild_v1.Build:
    """The build `gcloud builds submit --pack image=IMAGE,env=...` creates (REFERENCE §1)."""
    env_args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    steps = [
        cloudbuild_v1.BuildStep(name="gcr.io/k8s-skaffold/pack", entrypoint="pack",
                                args=["config", "default-builder", BUILDER]),
        cloudbuild_v1.BuildStep(name="gcr.io/k8s-skaffold/pack", entrypoint="pack",
                                args=["build", image, "--network", "cloudbuild", *env_args]),
    ]
    build = cloudbuild_v1.Build(steps=steps, images=[image], timeout=timedelta(seconds=1200), **fields)
    if source is not None:
        build.source = cloudbuild_v1.Source(storage_source=source)
    return build


def submit(cb: Stack, build: cloudbuild_v1.Build) -> Any:
    return cb.builds.create_build(request=cloudbuild_v1.CreateBuildRequest(
        parent=PARENT, project_id=PROJECT, build=build))


def build_id(operation: Any) -> str:
    return str(operation.metadata.build.id)


def get(cb: Stack, ident: str) -> cloudbuild_v1.Build:
    return cb.builds.get_build(project_id=PROJECT, id=ident)


def wait_until(cb: Stack, ident: str, done: Callable[[cloudbuild_v1.Build], bool],
               timeout: float = 300) -> cloudbuild_v1.Build:
    deadline = time.monotonic() + timeout
    while True:
        build = get(cb, ident)
        if done(build):
            return build
        assert time.monotonic() < deadline, f"build {ident} still {build.status.name}"
        time.sleep(0.1)


def finished(cb: Stack, operation: Any) -> cloudbuild_v1.Build:
    return wait_until(cb, build_id(operation), lambda b: b.status not in (Status.QUEUED, Status.WORKING))


def build_log(cb: Stack, build: cloudbuild_v1.Build) -> str:
    return httpx.get(build.log_url, timeout=10).text


# -- builds that succeed --------------------------------------------------------------------------------

def test_python_pack_build_pushes_the_image_and_reports_it(cb: Stack, python_source: Path) -> None:
    image = image_name("py-hello")
    operation = submit(cb, pack_build(upload_source(cb.storage, python_source), image,
                                      {"GOOGLE_FUNCTION_TARGET": "hello", "GOOGLE_LABEL_PRICE": "$$5"}))
    assert operation.metadata.build.status in (Status.QUEUED, Status.WORKING)
    assert operation.operation.name.startswith(f"{PARENT}/operations/")

    build = operation.result(timeout=600)

    assert build.status == Status.SUCCESS
    assert build.name == f"{PARENT}/builds/{build.id}" and build.project_id == PROJECT
    assert build.create_time <= build.start_time <= build.finish_time
    [built] = build.results.images
    assert built.name == image
    head = cb.registry.head_manifest(ImageRef.parse(image))
    assert head is not None and built.digest == head.digest
    config = cb.registry.pull_image(ImageRef.parse(image)).config["config"]
    [process] = json.loads(config["Labels"]["io.buildpacks.build.metadata"])["processes"]
    assert process["type"] == "web" and process["command"][0] == "python3"
    assert config["Labels"]["google.price"] == "$5"  # $$ is Cloud Build's escape for $
    assert [s.status for s in build.steps] == [Status.SUCCESS, Status.SUCCESS]
    assert all(s.timing.end_time >= s.timing.start_time for s in build.steps)
    assert len(build.results.build_step_images) == 2
    assert build.logs_bucket == f"gs://{PROJECT}_cloudbuild_logs"
    log = build_log(cb, build)
    assert "Step #1: ===> DETECTING" in log and f"Successfully built image '{image}'" in log
    assert log.rstrip().endswith("DONE")
    assert get(cb, build.id).results.images[0].digest == built.digest


def test_a_deleted_logs_bucket_is_made_again(cb: Stack, python_source: Path) -> None:
    """The service makes the logs bucket once; if it is deleted meanwhile, the next log makes it again."""
    bucket = cb.storage.bucket(f"{PROJECT}_cloudbuild_logs")
    first = submit(cb, pack_build(upload_source(cb.storage, python_source), image_name("py-logs"),
                                  HELLO)).result(timeout=600)
    assert build_log(cb, first).rstrip().endswith("DONE")
    bucket.delete(force=True)

    again = submit(cb, pack_build(upload_source(cb.storage, python_source), image_name("py-logs"),
                                  HELLO)).result(timeout=600)
    assert again.status == Status.SUCCESS
    assert build_log(cb, again).rstrip().endswith("DONE")


def test_nodejs_pack_build_pushes_the_image(cb: Stack, node_source: Path) -> None:
    image = image_name("node-hello")
    operation = submit(cb, pack_build(upload_source(cb.storage, node_source), image,
                                      HELLO))
    build = operation.result(timeout=600)

    assert build.status == Status.SUCCESS
    head = cb.registry.head_manifest(ImageRef.parse(image))
    assert head is not None and build.results.images[0].digest == head.digest
    config = cb.registry.pull_image(ImageRef.parse(image)).config["config"]
    [process] = json.loads(config["Labels"]["io.buildpacks.build.metadata"])["processes"]
    assert process["command"][0] == "node"
    assert process["buildpackID"] == "google.nodejs.functions-framework"
    assert "npm ci" in build_log(cb, build)


def test_one_step_pack_build_with_a_builder_runs(cb: Stack, python_source: Path) -> None:
    """gcloud's `--pack image=I,builder=B` is ONE step, `pack build I --network cloudbuild
    --builder B` (googlecloudsdk/command_lib/builds/submit_util.py, `_SetBuildSteps`)."""
    image = image_name("py-one-step")
    step = cloudbuild_v1.BuildStep(name="gcr.io/k8s-skaffold/pack", entrypoint="pack", args=[
        "build", image, "--network", "cloudbuild", "--env", "GOOGLE_FUNCTION_TARGET=hello",
        "--builder", BUILDER])
    build = submit(cb, cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(storage_source=upload_source(cb.storage, python_source)),
        steps=[step], images=[image], timeout=timedelta(seconds=1200))).result(timeout=600)

    assert build.status == Status.SUCCESS
    assert [s.status for s in build.steps] == [Status.SUCCESS]
    head = cb.registry.head_manifest(ImageRef.parse(image))
    assert head is not None and build.results.images[0].digest == head.digest
    assert f"Step #0: Builder {BUILDER}" in build_log(cb, build)



def test_typescript_function_with_gcp_build_builds_and_serves(
        cb: Stack, localcloud: LocalCloud, cloud: Cloud, tmp_path: Path) -> None:
    """A `gcp-build: tsc` script runs with devDependencies installed, its dist/ is the app, and
    the devDependencies are pruned (GoogleCloudPlatform/buildpacks cmd/nodejs/npm/lib/lib.go)."""
    image = image_name("ts-hello")
    source = typescript_function(tmp_path / "src")
    operation = submit(cb, pack_build(upload_source(cb.storage, source), image, HELLO))
    build = operation.result(timeout=600)
    log = build_log(cb, build)
    assert build.status == Status.SUCCESS, log
    assert log.index("Running npm run gcp-build") < log.index("node --check dist/index.js")

    pulled = cb.registry.pull_image(ImageRef.parse(image))
    files = {name for layer in pulled.layers for name in _tar_names(layer)}
    assert "workspace/dist/index.js" in files and "workspace/src/index.ts" in files
    assert not any(name.startswith("workspace/node_modules/typescript/") for name in files)

    parent = f"projects/{PROJECT}/locations/{REGION}"
    service = cloud.services.create_service(parent=parent, service_id=f"ts-{uuid.uuid4().hex[:6]}",
                                            service=run_v2.Service(template=run_v2.RevisionTemplate(
                                                containers=[run_v2.Container(image=image)]))
                                            ).result(timeout=120)
    answer = httpx.get(service.uri, headers={"Authorization": f"Bearer {localcloud.id_token(service.uri)}"},
                       timeout=30)
    assert answer.text == "HELLO FROM TYPESCRIPT"


def _tar_names(layer: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        return tar.getnames()


# -- builds that fail -----------------------------------------------------------------------------------

def test_undefined_target_fails_with_the_builders_message(cb: Stack, python_source: Path) -> None:
    operation = submit(cb, pack_build(upload_source(cb.storage, python_source), image_name("bad-target"),
                                      {"GOOGLE_FUNCTION_TARGET": "nope"}))
    with pytest.raises(gexc.GoogleAPICallError) as caught:
        operation.result(timeout=600)
    assert "Build failed" in caught.value.message

    build = get(cb, build_id(operation))
    expected = "File main.py is expected to contain a function named 'nope'"
    assert build.status == Status.FAILURE
    # As Google: status_detail empty, failure_info names the step, the step's words in the log.
    assert build.status_detail == ""
    assert build.failure_info.type_ == build.failure_info.FailureType.USER_BUILD_STEP
    assert build.failure_info.detail == ('Build step failure: build step 1 "gcr.io/k8s-skaffold/pack" '
                                         "failed: step exited with non-zero status: 1")
    assert [s.status for s in build.steps] == [Status.SUCCESS, Status.FAILURE]
    log = build_log(cb, build)
    assert f"Step #1: ERROR: {expected}" in log
    assert log.rstrip().endswith('ERROR: build step 1 "gcr.io/k8s-skaffold/pack" failed: step exited '
                                 "with non-zero status: 1")
    assert "GOOGLE_FUNCTION_TARGET to" not in log  # cf2run's hints are the pipeline's, not the log's
    assert not build.results.images
    assert cb.registry.head_manifest(ImageRef.parse(image_name("bad-target"))) is None


def test_push_to_a_missing_repository_fails_the_build_as_push_failed(cb: Stack, python_source: Path) -> None:
    """Cloud Build pushes `images` after the steps; Artifact Registry refuses a repository that does
    not exist, so the steps succeed and the build fails in PUSH with failure_info PUSH_FAILED."""
    image = f"{REGION}-docker.pkg.dev/{PROJECT}/no-such-repository/fn:v1"
    result = finished(cb, submit(cb, pack_build(upload_source(cb.storage, python_source), image, HELLO)))
    assert result.status == Status.FAILURE
    assert result.failure_info.type_ == cloudbuild_v1.Build.FailureInfo.FailureType.PUSH_FAILED
    assert result.status_detail == f'error pushing image "{image}": exit status 1'
    assert [s.status for s in result.steps] == [Status.SUCCESS, Status.SUCCESS]
    log = build_log(cb, result)
    resource = f"projects/{PROJECT}/locations/{REGION}/repositories/no-such-repository"
    assert ('denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on resource '
            f'"{resource}" (or it may not exist)') in log
    assert "ERROR: failed to push because we ran out of retries." in log
    assert not result.results.images


def test_unsupported_step_fails_naming_it(cb: Stack, python_source: Path) -> None:
    build = pack_build(upload_source(cb.storage, python_source), image_name("docker"),
                       HELLO)
    build.steps.append(cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker",
                                               args=["push", image_name("docker")]))
    result = finished(cb, submit(cb, build))
    assert result.status == Status.FAILURE
    assert "step #2 (gcr.io/cloud-builders/docker push" in result.status_detail
    assert "not supported" in result.status_detail
    assert result.steps[2].status == Status.FAILURE


def test_wrong_source_generation_fails(cb: Stack, python_source: Path) -> None:
    source = upload_source(cb.storage, python_source)
    real = source.generation
    source.generation = real + 1
    result = finished(cb, submit(cb, pack_build(source, image_name("gen"), HELLO)))
    assert result.status == Status.FAILURE
    assert f"generation {real + 1} not found" in result.status_detail
    assert f"current generation is {real}" in result.status_detail

    source.object_ = "source/missing.tgz"
    result = finished(cb, submit(cb, pack_build(source, image_name("gen"), HELLO)))
    assert result.status == Status.FAILURE and "does not exist" in result.status_detail


def test_fail_builds_matching_knob_fails_matching_builds(cb: Stack, python_source: Path) -> None:
    cb.settings.fail_builds_matching = "doomed"
    result = finished(cb, submit(cb, pack_build(upload_source(cb.storage, python_source),
                                                image_name("doomed-fn"), HELLO)))
    assert result.status == Status.FAILURE
    assert "fail_builds_matching" in build_log(cb, result)


def test_timeout_ends_the_build_as_timeout(cb: Stack, python_source: Path) -> None:
    cb.settings.build_latency_s = 30
    build = pack_build(upload_source(cb.storage, python_source), image_name("slow"),
                       HELLO)
    build.timeout = timedelta(seconds=1)
    operation = submit(cb, build)
    with pytest.raises(gexc.GoogleAPICallError):
        operation.result(timeout=60)
    result = get(cb, build_id(operation))
    assert result.status == Status.TIMEOUT
    assert (result.finish_time - result.start_time).total_seconds() < 10


# -- quota, cancel, listing -----------------------------------------------------------------------------

def test_builds_over_the_quota_wait_queued(cb: Stack, python_source: Path) -> None:
    cb.settings.max_concurrent_builds = 1
    cb.settings.build_latency_s = 2
    source = upload_source(cb.storage, python_source)
    env = HELLO
    first = build_id(submit(cb, pack_build(source, image_name("quota-a"), env)))
    second = build_id(submit(cb, pack_build(source, image_name("quota-b"), env)))

    wait_until(cb, first, lambda b: b.status == Status.WORKING)
    assert get(cb, second).status == Status.QUEUED
    done_first = wait_until(cb, first, lambda b: b.status == Status.SUCCESS)
    done_second = wait_until(cb, second, lambda b: b.status == Status.SUCCESS)
    assert done_second.start_time >= done_first.finish_time


def test_cancel_build_cancels_queued_and_working_builds(cb: Stack, python_source: Path) -> None:
    cb.settings.max_concurrent_builds = 1
    cb.settings.build_latency_s = 30
    source = upload_source(cb.storage, python_source)
    working = build_id(submit(cb, pack_build(source, image_name("cancel-a"), HELLO)))
    queued = build_id(submit(cb, pack_build(source, image_name("cancel-b"), HELLO)))
    wait_until(cb, working, lambda b: b.status == Status.WORKING)

    assert cb.builds.cancel_build(project_id=PROJECT, id=queued).status == Status.CANCELLED
    assert cb.builds.cancel_build(project_id=PROJECT, id=working).status == Status.CANCELLED
    assert get(cb, working).finish_time


def test_list_builds_newest_first_with_filters_and_pages(cb: Stack, python_source: Path) -> None:
    source = upload_source(cb.storage, python_source)
    tag = f"t-{uuid.uuid4().hex[:8]}"
    ids = [build_id(submit(cb, pack_build(source, image_name("listed"), HELLO,
                                          tags=[tag]))) for _ in range(3)]
    for ident in ids:
        wait_until(cb, ident, lambda b: b.status == Status.SUCCESS)

    listed = cb.builds.list_builds(request=cloudbuild_v1.ListBuildsRequest(
        project_id=PROJECT, parent=PARENT, filter=f'tags="{tag}"', page_size=2))
    pages = list(listed.pages)
    assert [len(page.builds) for page in pages] == [2, 1]
    assert [b.id for page in pages for b in page.builds] == ids[::-1]

    succeeded = cb.builds.list_builds(project_id=PROJECT, filter=f'status="SUCCESS" AND tags="{tag}"')
    assert {b.id for b in succeeded} == set(ids)
    assert not list(cb.builds.list_builds(project_id=PROJECT, filter=f'status="FAILURE" AND tags="{tag}"'))
    with pytest.raises(gexc.InvalidArgument, match="unsupported filter"):
        list(cb.builds.list_builds(project_id=PROJECT, filter='create_time>"2020-01-01"'))


def test_builds_survive_a_restart(cb: Stack, python_source: Path) -> None:
    operation = submit(cb, pack_build(upload_source(cb.storage, python_source), image_name("kept"),
                                      HELLO))
    build = operation.result(timeout=600)

    again = CloudBuildService(cb.state_dir, cb.settings, FaultInjector(cb.settings), cb.storage_url,
                              cb.registry)
    listed = again.list_builds(cloudbuild_v1.ListBuildsRequest(project_id=PROJECT, filter=f'id="{build.id}"'))
    assert [(b.id, b.status, b.results.images[0].digest) for b in listed.builds] == [
        (build.id, Status.SUCCESS, build.results.images[0].digest)]
    assert again.operations.get(operation.operation.name).done


# -- validation and faults ------------------------------------------------------------------------------

def test_create_build_is_validated_like_google(cb: Stack) -> None:
    step = cloudbuild_v1.BuildStep(name="gcr.io/k8s-skaffold/pack", args=["config", "default-builder", "b"])
    with pytest.raises(gexc.InvalidArgument, match="project"):
        cb.builds.create_build(project_id="", build=cloudbuild_v1.Build(steps=[step]))
    with pytest.raises(gexc.InvalidArgument, match="at least one step"):
        cb.builds.create_build(project_id=PROJECT, build=cloudbuild_v1.Build())
    with pytest.raises(gexc.InvalidArgument, match='"FOO" is not a valid built-in substitution'):
        cb.builds.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(
            steps=[cloudbuild_v1.BuildStep(name="gcr.io/k8s-skaffold/pack", args=["build", "$FOO"])]))
    with pytest.raises(gexc.NotFound):
        cb.builds.get_build(project_id=PROJECT, id=str(uuid.uuid4()))


def test_injected_fault_on_create_build_reaches_the_client(cb: Stack, python_source: Path) -> None:
    cb.settings.faults = [Fault(method="CloudBuild.CreateBuild", code="UNAVAILABLE", first_n=1)]
    build = pack_build(upload_source(cb.storage, python_source), image_name("faulty"),
                       HELLO)
    with pytest.raises(gexc.ServiceUnavailable, match="injected fault"):
        cb.builds.create_build(project_id=PROJECT, build=build, retry=None)
    assert finished(cb, submit(cb, build)).status == Status.SUCCESS  # first_n=1: the retry goes through


# -- what a step may be ---------------------------------------------------------------------------------

def test_pack_steps_parse_as_gcloud_writes_them() -> None:
    assert parse_step(0, "gcr.io/k8s-skaffold/pack", "pack", ["config", "default-builder", BUILDER]) \
        == PackConfig(builder=BUILDER)
    parsed = parse_step(1, "gcr.io/k8s-skaffold/pack:latest", "", [
        "build", "img", "--network", "cloudbuild", "--env", "A=1=2", "--env=B=", "--builder", "b",
        "--path", "fn", "--publish"])
    assert parsed == PackBuild(image="img", env={"A": "1=2", "B": ""}, builder="b", path="fn")


@pytest.mark.parametrize(("name", "args", "expected"), [
    ("gcr.io/cloud-builders/docker", ["build", "."],
     "step #3 (gcr.io/cloud-builders/docker build .) is not supported"),
    ("gcr.io/k8s-skaffold/pack", ["build", "img", "--clear-cache"], "flag '--clear-cache'"),
    ("gcr.io/k8s-skaffold/pack", ["config", "trusted-builders", "add", "b"], "'config trusted-builders'"),
    ("gcr.io/k8s-skaffold/pack", ["build", "img", "--env", "NOEQUALS"], "not KEY=VALUE"),
])
def test_other_steps_are_refused_by_name(name: str, args: list[str], expected: str) -> None:
    with pytest.raises(StepNotSupported, match=re.escape(expected)):
        parse_step(3, name, "", args)


def test_substitutions_follow_cloud_build() -> None:
    values = {"PROJECT_ID": "p", "_REGION": "eu"}
    assert substitute("$$5 ${PROJECT_ID}/$_REGION $$HOME", values) == "$5 p/eu $HOME"
    with pytest.raises(ValueError, match='"FOO" is not a valid built-in substitution'):
        substitute("$FOO", values)
    assert substitute("a$_MISSING", values, loose=True) == "a"


# -- how the pipeline polls (tasks/build.py: wait_for_build) ------------------------------------------

def test_builds_started_before_any_ended_poll_quickly_once_the_first_ends(
        cb: Stack, cloud: Cloud, python_source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet's first builds have no build length to go by, so they poll on the plain backoff;
    when the first one ends, the others switch to quick asks around its length at once."""
    from tasks import build as build_task

    source = upload_source(cb.storage, python_source)
    finished(cb, submit(cb, pack_build(source, image_name("learn-warm"), HELLO)))  # deps cached
    monkeypatch.setattr(build_task, "RECENT_BUILDS", build_task.RecentBuilds())  # no history
    backoff = Backoff(first_s=0.2, maximum_s=2.0, factor=2.0)  # asks at 0.2, 0.6, 1.4, 3.0 s ...
    polled = copy.copy(cloud)
    polled.polling = Polling(build=backoff, operation=cloud.polling.operation)
    cb.settings.build_latency_s = 1.0
    target = Target(project=PROJECT, region=REGION)
    seen: dict[str, tuple[float, cloudbuild_v1.Build]] = {}

    def build_and_wait(name: str) -> None:
        sent = time.monotonic()
        ident = build_id(submit(cb, pack_build(source, image_name(name), HELLO)))
        build = build_task.wait_for_build(polled, target, ident, name, sent)
        seen[name] = (time.monotonic() - sent, build)

    first = threading.Thread(target=build_and_wait, args=("learn-first",))
    first.start()
    time.sleep(0.5)
    build_and_wait("learn-second")
    first.join()

    def plain_backoff_sees(build: cloudbuild_v1.Build) -> float:
        length = (build.finish_time - build.create_time).total_seconds()
        return next(at for at in backoff.schedule(None) if at >= length)

    (first_s, first_build), (second_s, second_build) = seen["learn-first"], seen["learn-second"]
    assert first_build.status == second_build.status == Status.SUCCESS
    assert first_s >= plain_backoff_sees(first_build) - 0.01, "the first had nothing to go by"
    assert second_s < plain_backoff_sees(second_build) - 0.1, (second_s, seen)
