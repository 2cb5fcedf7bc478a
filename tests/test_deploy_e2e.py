"""verify -> deploy -> smoke on a real built image, against the whole local cloud (official clients).

The image is built by the local builder straight into the local registry; the steps run the
same plain functions their Prefect tasks call (the task bodies only add a logger and the
clients from `Cloud.for_target`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from google.cloud import run_v2

from cf2run.cloud import Cloud
from cf2run.errors import DeployFailed
from cf2run.localcloud.builder import build_function
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings
from cf2run.results import BuiltImage, Deployment, SmokeResult, VerifiedImage
from cf2run.spec import FunctionSpec, Target
from tasks.deploy import deploy
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
    """What smoke_test does: an ID token unless the service is public."""
    token = None if spec.allow_unauthenticated else cloud.id_token(deployment.url)
    return run_smoke(deployment.url, spec.smoke, token, public=spec.allow_unauthenticated)


def revisions_of(cloud: Cloud, deployment: Deployment) -> list[str]:
    listed = cloud.revisions.list_revisions(parent=deployment.service)
    return sorted(revision.name.rsplit("/", 1)[-1] for revision in listed)


def is_public(cloud: Cloud, deployment: Deployment) -> bool:
    policy = cloud.services.get_iam_policy(request={"resource": deployment.service})
    return any(b.role == "roles/run.invoker" and "allUsers" in b.members for b in policy.bindings)


def test_deploy_is_idempotent_and_follows_settings(cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    spec, target = make_spec(source), Target()
    first = deploy(cloud.services, cloud.revisions, spec, target, verified, "a1" * 32)
    assert first.changed and first.digest == verified.digest
    assert first.service == f"projects/local-project/locations/us-central1/services/{spec.name}"
    answer = smoke(cloud, spec, first)
    assert answer.status == 200 and answer.excerpt == f"hi from {first.revision}"
    service = cloud.services.get_service(name=first.service)
    assert service.template.containers[0].image == verified.image
    labels = dict(service.labels)
    assert (labels["managed-by"], labels["cf2run-source"]) == ("cf2run", "a1" * 6)
    assert not is_public(cloud, first)

    # Same digest and settings: nothing is written, no revision is created.
    again = deploy(cloud.services, cloud.revisions, spec, target, verified, "a1" * 32)
    assert (again.changed, again.revision, again.url) == (False, first.revision, first.url)
    assert cloud.services.get_service(name=first.service).etag == service.etag
    assert revisions_of(cloud, first) == [first.revision]

    # A new setting: a new revision serves it, through the same URL.
    changed_spec = spec.model_copy(update={"env": {"GREETING": "howdy"},
                                           "smoke": spec.smoke.model_copy(update={"expect_body": "howdy"})})
    second = deploy(cloud.services, cloud.revisions, changed_spec, target, verified, "a1" * 32)
    assert second.changed and second.revision != first.revision and second.url == first.url
    assert smoke(cloud, changed_spec, second).excerpt == f"howdy from {second.revision}"

    # Back to the first settings: the first revision is reused and serves again.
    back = deploy(cloud.services, cloud.revisions, spec, target, verified, "a1" * 32)
    assert back.changed and back.revision == first.revision
    assert smoke(cloud, spec, back).excerpt == f"hi from {first.revision}"
    assert revisions_of(cloud, first) == sorted([first.revision, second.revision])


def test_public_service_gets_the_invoker_binding_without_a_new_revision(
        cloud: Cloud, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    private = make_spec(source)
    first = deploy(cloud.services, cloud.revisions, private, Target(), verified)
    public = private.model_copy(update={"allow_unauthenticated": True})
    opened = deploy(cloud.services, cloud.revisions, public, Target(), verified)
    assert (opened.changed, opened.revision) == (False, first.revision)  # IAM is not a service setting
    assert is_public(cloud, opened)
    assert smoke(cloud, public, opened).status == 200  # no token sent
    # Deploying it as private again warns, but does not remove the binding.
    deploy(cloud.services, cloud.revisions, private, Target(), verified)
    assert is_public(cloud, opened)


def test_revision_that_never_gets_ready_fails_with_googles_reason(
        cloud: Cloud, knobs: LocalCloudSettings, image: tuple[Path, VerifiedImage]) -> None:
    source, verified = image
    spec = make_spec(source)
    knobs.never_ready_matching = f"^{spec.name}$"
    knobs.ready_deadline_s = 2
    with pytest.raises(DeployFailed) as raised:
        deploy(cloud.services, cloud.revisions, spec, Target(), verified)
    assert not raised.value.transient
    assert spec.name in str(raised.value) and "logs" in str(raised.value)
    service = cloud.services.get_service(name=f"projects/local-project/locations/us-central1/services/"
                                              f"{spec.name}")
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert service.terminal_condition.message in str(raised.value)
