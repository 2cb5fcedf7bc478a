"""verify -> deploy -> smoke -> promote on a real built image, against the whole local cloud
(official clients).

The image is built by the local builder straight into the local registry; the steps run the
same plain functions their Prefect tasks call (the task bodies only add a logger and the
clients from `Cloud.for_target`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import run_v2
from google.iam.v1 import policy_pb2
from google.type import expr_pb2

from cf2run.errors import DeployFailed, SmokeTestFailed
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.cloudbuild.builder import build_function
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import BuiltImage, Deployment, SmokeResult, VerifiedImage
from cf2run.rollback import rollback
from tasks.deploy import deploy
from tasks.promote import promote
from tasks.smoke import run_smoke
from tasks.verify import verify_built_image

MAIN_PY = '''
import os


def hello(request):
    return f"{os.environ.get('GREETING', 'hello')} from {os.environ['K_REVISION']}\\n"
'''


@pytest.fixture(scope="module")
def image(localcloud: LocalCloud, cloud: Cloud, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, VerifiedImage]:
    """One Python HTTP function, built and pushed once for the module, then verified."""
    source = tmp_path_factory.mktemp("fn")
    (source / "main.py").write_text(MAIN_PY)
    ref = f"{Target().image_repository('e2e-hello')}:e2e-{uuid.uuid4().hex[:8]}"
    env = {"GOOGLE_FUNCTION_TARGET": "hello", "GOOGLE_FUNCTION_SIGNATURE_TYPE": "http",
           "GOOGLE_RUNTIME": "python"}
    digest = build_function(source, env, ref, cloud.registry, tmp_path_factory.mktemp("cache"),
                            lambda line: None)
    built = BuiltImage(image=ref, digest=digest, build_id=None, cached=False)
    return source, verify_built_image(cloud.registry, built)


def make_spec(source: Path, **fields: Any) -> FunctionSpec:
    base = {"name": f"e2e-{uuid.uuid4().hex[:8]}", "source": source, "runtime": "python311",
            "entry_point": "hello", "env": {"GREETING": "hi"},
            "smoke": {"expect_body": "hi from", "deadline_s": 60}}
    return FunctionSpec.model_validate({**base, **fields})


def smoke(cloud: Cloud, spec: FunctionSpec, deployment: Deployment) -> SmokeResult:
    """What smoke_test does: the candidate's URL (else the service's), with an ID token."""
    return run_smoke(deployment.smoke_url, spec.smoke, cloud.id_token(deployment.url))


def served_text(cloud: Cloud, url: str) -> str:
    """What the service URL answers a caller with a token now."""
    return httpx.get(url, headers={"Authorization": f"Bearer {cloud.id_token(url)}"}).text


def revisions_of(cloud: Cloud, deployment: Deployment) -> list[str]:
    listed = cloud.revisions.list_revisions(parent=deployment.service)
    return sorted(revision.name.rsplit("/", 1)[-1] for revision in listed)


def is_public(cloud: Cloud, deployment: Deployment) -> bool:
    policy = cloud.services.get_iam_policy(request={"resource": deployment.service})
    return any(b.role == "roles/run.invoker" and "allUsers" in b.members for b in policy.bindings)


def test_deploy_is_idempotent_and_follows_settings(cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    spec, target = make_spec(source), Target()
    first = deploy(cloud, spec, target, verified, "a1" * 32)
    assert first.changed and first.created and first.digest == verified.digest
    assert first.candidate_url is None, "a new service's first revision takes its traffic at once"
    assert first.service == f"projects/local-project/locations/us-central1/services/{spec.name}"
    answer = smoke(cloud, spec, first)
    assert answer.status == 200 and answer.excerpt == f"hi from {first.revision}"
    service = cloud.services.get_service(name=first.service)
    assert service.template.containers[0].image == verified.image
    labels = dict(service.labels)
    assert (labels["managed-by"], labels["cf2run-source"]) == ("cf2run", "a1" * 6)
    assert not is_public(cloud, first)

    # Same digest and settings: nothing is written, no revision is created.
    again = deploy(cloud, spec, target, verified, "a1" * 32)
    assert (again.changed, again.revision, again.url) == (False, first.revision, first.url)
    assert cloud.services.get_service(name=first.service).etag == service.etag
    assert revisions_of(cloud, first) == [first.revision]

    # A new setting: a new revision runs it as a candidate, at its own tag URL, without traffic.
    changed_spec = spec.model_copy(update={"env": {"GREETING": "howdy"},
                                           "smoke": spec.smoke.model_copy(update={"expect_body": "howdy"})})
    second = deploy(cloud, changed_spec, target, verified, "a1" * 32)
    assert second.changed and second.revision != first.revision and second.url == first.url
    assert (second.tag, second.previous) == ("candidate", [first.revision])
    assert second.candidate_url and second.candidate_url != first.url
    assert smoke(cloud, changed_spec, second).excerpt == f"howdy from {second.revision}"
    assert served_text(cloud, first.url) == f"hi from {first.revision}\n", "the candidate took traffic"

    # Promoted: the service URL answers with the new revision; the tag is gone.
    moved = promote(cloud, changed_spec, second)
    assert (moved.changed, moved.serving, moved.previous) == (True, [second.revision], [first.revision])
    assert served_text(cloud, first.url) == f"howdy from {second.revision}\n"
    assert not [t for t in cloud.services.get_service(name=first.service).traffic_statuses if t.tag]

    # Back to the first settings: the first revision is reused as the candidate, then serves again.
    back = deploy(cloud, spec, target, verified, "a1" * 32)
    assert back.changed and back.revision == first.revision and back.previous == [second.revision]
    assert smoke(cloud, spec, back).excerpt == f"hi from {first.revision}"
    promote(cloud, spec, back)
    assert served_text(cloud, first.url) == f"hi from {first.revision}\n"
    assert revisions_of(cloud, first) == sorted([first.revision, second.revision])


def test_public_service_is_opened_by_promote_after_its_smoke_test_and_without_a_new_revision(
        cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    public = make_spec(source, allow_unauthenticated=True)
    first = deploy(cloud, public, Target(), verified)
    assert not is_public(cloud, first), "public before its smoke test"
    assert httpx.get(first.url).status_code == 403
    assert smoke(cloud, public, first).status == 200  # with a token
    moved = promote(cloud, public, first)
    assert (moved.changed, moved.public) == (False, True)  # all traffic was on it already
    assert is_public(cloud, first)
    assert run_smoke(first.url, public.smoke, None, public=True).status == 200  # no token sent

    # Made private in the spec: same revision (IAM is not a service setting); promote warns
    # but does not remove the binding.
    private = public.model_copy(update={"allow_unauthenticated": False})
    again = deploy(cloud, private, Target(), verified)
    assert (again.changed, again.revision) == (False, first.revision)
    assert promote(cloud, private, again).public is True
    assert is_public(cloud, first)


def invoker_bindings(cloud: Cloud, deployment: Deployment) -> list[tuple[list[str], str]]:
    """(members, condition) of each roles/run.invoker binding, read at version 3 by the official client."""
    policy = cloud.services.get_iam_policy(request={
        "resource": deployment.service, "options": {"requested_policy_version": 3}})
    return sorted((sorted(b.members), b.condition.expression) for b in policy.bindings
                  if b.role == "roles/run.invoker")


def test_invokers_are_granted_at_promote_kept_with_other_members_and_never_removed(
        cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    ci, team = "serviceAccount:ci@local-project.iam.gserviceaccount.com", "group:team@example.com"
    spec = make_spec(source, invokers=[ci, team])
    deployment = deploy(cloud, spec, Target(), verified)
    assert invoker_bindings(cloud, deployment) == [], "granted before its smoke test"
    # Someone else's grants: another member, and a conditional binding (kept as they are).
    until = 'request.time < timestamp("2030-01-01T00:00:00Z")'
    cloud.services.set_iam_policy(request={"resource": deployment.service, "policy": policy_pb2.Policy(
        version=3, bindings=[
            policy_pb2.Binding(role="roles/run.invoker", members=["user:ops@example.com"]),
            policy_pb2.Binding(role="roles/run.invoker", members=[ci],
                               condition=expr_pb2.Expr(title="until 2030", expression=until))])})

    moved = promote(cloud, spec, deployment)
    assert (moved.public, sorted(moved.invokers or [])) == (False, sorted([ci, team, "user:ops@example.com"]))
    assert invoker_bindings(cloud, deployment) == sorted([
        ([ci], until), (sorted([ci, team, "user:ops@example.com"]), "")])
    assert httpx.get(deployment.url).status_code == 403  # still private: the members need ID tokens

    etag = cloud.services.get_iam_policy(request={"resource": deployment.service}).etag
    fewer = spec.model_copy(update={"invokers": [ci]})  # team dropped from the manifest
    assert sorted(promote(cloud, fewer, deployment).invokers or []) == sorted(
        [ci, team, "user:ops@example.com"])
    assert cloud.services.get_iam_policy(request={"resource": deployment.service}).etag == etag, \
        "a promote with nothing to grant wrote the policy"


def test_private_service_answers_403_without_a_token_and_passes_its_smoke_test_with_one(
        cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    spec = make_spec(source)
    deployment = deploy(cloud, spec, Target(), verified)
    assert promote(cloud, spec, deployment).public is False
    assert not is_public(cloud, deployment)
    assert httpx.get(deployment.url).status_code == 403
    with pytest.raises(SmokeTestFailed, match="expected status 200, got 403"):
        run_smoke(deployment.url, spec.smoke.model_copy(update={"deadline_s": 1}), None)
    assert smoke(cloud, spec, deployment).excerpt == f"hi from {deployment.revision}"


def test_revision_that_never_gets_ready_fails_with_googles_reason(
        cloud: Cloud, knobs: LocalCloudSettings, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    spec = make_spec(source)
    knobs.never_ready_matching = f"^{spec.name}$"
    knobs.ready_deadline_s = 2
    with pytest.raises(DeployFailed) as raised:
        deploy(cloud, spec, Target(), verified)
    assert not raised.value.transient
    assert spec.name in str(raised.value) and "logs" in str(raised.value)
    service = cloud.services.get_service(name=f"projects/local-project/locations/us-central1/services/"
                                              f"{spec.name}")
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert service.terminal_condition.message in str(raised.value)


def test_secret_env_is_read_from_secret_manager_and_a_missing_secret_fails_the_revision(
        localcloud: LocalCloud, cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    """The local Secret Manager stand-in (cf2run/localcloud/secretmanager/store.py) holds the value;
    the Service carries only the reference."""
    source, verified = image
    secret = f"greeting-{uuid.uuid4().hex[:6]}"
    localcloud.cloudrun.secrets.add_version("local-project", secret, b"old")
    localcloud.cloudrun.secrets.add_version("local-project", secret, b"hola")
    spec = make_spec(source, env={}, secret_env={"GREETING": secret},
                     smoke={"expect_body": "hola from", "deadline_s": 60})
    deployment = deploy(cloud, spec, Target(), verified)
    assert smoke(cloud, spec, deployment).excerpt == f"hola from {deployment.revision}"
    sent = cloud.services.get_service(name=deployment.service).template.containers[0].env
    assert [(e.name, e.value, e.value_source.secret_key_ref.secret) for e in sent] == \
        [("GREETING", "", secret)]

    pinned = make_spec(source, name=spec.name, env={}, secret_env={"GREETING": f"{secret}:1"},
                       smoke={"expect_body": "old from"})
    candidate = deploy(cloud, pinned, Target(), verified)
    assert smoke(cloud, pinned, candidate).excerpt == f"old from {candidate.revision}"

    missing = make_spec(source, env={}, secret_env={"GREETING": "no-such-secret"})
    with pytest.raises(DeployFailed) as raised:
        deploy(cloud, missing, Target(), verified)
    assert "Secret projects/local-project/secrets/no-such-secret/versions/latest was not found" \
        in str(raised.value)


def test_a_candidate_that_never_gets_ready_leaves_the_serving_revision_untouched(
        cloud: Cloud, knobs: LocalCloudSettings, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    spec = make_spec(source)
    first = deploy(cloud, spec, Target(), verified)
    knobs.never_ready_matching = f"^{spec.name}$"
    knobs.ready_deadline_s = 2
    with pytest.raises(DeployFailed) as raised:
        deploy(cloud, make_spec(source, name=spec.name, env={"GREETING": "yo"}),
               Target(), verified)
    assert f"the traffic never moved: {first.revision} keep(s) serving it" in str(raised.value)
    assert served_text(cloud, first.url) == f"hi from {first.revision}\n"
    # No failed candidate is left behind: no tag, the template back on the serving revision (reused,
    # not made again), the service Ready (issue 18: it showed Ready=False with a `candidate` tag).
    service = cloud.services.get_service(name=first.service)
    assert [t.tag for t in service.traffic if t.tag] == []
    assert service.template.revision == first.revision
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert "the failed candidate was removed" in str(raised.value)


def set_outside_cf2run(cloud: Cloud, service_name: str) -> run_v2.Service:
    """What a user or another tool sets on the service (an UpdateService of its own)."""
    service = cloud.services.get_service(name=service_name)
    service.description = "orders API, owned by team blue"
    service.custom_audiences[:] = ["https://orders.example.com"]
    service.invoker_iam_disabled = True
    service.binary_authorization = run_v2.BinaryAuthorization(use_default=True)
    service.scaling = run_v2.ServiceScaling(min_instance_count=1)
    service.labels["team"] = "blue"
    service.annotations["example.com/owner"] = "blue"
    return cloud.services.update_service(service=service).result(timeout=60)


def outside_fields(service: run_v2.Service) -> tuple[object, ...]:
    return (service.description, list(service.custom_audiences), service.invoker_iam_disabled,
            service.binary_authorization.use_default, service.scaling.min_instance_count,
            service.labels.get("team"), service.annotations.get("example.com/owner"))


def test_what_cf2run_does_not_own_survives_a_deploy_a_promote_and_a_rollback(
        cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    """An UpdateService without a mask replaces the whole service (the local Cloud Run does it
    too): cf2run sends back every field it does not own as the service has it."""
    source, verified = image
    spec, target = make_spec(source), Target()
    first = deploy(cloud, spec, target, verified)
    expected = outside_fields(set_outside_cf2run(cloud, first.service))
    assert expected == ("orders API, owned by team blue", ["https://orders.example.com"], True,
                        True, 1, "blue", "blue")

    changed = spec.model_copy(update={"env": {"GREETING": "howdy"},
                                      "smoke": spec.smoke.model_copy(update={"expect_body": "howdy"})})
    second = deploy(cloud, changed, target, verified)
    assert second.tag == "candidate"
    assert outside_fields(cloud.services.get_service(name=first.service)) == expected
    promote(cloud, changed, second)
    assert outside_fields(cloud.services.get_service(name=first.service)) == expected
    rollback(cloud, target, spec.name, to=first.revision)
    after = cloud.services.get_service(name=first.service)
    assert outside_fields(after) == expected
    assert after.labels["managed-by"] == "cf2run"


def test_a_conditional_binding_survives_making_the_service_public(
        cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    """IAM policies are read at version 3 and written back with their conditions: read at a
    lower version, a conditional binding comes back as ``ROLE_withcond_HASH``, which cannot be
    written (the local Cloud Run answers both as IAM does)."""
    source, verified = image
    public = make_spec(source, allow_unauthenticated=True)
    deployment = deploy(cloud, public, Target(), verified)
    condition = expr_pb2.Expr(title="until 2030",
                              expression='request.time < timestamp("2030-01-01T00:00:00Z")')
    cloud.services.set_iam_policy(request={"resource": deployment.service, "policy": policy_pb2.Policy(
        version=3, bindings=[policy_pb2.Binding(role="roles/run.invoker", members=["user:ann@example.com"],
                                                condition=condition)])})

    assert promote(cloud, public, deployment).public is True
    policy = cloud.services.get_iam_policy(request={
        "resource": deployment.service, "options": {"requested_policy_version": 3}})
    assert policy.version == 3
    assert sorted((b.role, list(b.members), b.condition.expression) for b in policy.bindings) == [
        ("roles/run.invoker", ["allUsers"], ""),
        ("roles/run.invoker", ["user:ann@example.com"], condition.expression)]
    assert httpx.get(deployment.url).status_code == 200


class Interloper:
    """The official client, except that someone else changes the service (a real UpdateService,
    a label of theirs) just before this client's first UpdateService reaches Cloud Run, so that
    the etag it carries is stale. Only the timing is arranged: it cannot be had for real on
    demand; the concurrent write and Cloud Run's refusal are real."""

    def __init__(self, services: run_v2.ServicesClient) -> None:
        self._services = services
        self.interfered = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._services, name)

    def update_service(self, **request: Any) -> Any:
        if not self.interfered:
            self.interfered = True
            theirs = self._services.get_service(name=request["service"].name)
            theirs.labels["touched-by"] = "someone-else"
            self._services.update_service(service=theirs).result(timeout=60)
        return self._services.update_service(**request)


def test_a_change_between_read_and_write_is_read_again_and_kept(
        localcloud: LocalCloud, cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    spec, target = make_spec(source), Target()
    first = deploy(cloud, spec, target, verified)
    racing = Cloud.local(localcloud.endpoints)
    interloper = Interloper(racing.services)
    racing.__dict__["services"] = interloper  # the cached_property's slot

    changed = make_spec(source, name=spec.name, env={"GREETING": "howdy"})
    second = deploy(racing, changed, target, verified)
    assert interloper.interfered and second.tag == "candidate"
    service = cloud.services.get_service(name=first.service)
    assert service.labels["touched-by"] == "someone-else", "the concurrent change was overwritten"
    assert sorted((t.revision, t.percent, t.tag) for t in service.traffic_statuses) == \
        sorted([(first.revision, 100, ""), (second.revision, 0, "candidate")])

    interloper.interfered = False
    moved = promote(racing, changed, second)
    assert interloper.interfered and moved.serving == [second.revision]
