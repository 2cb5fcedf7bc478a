"""The local Secret Manager API through the official client: versions' metadata and state, the
``latest`` alias, and Google's answers for what is missing, disabled or not allowed."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import secretmanager
from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
    SecretManagerServiceGrpcTransport,
)

from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.cloudfunctions.shapes import project_number
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings

NUMBER = project_number("local-project")
State = secretmanager.SecretVersion.State


@pytest.fixture
def secret(localcloud: LocalCloud) -> str:
    """A secret with versions 1 and 2."""
    name = f"token-{uuid.uuid4().hex[:6]}"
    localcloud.cloudrun.secrets.add_version("local-project", name, b"one")
    localcloud.cloudrun.secrets.add_version("local-project", name, b"two")
    return name


def test_versions_metadata_state_and_latest(cloud: Cloud, secret: str) -> None:
    base = f"projects/local-project/secrets/{secret}"
    latest = cloud.secrets.get_secret_version(name=f"{base}/versions/latest")
    assert latest.name == f"projects/{NUMBER}/secrets/{secret}/versions/2"
    assert latest.state == State.ENABLED and latest.create_time
    assert cloud.secrets.get_secret(name=base).name == f"projects/{NUMBER}/secrets/{secret}"
    assert cloud.secrets.access_secret_version(name=f"{base}/versions/1").payload.data == b"one"

    disabled = cloud.secrets.disable_secret_version(name=f"{base}/versions/2")
    assert disabled.state == State.DISABLED
    # `latest` is the newest version whatever its state (get-secretmanager-secrets#268).
    assert cloud.secrets.get_secret_version(name=f"{base}/versions/latest").state == State.DISABLED
    with pytest.raises(api_exceptions.FailedPrecondition) as refused:
        cloud.secrets.access_secret_version(name=f"{base}/versions/latest")
    assert refused.value.message == \
        f"Secret Version [projects/{NUMBER}/secrets/{secret}/versions/2] is in DISABLED state."
    assert cloud.secrets.enable_secret_version(name=f"{base}/versions/2").state == State.ENABLED
    assert cloud.secrets.access_secret_version(name=f"{base}/versions/latest").payload.data == b"two"


def test_missing_secrets_and_versions_answer_not_found_as_google_does(cloud: Cloud, secret: str) -> None:
    with pytest.raises(api_exceptions.NotFound) as no_secret:
        cloud.secrets.get_secret_version(name="projects/local-project/secrets/nope/versions/latest")
    assert no_secret.value.message == f"Secret [projects/{NUMBER}/secrets/nope] not found or has no versions."
    with pytest.raises(api_exceptions.NotFound) as no_version:
        cloud.secrets.get_secret_version(name=f"projects/local-project/secrets/{secret}/versions/7")
    assert no_version.value.message == \
        f"Secret Version [projects/{NUMBER}/secrets/{secret}/versions/7] not found."
    with pytest.raises(api_exceptions.NotFound):
        cloud.secrets.get_secret(name="projects/local-project/secrets/nope")
    with pytest.raises(api_exceptions.InvalidArgument) as bad:
        cloud.secrets.get_secret_version(name="secrets/x")
    assert bad.value.message == "Resource ID [secrets/x] is not in a valid format."


def test_a_caller_without_the_viewer_role_is_refused_naming_the_permission(
        cloud: Cloud, knobs: LocalCloudSettings, secret: str) -> None:
    knobs.secrets_denied = True
    name = f"projects/local-project/secrets/{secret}/versions/latest"
    with pytest.raises(api_exceptions.PermissionDenied) as denied:
        cloud.secrets.get_secret_version(name=name)
    assert denied.value.message == \
        f"Permission 'secretmanager.versions.get' denied for resource '{name}' (or it may not exist)."
    assert denied.value.reason == "IAM_PERMISSION_DENIED"


def test_a_call_without_a_token_is_refused(localcloud: LocalCloud) -> None:
    channel = grpc.insecure_channel(localcloud.endpoints.secretmanager)
    client = secretmanager.SecretManagerServiceClient(
        transport=SecretManagerServiceGrpcTransport(channel=channel))
    with pytest.raises(api_exceptions.Unauthenticated):
        client.get_secret_version(name="projects/local-project/secrets/x/versions/latest")
