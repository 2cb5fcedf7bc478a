"""The local Cloud Run v2, through the official `google.cloud.run_v2` clients over real sockets.

Images are real: a tiny web app (stdlib only) is pushed to the local registry as an OCI image
with a buildpacks ``web`` process, and the runtime runs it as a process, as it runs built
functions. Rules that are Google's cite REFERENCE.md §4 and the sources in cloudrun/rules.py.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import socket
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2

from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import ImageRef, Layer, RegistryClient
from cf2run.localcloud.registry.repositories import RepositoryExists
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import Fault, LocalCloudSettings

PARENT = "projects/local-project/locations/us-central1"
State = run_v2.Condition.State
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION

APP = '''\
import http.server, os
GREETING = os.environ.get("GREETING", {greeting!r})

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{{GREETING}} from {{os.environ['K_REVISION']}}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("listening on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''
CRASH = '''\
import sys
print("loading settings", flush=True)
print("KeyError: DATABASE_URL is not set", flush=True)
sys.exit(3)
'''


# -- a local Cloud Run, and what the tests need of it ------------------------------------------


@dataclass
class Env:
    """What the tests use of a local cloud: the official clients, its knobs, ID tokens, logs."""

    services: run_v2.ServicesClient
    revisions: run_v2.RevisionsClient
    settings: LocalCloudSettings
    registry: RegistryClient
    id_token: Callable[[str], str]
    logs: Callable[[str], str]

    def push_app(self, source: str) -> str:
        """Push an image whose web process runs `source` with python3; returns its reference."""
        ref = ImageRef.parse(f"us-central1-docker.pkg.dev/local-project/apps/app-{uuid.uuid4().hex[:8]}:v1")
        self.registry.push_image(
            ref, json.dumps(_image_config()).encode(), [Layer(data=_layer({"workspace/app.py": source}))])
        return str(ref)


def env_of(localcloud: LocalCloud, clients: Cloud | None = None) -> Env:
    with contextlib.suppress(RepositoryExists):  # where push_app pushes: created first, as a user would
        localcloud.create_repository("apps")
    clients = clients or Cloud.local(localcloud.endpoints)
    return Env(clients.services, clients.revisions, localcloud.settings,
               clients.registry, localcloud.id_token, localcloud.logs)


@contextlib.contextmanager
def local_cloud(state_dir: Path) -> Iterator[Env]:
    """A local cloud of its own, kept in `state_dir`: a restart there reuses its ports."""
    with LocalCloud(state_dir=state_dir, settings=LocalCloudSettings(ready_deadline_s=20)) as own:
        yield env_of(own)


def _layer(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue())


def _image_config() -> dict[str, object]:
    web = {"type": "web", "command": ["python3"], "args": ["/workspace/app.py"], "direct": True}
    return {"architecture": "amd64", "os": "linux",
            "config": {"WorkingDir": "/workspace",
                       "Labels": {"io.buildpacks.build.metadata": json.dumps({"processes": [web]})}},
            "rootfs": {"type": "layers", "diff_ids": []}}


@pytest.fixture(scope="module")
def env(localcloud: LocalCloud, cloud: Cloud) -> Env:
    """The session's local cloud (conftest), as these tests use it."""
    return env_of(localcloud, cloud)


@pytest.fixture(scope="module")
def hello_v1(env: Env) -> str:
    return env.push_app(APP.format(greeting="hello v1"))


@pytest.fixture(scope="module")
def hello_v2(env: Env) -> str:
    return env.push_app(APP.format(greeting="hello v2"))


@pytest.fixture(scope="module")
def crasher(env: Env) -> str:
    return env.push_app(CRASH)


# -- helpers ------------------------------------------------------------------------------------


def service_of(image: str, **template: object) -> run_v2.Service:
    return run_v2.Service(template=run_v2.RevisionTemplate(
        containers=[run_v2.Container(image=image)], **template))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create(env: Env, service_id: str, service: run_v2.Service) -> run_v2.Service:
    operation = env.services.create_service(parent=PARENT, service=service, service_id=service_id)
    return operation.result(timeout=60)


def update(env: Env, service: run_v2.Service) -> run_v2.Service:
    return env.services.update_service(service=service).result(timeout=60)


def make_public(env: Env, name: str) -> None:
    policy = env.services.get_iam_policy(request={"resource": name})
    policy.bindings.add(role="roles/run.invoker", members=["allUsers"])
    env.services.set_iam_policy(request={"resource": name, "policy": policy})


def get(url: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=headers, timeout=10)


def revision_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def stopped(env: Env, service_id: str, revision: str) -> bool:
    """Whether the revision's process has ended (the runtime logs how each one ends)."""
    return f"[{revision}] Container terminated on signal 15." in env.logs(service_id)


def stops(env: Env, service_id: str, revision: str, timeout_s: float = 10.0) -> bool:
    """Whether the revision's process ends within `timeout_s`: an update's operation is done
    once traffic moved, and the revisions left without traffic are stopped right after."""
    deadline = time.monotonic() + timeout_s
    while not stopped(env, service_id, revision):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- validation (REFERENCE §4) ------------------------------------------------------------------


def invalid_cases() -> list[tuple[str, str, run_v2.Service, type[Exception], str]]:
    image = "us-central1-docker.pkg.dev/p/r/img:v1"

    def with_container(**container: object) -> run_v2.Service:
        return run_v2.Service(template=run_v2.RevisionTemplate(
            containers=[run_v2.Container(image=image, **container)]))

    def limits(**values: str) -> run_v2.Service:
        return with_container(resources=run_v2.ResourceRequirements(limits=values))

    env = [run_v2.EnvVar(name="GREETING", value="hi"), run_v2.EnvVar(name="K_SERVICE", value="x")]
    return [
        ("Bad_Name", PARENT, service_of(image), exceptions.InvalidArgument,
         "CreateServiceRequest.service_id"),
        ("ends-with-", PARENT, service_of(image), exceptions.InvalidArgument,
         "CreateServiceRequest.service_id"),
        ("a" * 50, PARENT, service_of(image), exceptions.InvalidArgument,
         "must be less than 50 characters"),
        ("svc", "projects/p/regions/us-central1", service_of(image), exceptions.InvalidArgument,
         "CreateServiceRequest.parent"),
        ("svc", PARENT, with_container(env=[run_v2.EnvVar(name="PORT", value="8080")]),
         exceptions.InvalidArgument, "service.template.containers[0].env[0].name: The following "
         "reserved env names were provided: PORT"),
        ("svc", PARENT, with_container(env=env), exceptions.InvalidArgument,
         "service.template.containers[0].env[1].name"),
        ("svc", PARENT, run_v2.Service(template=run_v2.RevisionTemplate(
            containers=[run_v2.Container()])), exceptions.InvalidArgument,
         "service.template.containers[0].image"),
        ("svc", PARENT, run_v2.Service(template=run_v2.RevisionTemplate()),
         exceptions.InvalidArgument, "service.template.containers: exactly one container"),
        ("svc", PARENT, limits(cpu="0.5"), exceptions.InvalidArgument,
         "resources.limits[cpu]: Invalid value specified for cpu. Total cpu < 1 is not supported "
         "with concurrency > 1"),
        ("svc", PARENT, limits(cpu="1", memory="8Gi"), exceptions.InvalidArgument,
         "resources.limits[memory]: Invalid value specified for container memory. For 1.0 CPU, "
         "memory must be between 128Mi and 4Gi inclusive."),
        ("svc", PARENT, service_of(image, max_instance_request_concurrency=1001),
         exceptions.InvalidArgument, "service.template.max_instance_request_concurrency"),
        ("svc", PARENT, service_of(image, timeout=timedelta(seconds=3601)),
         exceptions.InvalidArgument, "service.template.timeout"),
        ("svc", PARENT, run_v2.Service(annotations={"run.googleapis.com/ingress": "all"},
                                       template=service_of(image).template),
         exceptions.InvalidArgument, "service.annotations[run.googleapis.com/ingress]: system "
         "annotations are not supported in Cloud Run API v2."),
        ("svc", PARENT, service_of(image, annotations={"autoscaling.knative.dev/maxScale": "3"}),
         exceptions.InvalidArgument, "service.template.annotations[autoscaling.knative.dev/maxScale]"),
        ("svc", PARENT, service_of(image, scaling=run_v2.RevisionScaling(
            min_instance_count=3, max_instance_count=2)),
         exceptions.InvalidArgument, "service.template.scaling.max_instance_count: must be greater "
         "or equal than min_instance_count."),
        ("svc", PARENT, service_of(image, revision="other-00001"), exceptions.InvalidArgument,
         "service.template.revision"),
        ("svc", PARENT, run_v2.Service(template=service_of(image).template, traffic=[
            run_v2.TrafficTarget(type_=LATEST, percent=100, tag="t" * 44)]),
         exceptions.InvalidArgument, "service.traffic[0].tag: traffic tag '" + "t" * 44 + "' and "
         "service name 'svc' together are too long. Combined traffic tag and service name cannot "
         "exceed 46 characters."),
        ("svc", PARENT, run_v2.Service(template=service_of(image).template, traffic=[
            run_v2.TrafficTarget(type_=LATEST, percent=90)]),
         exceptions.InvalidArgument, "service.traffic: traffic percents must add up to 100"),
        ("svc", PARENT, run_v2.Service(template=service_of(image).template, traffic=[
            run_v2.TrafficTarget(type_=REVISION, revision="svc-00009-abc", percent=100)]),
         exceptions.InvalidArgument, "service.traffic[0].revision: Revision 'svc-00009-abc' does "
         "not exist or is deleted."),
        ("svc", PARENT, run_v2.Service(template=service_of(image).template,
                                       binary_authorization=run_v2.BinaryAuthorization(
                                           use_default=False, breakglass_justification="x")),
         exceptions.InvalidArgument, "service.binary_authorization.breakglass_justification"),
        ("svc", PARENT, run_v2.Service(template=service_of(image).template,
                                       binary_authorization=run_v2.BinaryAuthorization(policy="p")),
         exceptions.InvalidArgument, "service.binary_authorization.policy"),
        ("svc", PARENT, run_v2.Service(template=service_of(image).template,
                                       scaling=run_v2.ServiceScaling(min_instance_count=3,
                                                                     max_instance_count=2)),
         exceptions.InvalidArgument, "service.scaling.max_instance_count: must be greater"),
        ("svc", PARENT, run_v2.Service(template=service_of(image).template,
                                       scaling=run_v2.ServiceScaling(manual_instance_count=2)),
         exceptions.InvalidArgument, "service.scaling.manual_instance_count"),
    ]


@pytest.mark.parametrize(("service_id", "parent", "service", "error", "says"), invalid_cases(),
                         ids=lambda value: None)
def test_invalid_services_are_rejected_naming_the_field(
        env: Env, service_id: str, parent: str, service: run_v2.Service,
        error: type[Exception], says: str) -> None:
    with pytest.raises(error) as raised:
        env.services.create_service(parent=parent, service=service, service_id=service_id)
    assert says in str(raised.value)
    assert "Violation in CreateServiceRequest." in str(raised.value)


def test_max_instances_above_the_regional_quota_are_refused(env: Env) -> None:
    """3000 instances x the default 1 vCPU exceed the region's CPU quota (the local cloud's
    knob run_cpu_quota, 1000 vCPU): INVALID_ARGUMENT with Google's text (friendlyeats-web#291);
    nothing is created."""
    service_id = unique("quota")
    service = service_of("us-central1-docker.pkg.dev/p/r/img:v1",
                         scaling=run_v2.RevisionScaling(max_instance_count=3000))
    with pytest.raises(exceptions.InvalidArgument) as raised:
        env.services.create_service(parent=PARENT, service=service, service_id=service_id)
    assert raised.value.message == (
        "template.containers.resources.limits.cpu: Invalid value specified for cpu. For the "
        "specified value, maxScale may not exceed 1000.\nConsider running your workload in a region "
        "with greater capacity, decreasing your requested cpu-per-instance, or requesting an "
        "increase in quota for this region if you are seeing sustained usage near this limit, see "
        "https://cloud.google.com/run/quotas. Your project may gain access to further scaling by "
        "adding billing information to your account.")
    with pytest.raises(exceptions.NotFound):
        env.services.get_service(name=f"{PARENT}/services/{service_id}")


def test_existing_missing_and_stale_services_are_refused(env: Env, hello_v1: str) -> None:
    name = unique("exists")
    created = create(env, name, service_of(hello_v1))

    with pytest.raises(exceptions.AlreadyExists, match=f"Resource '{name}' already exists"):
        env.services.create_service(parent=PARENT, service=service_of(hello_v1), service_id=name)

    missing = service_of(hello_v1)
    missing.name = f"{PARENT}/services/{unique('missing')}"
    with pytest.raises(exceptions.NotFound, match="of kind 'SERVICE' in region 'us-central1'"):
        env.services.update_service(service=missing)

    stale = run_v2.Service(created)
    stale.etag = '"not-the-etag"'
    with pytest.raises(exceptions.Aborted, match="etag"):  # AIP-154: etag mismatch is ABORTED
        env.services.update_service(service=stale)

    renamed = run_v2.Service(created)  # the same revision name with another template
    taken = revision_id(created.latest_created_revision)
    renamed.template.revision = taken
    renamed.template.containers[0].env.append(run_v2.EnvVar(name="GREETING", value="changed"))
    with pytest.raises(exceptions.AlreadyExists) as raised:
        env.services.update_service(service=renamed)
    assert raised.value.message == \
        f"Revision named '{taken}' with different configuration already exists."


def test_an_update_without_a_mask_replaces_the_whole_service(env: Env, hello_v1: str) -> None:
    """AIP-134: no update_mask = full replacement; a field the update does not send is cleared."""
    name = unique("replace")
    created = create(env, name, run_v2.Service(
        template=service_of(hello_v1).template, description="kept?", labels={"team": "blue"},
        scaling=run_v2.ServiceScaling(min_instance_count=1), custom_audiences=["https://a.example"],
        binary_authorization=run_v2.BinaryAuthorization(use_default=True)))
    assert (created.description, created.scaling.min_instance_count) == ("kept?", 1)
    bare = run_v2.Service(name=created.name, template=created.template)
    replaced = update(env, bare)
    assert (replaced.description, dict(replaced.labels), replaced.scaling.min_instance_count,
            list(replaced.custom_audiences), "binary_authorization" in replaced) == \
        ("", {}, 0, [], False)


def test_allow_missing_update_creates_and_validate_only_creates_nothing(
        env: Env, hello_v1: str) -> None:
    dry = unique("dry")
    answer = env.services.create_service(
        request={"parent": PARENT, "service": service_of(hello_v1), "service_id": dry,
                 "validate_only": True}).result(timeout=10)
    assert answer.name == f"{PARENT}/services/{dry}"
    with pytest.raises(exceptions.NotFound):
        env.services.get_service(name=answer.name)

    upserted = service_of(hello_v1)
    upserted.name = f"{PARENT}/services/{unique('upsert')}"
    done = env.services.update_service(request={"service": upserted, "allow_missing": True})
    assert done.result(timeout=60).terminal_condition.state == State.CONDITION_SUCCEEDED


# -- deploys ------------------------------------------------------------------------------------


def test_create_serves_then_update_serves_the_new_revision_at_the_same_url(
        env: Env, hello_v1: str, hello_v2: str) -> None:
    name = unique("hello")
    operation = env.services.create_service(parent=PARENT, service=service_of(hello_v1),
                                              service_id=name)
    assert operation.operation.name.startswith(f"{PARENT}/operations/")
    assert operation.metadata.name == f"{PARENT}/services/{name}"  # metadata: the Service
    service = operation.result(timeout=60)

    first = revision_id(service.latest_ready_revision)
    assert first.startswith(f"{name}-00001-") and len(first) == len(name) + 10
    assert service.terminal_condition.type_ == "Ready"
    assert service.terminal_condition.state == State.CONDITION_SUCCEEDED
    assert {c.type_ for c in service.conditions} == {"RoutesReady", "ConfigurationsReady"}
    assert service.latest_created_revision == service.latest_ready_revision
    assert service.uri.startswith("http://127.0.0.1:") and list(service.urls) == [service.uri]
    assert [(t.type_, t.percent) for t in service.traffic_statuses] == [(LATEST, 100)]
    assert service.generation == service.observed_generation == 1
    assert service.etag and service.create_time and service.update_time and not service.reconciling
    assert service.template.max_instance_request_concurrency == 80  # Google's defaults, filled
    assert service.template.containers[0].resources.limits["memory"] == "512Mi"

    answer = get(service.uri, env.id_token(service.uri))
    assert answer.status_code == 200
    assert answer.text == f"hello v1 from {first}"

    changed = run_v2.Service(service)
    changed.template.containers[0].image = hello_v2
    updated = update(env, changed)
    second = revision_id(updated.latest_ready_revision)
    assert second.startswith(f"{name}-00002-")
    assert updated.uri == service.uri and updated.generation == 2
    assert get(service.uri, env.id_token(service.uri)).text == f"hello v2 from {second}"
    assert stops(env, name, first)  # no traffic, no tag: its process is stopped

    revisions = list(env.revisions.list_revisions(parent=service.name))
    assert [revision_id(r.name) for r in revisions] == [second, first]  # newest first
    latest = env.revisions.get_revision(name=updated.latest_ready_revision)
    assert latest.service == service.name and latest.containers[0].image == hello_v2
    assert any(c.type_ == "Ready" and c.state == State.CONDITION_SUCCEEDED for c in latest.conditions)
    assert latest.timeout == timedelta(seconds=300) and latest.log_uri.startswith("file://")

    again = update(env, run_v2.Service(updated))  # same template: no new revision
    assert again.latest_created_revision == updated.latest_created_revision
    assert again.generation == 3


def test_template_env_reaches_the_revision(env: Env, hello_v1: str) -> None:
    service = create(env, unique("env"), service_of(hello_v1))
    changed = run_v2.Service(service)
    changed.template.containers[0].env.append(run_v2.EnvVar(name="GREETING", value="bonjour"))
    updated = update(env, changed)
    answer = get(updated.uri, env.id_token(updated.uri))
    assert answer.text == f"bonjour from {revision_id(updated.latest_ready_revision)}"


def test_a_revision_that_crashes_leaves_the_old_one_serving(
        env: Env, hello_v1: str, crasher: str) -> None:
    name = unique("crash")
    service = create(env, name, service_of(hello_v1))
    good = service.latest_ready_revision

    broken = run_v2.Service(service)
    broken.template.containers[0].image = crasher
    with pytest.raises(exceptions.FailedPrecondition) as raised:
        update(env, broken)
    message = str(raised.value)
    assert f"Revision '{name}-00002-" in message and "is not ready and cannot serve traffic" in message
    assert "KeyError: DATABASE_URL is not set" in message  # the revision's last log lines

    after = env.services.get_service(name=service.name)
    assert after.terminal_condition.state == State.CONDITION_FAILED
    assert "DATABASE_URL" in after.terminal_condition.message
    assert after.latest_ready_revision == good
    assert after.latest_created_revision.startswith(f"{service.name}/revisions/{name}-00002-")
    assert [(t.type_, t.percent) for t in after.traffic_statuses] == [(LATEST, 100)]
    failed = env.revisions.get_revision(name=after.latest_created_revision)
    ready = next(c for c in failed.conditions if c.type_ == "Ready")
    assert ready.state == State.CONDITION_FAILED and "DATABASE_URL" in ready.message

    answer = get(service.uri, env.id_token(service.uri))
    assert answer.text == f"hello v1 from {revision_id(good)}"
    assert "KeyError: DATABASE_URL is not set" in env.logs(name)


def test_the_never_ready_knob_fails_the_deploy(
        env: Env, knobs: LocalCloudSettings, hello_v1: str) -> None:
    knobs.never_ready_matching = "^stuck-"
    knobs.ready_deadline_s = 1
    with pytest.raises(exceptions.FailedPrecondition, match="never-ready"):
        create(env, unique("stuck"), service_of(hello_v1))


def test_an_injected_fault_answers_unavailable(
        env: Env, knobs: LocalCloudSettings, hello_v1: str) -> None:
    knobs.faults = [Fault(method="Services.CreateService", code="UNAVAILABLE", first_n=1)]
    with pytest.raises(exceptions.ServiceUnavailable, match="injected fault"):
        env.services.create_service(parent=PARENT, service=service_of(hello_v1),
                                      service_id=unique("faulty"))
    assert create(env, unique("faulty"), service_of(hello_v1)).uri  # only the first call fails


def test_deploy_latency_is_simulated(env: Env, knobs: LocalCloudSettings, hello_v1: str) -> None:
    knobs.deploy_latency_s = 1.0
    started = time.monotonic()
    create(env, unique("slow"), service_of(hello_v1))
    assert time.monotonic() - started >= 1.0


# -- access and traffic -------------------------------------------------------------------------


def test_private_service_needs_a_token_until_all_users_may_invoke(
        env: Env, hello_v1: str) -> None:
    service = create(env, unique("private"), service_of(hello_v1))
    assert get(service.uri).status_code == 403
    assert get(service.uri, env.id_token("http://127.0.0.1:1")).status_code == 401  # a refused token
    assert get(service.uri, env.id_token(service.uri)).status_code == 200

    policy = env.services.get_iam_policy(request={"resource": service.name})
    assert not policy.bindings and policy.etag
    policy.bindings.add(role="roles/run.invoker", members=["allUsers"])
    stored = env.services.set_iam_policy(request={"resource": service.name, "policy": policy})
    assert stored.etag != policy.etag
    assert get(service.uri).status_code == 200

    with pytest.raises(exceptions.Aborted, match="concurrent policy changes"):
        env.services.set_iam_policy(request={"resource": service.name, "policy": policy})
    stored.ClearField("bindings")
    env.services.set_iam_policy(request={"resource": service.name, "policy": stored})
    assert get(service.uri).status_code == 403

    allowed = env.services.test_iam_permissions(request=iam_policy_pb2.TestIamPermissionsRequest(
        resource=service.name, permissions=["run.routes.invoke", "storage.objects.get"]))
    assert list(allowed.permissions) == ["run.routes.invoke"]
    for member, answer in [("everyone", 'Policy members must be of the form "<type>:<value>".'),
                           ("serviceAccount:ci", "Invalid service account (ci).")]:
        with pytest.raises(exceptions.InvalidArgument) as raised:
            env.services.set_iam_policy(request={"resource": service.name, "policy": policy_pb2.Policy(
                bindings=[policy_pb2.Binding(role="roles/run.invoker", members=[member])])})
        assert raised.value.message == answer
    assert get(service.uri).status_code == 403  # nothing was stored


def test_conditional_bindings_need_policy_version_3(env: Env, hello_v1: str) -> None:
    """cloud.google.com/iam/docs/policies#versions: read below version 3, a conditional binding
    loses its condition and its role becomes ROLE_withcond_HASH, which cannot be set back."""
    service = create(env, unique("conditions"), service_of(hello_v1))
    condition = policy_pb2.Binding(role="roles/run.invoker", members=["user:ann@example.com"])
    condition.condition.expression = 'request.time < timestamp("2030-01-01T00:00:00Z")'
    with pytest.raises(exceptions.InvalidArgument, match="must be version 3"):
        env.services.set_iam_policy(request={"resource": service.name, "policy": policy_pb2.Policy(
            bindings=[condition])})
    env.services.set_iam_policy(request={"resource": service.name, "policy": policy_pb2.Policy(
        version=3, bindings=[condition])})

    old = env.services.get_iam_policy(request={"resource": service.name})
    assert old.version == 1 and not old.bindings[0].HasField("condition")
    assert re.fullmatch(r"roles/run\.invoker_withcond_[0-9a-f]+", old.bindings[0].role)
    with pytest.raises(exceptions.InvalidArgument, match=r"bindings\[0\].role"):
        env.services.set_iam_policy(request={"resource": service.name, "policy": old})

    current = env.services.get_iam_policy(request={
        "resource": service.name, "options": {"requested_policy_version": 3}})
    assert current.version == 3 and current.bindings[0] == condition


def test_a_tag_gets_its_own_url(env: Env, hello_v1: str, hello_v2: str) -> None:
    name = unique("tags")
    blue = f"{name}-blue"
    service = create(env, name, service_of(hello_v1, revision=blue))
    assert service.latest_ready_revision.endswith(f"/revisions/{blue}")
    make_public(env, service.name)

    green = run_v2.Service(service)
    green.template.revision = ""
    green.template.containers[0].image = hello_v2
    green.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100),
                     run_v2.TrafficTarget(type_=REVISION, revision=blue, percent=0, tag="blue")]
    updated = update(env, green)
    tagged = next(t for t in updated.traffic_statuses if t.tag == "blue")
    assert tagged.uri.startswith("http://127.0.0.1:") and tagged.uri != updated.uri
    assert tagged.revision == blue and tagged.percent == 0
    assert get(updated.uri).text.startswith("hello v2 from ")
    assert get(tagged.uri).text == f"hello v1 from {blue}"

    untagged = run_v2.Service(updated)
    untagged.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
    update(env, untagged)
    with pytest.raises(httpx.ConnectError):
        get(tagged.uri)  # the tag's URL is closed with the tag
    assert stops(env, name, blue)

    with pytest.raises(exceptions.FailedPrecondition, match="serving traffic"):
        env.revisions.delete_revision(name=updated.latest_created_revision).result(timeout=10)
    deleted = env.revisions.delete_revision(name=f"{service.name}/revisions/{blue}").result(timeout=10)
    assert deleted.name.endswith(blue)


def test_traffic_split_between_revisions(env: Env, hello_v1: str, hello_v2: str) -> None:
    name = unique("split")
    service = create(env, name, service_of(hello_v1, revision=f"{name}-one"))
    make_public(env, service.name)
    split = run_v2.Service(service)
    split.template.revision = f"{name}-two"
    split.template.containers[0].image = hello_v2
    split.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=f"{name}-one", percent=50),
                     run_v2.TrafficTarget(type_=REVISION, revision=f"{name}-two", percent=50)]
    update(env, split)
    seen = {get(service.uri).text.split(" from ")[1] for _ in range(20)}  # both: p = 1 - 2e-6
    assert seen == {f"{name}-one", f"{name}-two"}


def test_naming_an_existing_revision_deploys_it_again(
        env: Env, hello_v1: str, hello_v2: str) -> None:
    """Bring-your-own revision names: sending back revision one's template (and name) makes no
    new revision; revision one becomes the latest again and serves (its process restarted)."""
    name = unique("back")
    one = create(env, name, service_of(hello_v1, revision=f"{name}-one"))
    make_public(env, one.name)
    two = run_v2.Service(one)
    two.template.revision = f"{name}-two"
    two.template.containers[0].image = hello_v2
    assert get(update(env, two).uri).text == f"hello v2 from {name}-two"
    assert stops(env, name, f"{name}-one")

    back = env.services.get_service(name=one.name)
    back.template = one.template
    done = update(env, back)
    assert revision_id(done.latest_ready_revision) == revision_id(done.latest_created_revision) \
        == f"{name}-one"
    assert get(done.uri).text == f"hello v1 from {name}-one"
    assert len(list(env.revisions.list_revisions(parent=one.name))) == 2


def test_a_revision_name_keeps_its_configuration(env: Env, hello_v1: str, hello_v2: str) -> None:
    """Knative's rules (cloudrun/rules.py): the service's current revision name comes back only
    with the very same template, labels included; an older revision's name with the same spec,
    whatever its labels, and that revision is reused; echoing the template as read is fine."""
    name = unique("immutable")
    one = create(env, name, service_of(hello_v1, revision=f"{name}-one", labels={"v": "1"}))
    echoed = update(env, env.services.get_service(name=one.name))  # a traffic-only update
    assert revision_id(echoed.latest_created_revision) == f"{name}-one"

    relabeled = env.services.get_service(name=one.name)
    relabeled.template.labels["v"] = "2"
    with pytest.raises(exceptions.AlreadyExists, match=f"^409 Revision named '{name}-one' with "
                                                       "different configuration already exists.$"):
        env.services.update_service(service=relabeled)

    two = env.services.get_service(name=one.name)
    two.template.revision = f"{name}-two"
    two.template.containers[0].image = hello_v2
    update(env, two)
    back = env.services.get_service(name=one.name)
    back.template = one.template
    back.template.labels["v"] = "back"  # labels of an older revision may differ
    done = update(env, back)
    assert revision_id(done.latest_created_revision) == f"{name}-one"
    assert len(list(env.revisions.list_revisions(parent=one.name))) == 2

    changed = env.services.get_service(name=one.name)
    changed.template.revision = f"{name}-two"  # an older revision, another spec
    with pytest.raises(exceptions.AlreadyExists, match=f"Revision named '{name}-two' with "):
        env.services.update_service(service=changed)


def test_list_services_in_pages(env: Env, hello_v1: str) -> None:
    for _ in range(3):
        create(env, unique("listed"), service_of(hello_v1))
    pager = env.services.list_services(request={"parent": PARENT, "page_size": 2})
    pages = list(pager.pages)
    assert all(len(p.services) <= 2 for p in pages) and len(pages) >= 2
    names = [s.name for p in pages for s in p.services]
    assert len(names) == len(set(names)) >= 3 and names == sorted(names)
    with pytest.raises(exceptions.InvalidArgument, match="page_token"):
        env.services.list_services(request={"parent": PARENT, "page_token": "bogus"}).pages.__next__()


# -- delete and restart -------------------------------------------------------------------------


def test_delete_stops_its_processes_and_closes_its_url(env: Env, hello_v1: str) -> None:
    name = unique("doomed")
    service = create(env, name, service_of(hello_v1))
    revision = revision_id(service.latest_ready_revision)
    assert not stopped(env, name, revision)

    deleted = env.services.delete_service(name=service.name).result(timeout=30)
    assert deleted.name == service.name and deleted.delete_time
    assert stopped(env, name, revision)
    with pytest.raises(httpx.ConnectError):
        get(service.uri)
    with pytest.raises(exceptions.NotFound):
        env.services.get_service(name=service.name)
    assert list(env.revisions.list_revisions(parent=service.name)) == []


def test_a_restart_serves_the_same_urls(tmp_path: Path) -> None:
    with local_cloud(tmp_path) as first:
        image = first.push_app(APP.format(greeting="hello again"))
        service = create(first, "survivor", service_of(image, revision="survivor-one"))
        tagged = run_v2.Service(service)
        tagged.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100, tag="stable")]
        service = update(first, tagged)
        tag_url = service.traffic_statuses[0].uri
        token = first.id_token(service.uri)
        assert get(service.uri, token).text == "hello again from survivor-one"
    with pytest.raises(httpx.ConnectError):
        get(service.uri, token)

    with local_cloud(tmp_path) as second:
        assert get(service.uri, token).text == "hello again from survivor-one"
        assert get(tag_url, second.id_token(tag_url)).text == "hello again from survivor-one"
        again = second.services.get_service(name=service.name)
        assert again.uri == service.uri and again.etag == service.etag


def test_no_revision_process_outlives_the_cloud(tmp_path: Path) -> None:
    with local_cloud(tmp_path) as mini:
        image = mini.push_app(APP.format(greeting="bye"))
        service = create(mini, "ephemeral", service_of(image))
        revision = revision_id(service.latest_ready_revision)
        port = int(re.findall(rf"\[{revision}\] listening on (\d+)", mini.logs("ephemeral"))[-1])
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_a_deploy_cut_short_by_a_stop_is_failed_after_the_restart(tmp_path: Path) -> None:
    with local_cloud(tmp_path) as first:
        image = first.push_app(APP.format(greeting="never"))
        first.settings.never_ready_matching = "^interrupted$"
        first.services.create_service(parent=PARENT, service=service_of(image),
                                          service_id="interrupted")
        time.sleep(0.5)  # the revision is starting (and never gets ready) when the cloud stops
    with local_cloud(tmp_path) as second:
        service = second.services.get_service(name=f"{PARENT}/services/interrupted")
        assert not service.reconciling
        assert service.terminal_condition.state == State.CONDITION_FAILED
        assert "stopped while this revision was being deployed" in service.terminal_condition.message
