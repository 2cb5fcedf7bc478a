"""The Secret Manager API, locally: what cf2run asks of a secret before deploying, over gRPC.

Serves ``google.cloud.secretmanager.v1.SecretManagerService`` for the official
`google.cloud.secretmanager` client, over the versions of secretmanager/store.py's `SecretStore`:
GetSecret, GetSecretVersion (metadata and state; ``latest`` is the newest version whatever its
state, as Google resolves it), AccessSecretVersion, and DisableSecretVersion /
EnableSecretVersion. Secrets and versions are created with `cf2run localcloud add-secret` (the
store), not through this API. Behind the same access token check (frontend/grpcauth.py) and fault and
field-behaviour layer (frontend/grpcapi.py) as the other local services. Resource names in answers carry
the project number, as Google's do. Google's answers:

- a secret that does not exist, or ``latest`` of one without versions: NOT_FOUND "Secret
  [projects/NUMBER/secrets/S] not found or has no versions." (gcloud's output, captured in a
  public test of `gcloud secrets versions access`, 2026-09-14); a missing version of a secret
  that exists: NOT_FOUND "Secret Version [projects/NUMBER/secrets/S/versions/N] not found."
  (same wording family; unverified without a real project); GetSecret of a missing secret:
  NOT_FOUND "Secret [projects/NUMBER/secrets/S] not found." (unverified);
- reading a disabled version's data: FAILED_PRECONDITION "Secret Version [NAME] is in DISABLED
  state." (google-github-actions/get-secretmanager-secrets#268 shows the DESTROYED form);
- a name that is not one: INVALID_ARGUMENT "Resource ID [NAME] is not in a valid format."
  (googleapis/nodejs-secret-manager#74);
- the `secrets_denied` setting (a caller without roles/secretmanager.viewer): PERMISSION_DENIED
  "Permission 'secretmanager.versions.get' denied for resource 'NAME' (or it may not exist)."
  with ErrorInfo reason IAM_PERMISSION_DENIED (GoogleCloudPlatform/java-docs-samples#6571 for
  versions.access; the name as the caller gave it, googleapis/python-secret-manager#389).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.cloud import secretmanager
from google.rpc import error_details_pb2

from cf2run.localcloud.cloudfunctions.shapes import project_number
from cf2run.localcloud.frontend.grpcapi import Method, RpcError, invalid, not_found, service_handler
from cf2run.localcloud.secretmanager.store import SecretMissing, SecretStore, VersionDisabled, VersionInfo
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
_SECRET_RE = re.compile(r"^projects/([^/]+)/secrets/([^/]+)$")
_VERSION_RE = re.compile(r"^projects/([^/]+)/secrets/([^/]+)/versions/([^/]+)$")
_STATE = secretmanager.SecretVersion.State


class SecretManagerService:
    """The API over a `SecretStore`."""

    def __init__(self, store: SecretStore, settings: LocalCloudSettings, faults: FaultInjector) -> None:
        self.store = store
        self.settings = settings
        self.faults = faults

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        request, version = secretmanager.GetSecretVersionRequest, secretmanager.SecretVersion
        methods: dict[str, Method] = {
            "GetSecret": (self.get_secret, secretmanager.GetSecretRequest, secretmanager.Secret),
            "GetSecretVersion": (self.get_version, request, version),
            "AccessSecretVersion": (self.access, secretmanager.AccessSecretVersionRequest,
                                    secretmanager.AccessSecretVersionResponse),
            "DisableSecretVersion": (self.disable, secretmanager.DisableSecretVersionRequest, version),
            "EnableSecretVersion": (self.enable, secretmanager.EnableSecretVersionRequest, version),
        }
        return [service_handler(SERVICE, methods, self.faults)]

    def get_secret(self, request: secretmanager.GetSecretRequest) -> secretmanager.Secret:
        project, secret = _parts(_SECRET_RE, request.name)
        self._check_access("secrets.get", request.name)
        if not self.store.exists(project, secret):
            raise not_found(f"Secret [{_secret_name(project, secret)}] not found.")
        first = self.store.version(project, secret, "1")  # versions are never deleted here
        return secretmanager.Secret(
            name=_secret_name(project, secret), create_time=_time(first.created),
            replication=secretmanager.Replication(automatic=secretmanager.Replication.Automatic()))

    def get_version(self, request: secretmanager.GetSecretVersionRequest) -> secretmanager.SecretVersion:
        return self._version(request.name, "versions.get", self.store.version)

    def access(self, request: secretmanager.AccessSecretVersionRequest
               ) -> secretmanager.AccessSecretVersionResponse:
        found = self._version(request.name, "versions.access", self.store.version)
        project, secret, _ = _parts(_VERSION_RE, request.name)
        try:
            data = self.store.access(project, secret, found.name.rsplit("/", 1)[1])
        except VersionDisabled:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Secret Version [{found.name}] is in DISABLED state.") from None
        return secretmanager.AccessSecretVersionResponse(
            name=found.name, payload=secretmanager.SecretPayload(data=data))

    def disable(self, request: secretmanager.DisableSecretVersionRequest) -> secretmanager.SecretVersion:
        return self._version(request.name, "versions.disable",
                             lambda p, s, v: self.store.set_enabled(p, s, v, enabled=False))

    def enable(self, request: secretmanager.EnableSecretVersionRequest) -> secretmanager.SecretVersion:
        return self._version(request.name, "versions.enable",
                             lambda p, s, v: self.store.set_enabled(p, s, v, enabled=True))

    def _version(self, name: str, permission: str,
                 act: Callable[[str, str, str], VersionInfo]) -> secretmanager.SecretVersion:
        project, secret, version = _parts(_VERSION_RE, name)
        self._check_access(permission, name)
        try:
            found = act(project, secret, version)
        except SecretMissing as missing:
            if missing.secret_exists:
                raise not_found(f"Secret Version [{_secret_name(project, secret)}/versions/{version}] "
                                "not found.") from None
            raise not_found(f"Secret [{_secret_name(project, secret)}] not found or has no versions.") \
                from None
        return secretmanager.SecretVersion(
            name=f"{_secret_name(project, secret)}/versions/{found.number}",
            state=_STATE.ENABLED if found.enabled else _STATE.DISABLED, create_time=_time(found.created))

    def _check_access(self, permission: str, name: str) -> None:
        if self.settings.secrets_denied:
            info = error_details_pb2.ErrorInfo(reason="IAM_PERMISSION_DENIED", domain="iam.googleapis.com",
                                               metadata={"permission": f"secretmanager.{permission}"})
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                           f"Permission 'secretmanager.{permission}' denied for resource '{name}' "
                           "(or it may not exist).", (info,))


def _parts(pattern: re.Pattern[str], name: str) -> Any:
    match = pattern.match(name)
    if match is None:
        raise invalid(f"Resource ID [{name}] is not in a valid format.")
    return match.groups()


def _secret_name(project: str, secret: str) -> str:
    number = project if project.isdigit() else project_number(project)
    return f"projects/{number}/secrets/{secret}"


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)
