"""The local gRPC services treat request fields as `google.api.field_behavior` says (AIP-203):
a missing REQUIRED field is INVALID_ARGUMENT, OUTPUT_ONLY values are ignored and never stored,
an IMMUTABLE field may not change. Driven through the official clients over real sockets; the
annotations are googleapis/googleapis' (cf2run/localcloud/frontend/field_behavior_table.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from builder_samples import python_function
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1
from google.iam.v1 import iam_policy_pb2
from test_cloudbuild import (  # noqa: F401 - functions_repository: its builds push there
    PROJECT,
    REGION,
    Stack,
    finished,
    functions_repository,
    image_name,
    pack_build,
    submit,
    upload_source,
)
from test_cloudrun import APP, PARENT, Env, create, env_of, service_of, unique, update

from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.frontend import fieldbehavior
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings

Status = cloudbuild_v1.Build.Status
Ready = run_v2.Condition.State


@pytest.fixture(scope="module")
def run(localcloud: LocalCloud, cloud: Cloud) -> Env:
    return env_of(localcloud, cloud)


@pytest.fixture(scope="module")
def hello(run: Env) -> str:
    return run.push_app(APP.format(greeting="hello"))


@pytest.fixture
def cb(localcloud: LocalCloud, cloud: Cloud, knobs: LocalCloudSettings) -> Stack:
    return Stack(settings=knobs, service=localcloud.cloudbuild, builds=cloud.builds,
                 storage=cloud.storage, registry=cloud.registry,
                 state_dir=localcloud.state_dir / "cloudbuild", storage_url=localcloud.cloudbuild.storage_url)


# -- REQUIRED --------------------------------------------------------------------------------


def _with_probe_header(image: str) -> run_v2.Service:
    service = service_of(image)
    service.template.containers[0].startup_probe = run_v2.Probe(http_get=run_v2.HTTPGetAction(
        path="/", http_headers=[run_v2.HTTPHeader(value="no name")]))
    return service


def _with_secret_item(image: str) -> run_v2.Service:
    service = service_of(image)
    service.template.volumes = [run_v2.Volume(name="conf", secret=run_v2.SecretVolumeSource(
        secret="conf", items=[run_v2.VersionToPath(version="1")]))]
    return service


@pytest.mark.parametrize(("make", "field"), [
    (_with_probe_header, "service.template.containers[0].startup_probe.http_get.http_headers[0].name"),
    (_with_secret_item, "service.template.volumes[0].secret.items[0].path"),
])
def test_cloud_run_refuses_a_nested_required_field_left_out(
        run: Env, hello: str, make: object, field: str) -> None:
    """HTTPHeader.name and VersionToPath.path are REQUIRED when their message is there
    (googleapis google/cloud/run/v2/k8s.min.proto); nothing is created."""
    name = unique("required")
    with pytest.raises(gexc.InvalidArgument) as refused:
        run.services.create_service(parent=PARENT, service_id=name, service=make(hello))  # type: ignore[operator]
    assert str(refused.value).endswith(
        f"Violation in CreateServiceRequest.{field}: required field not present.")
    with pytest.raises(gexc.NotFound):
        run.services.get_service(name=f"{PARENT}/services/{name}")


def test_cloud_run_set_iam_policy_needs_a_policy(run: Env, hello: str) -> None:
    """SetIamPolicyRequest.policy is REQUIRED (google/iam/v1/iam_policy.proto): leaving it out
    must not wipe the service's bindings."""
    service = create(run, unique("iam"), service_of(hello))
    with pytest.raises(gexc.InvalidArgument, match=r"SetIamPolicyRequest\.policy: required field"):
        run.services.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=service.name))


def test_cloud_build_refuses_a_source_without_its_object(cb: Stack) -> None:
    """StorageSource.object is REQUIRED: refused when the build is asked for, not failed later."""
    build = pack_build(cloudbuild_v1.StorageSource(bucket=f"{PROJECT}_cloudbuild"),
                       image_name("no-object"), {"GOOGLE_FUNCTION_TARGET": "hello"})
    with pytest.raises(gexc.InvalidArgument,
                       match=r"build\.source\.storage_source\.object must be specified"):
        submit(cb, build)


def test_cloud_build_resource_names_stand_for_project_and_id(cb: Stack) -> None:
    """GetBuildRequest's REQUIRED project_id and id are its first HTTP binding's path; its
    other binding is `name` (what gcloud's regional commands send), so either way names it."""
    with pytest.raises(gexc.InvalidArgument, match=r"^400 id must be specified"):
        cb.builds.get_build(project_id=PROJECT)
    with pytest.raises(gexc.NotFound):
        cb.builds.get_build(name=f"projects/{PROJECT}/locations/{REGION}/builds/no-such-build")


# -- OUTPUT_ONLY -----------------------------------------------------------------------------


def test_cloud_run_ignores_output_only_fields_it_is_sent(run: Env, hello: str) -> None:
    forged_time = datetime(2001, 1, 1, tzinfo=UTC)
    given = service_of(hello)
    given.uri = "https://forged.example"
    given.create_time = forged_time
    given.satisfies_pzs = True
    given.threat_detection_enabled = True
    given.terminal_condition = run_v2.Condition(type_="Ready", state=Ready.CONDITION_FAILED,
                                                message="forged")
    created = create(run, unique("output"), given)

    stored = run.services.get_service(name=created.name)
    assert stored.uri.startswith("http://127.0.0.1:")
    assert stored.create_time > forged_time + timedelta(days=365)
    assert not stored.satisfies_pzs and not stored.threat_detection_enabled
    assert stored.terminal_condition.state == Ready.CONDITION_SUCCEEDED

    again = run_v2.Service(stored)  # an update that echoes what it read, output fields and all
    again.satisfies_pzs = True
    again.latest_ready_revision = f"{created.name}/revisions/forged"
    updated = update(run, again)
    assert not updated.satisfies_pzs
    assert updated.latest_ready_revision == stored.latest_ready_revision


def test_cloud_build_ignores_output_only_fields_it_is_sent(cb: Stack, tmp_path: Path) -> None:
    image = image_name(f"forged-{tmp_path.name[-6:]}".lower().replace("_", "-"))
    build = pack_build(upload_source(cb.storage, python_function(tmp_path / "src")), image,
                       {"GOOGLE_FUNCTION_TARGET": "hello"})
    build.status = Status.SUCCESS
    build.build_trigger_id = "forged-trigger"
    build.warnings = [cloudbuild_v1.Build.Warning(text="forged")]
    build.failure_info = cloudbuild_v1.Build.FailureInfo(detail="forged")
    build.results = cloudbuild_v1.Results(images=[cloudbuild_v1.BuiltImage(
        name=image, digest="sha256:" + "f" * 64)])
    operation = submit(cb, build)
    assert operation.metadata.build.status in (Status.QUEUED, Status.WORKING)

    done = finished(cb, operation)
    assert done.status == Status.SUCCESS, done.status_detail
    assert [i.digest for i in done.results.images] != ["sha256:" + "f" * 64]
    assert not done.build_trigger_id and not done.warnings and "failure_info" not in done
    assert not list(cb.builds.list_builds(project_id=PROJECT, filter='build_trigger_id="forged-trigger"'))


# -- IMMUTABLE -------------------------------------------------------------------------------


def test_an_immutable_field_may_be_repeated_but_not_changed() -> None:
    """No field the local services take (Cloud Run Service, Cloud Build Build) is IMMUTABLE in
    googleapis; Cloud Build's WorkerPool network is, and shows the rule they would follow."""
    Config = cloudbuild_v1.PrivatePoolV1Config

    def pool(network: str) -> cloudbuild_v1.WorkerPool:
        return cloudbuild_v1.WorkerPool(private_pool_v1_config=Config(
            network_config=Config.NetworkConfig(peered_network=network)))

    current = pool("projects/p/global/networks/a")
    assert fieldbehavior.changed_immutable(pool("projects/p/global/networks/a"), current) is None
    assert fieldbehavior.changed_immutable(cloudbuild_v1.WorkerPool(), current) is None
    assert (fieldbehavior.changed_immutable(pool("projects/p/global/networks/b"), current)
            == "private_pool_v1_config.network_config.peered_network")
