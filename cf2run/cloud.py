"""The official Google clients for a target, built in one place.

Nothing else in cf2run knows whether it talks to real GCP or to the embedded local cloud:
tasks ask `Cloud.for_target(target)` for `storage`, `builds`, `services`, `revisions`,
`registry` and `id_token(audience)`, and get the same client types either way, with the
`polling` that suits the backend.
Clients are never task parameters (they would break Prefect's cache keys).
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1
from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import (
    CloudBuildGrpcTransport,
)
from google.cloud.run_v2.services.revisions.transports import RevisionsGrpcTransport
from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport
from google.cloud.storage import Client as StorageClient

from cf2run.errors import Cf2RunError
from cf2run.localcloud.endpoints import Endpoints
from cf2run.oci import RegistryClient

if TYPE_CHECKING:
    from cf2run.spec import Target

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class Backoff:
    """How often to ask whether a long-running thing (a build, an operation) is done: wait
    `first_s`, then `factor` times longer each time, never more than `maximum_s`."""

    first_s: float
    maximum_s: float
    factor: float

    def after(self, delay: float) -> float:
        """The wait after one of `delay`."""
        return min(delay * self.factor, self.maximum_s)

    def schedule(self, expected_s: float | None = None, quick: int = 3) -> Iterator[float]:
        """Seconds after the start at which to ask: the backoff's own times and, when the thing
        is expected to end after `expected_s` (things like it did), asks every half `first_s`
        from half a `first_s` before it to `quick` `first_s` after it, so an end there is
        noticed within half a `first_s` rather than up to `maximum_s` late. Of two asks closer
        than half `first_s`, only the later one is made."""
        step = self.first_s / 2
        extra = [expected_s + i * step for i in range(-1, 2 * quick + 1)] if expected_s else []
        extra = [t for t in extra if t > 0]
        held: float | None = None
        at, delay = 0.0, self.first_s
        while True:
            at += delay
            delay = self.after(delay)
            for when in sorted([*(t for t in extra if t < at), at]):
                if held is not None and when - held >= step - 1e-9:
                    yield held
                held = when
            extra = [t for t in extra if t >= at]


@dataclass(frozen=True)
class Polling:
    """The backoffs of one backend: GetBuild, and Cloud Run's long-running operations."""

    build: Backoff
    operation: Backoff


#: Google: seconds, with backoff; GetBuild every second exhausts the "Get requests per minute"
#: quota on big fleets (REFERENCE §1).
GCP_POLLING = Polling(build=Backoff(1.0, 15.0, 2.0), operation=Backoff(0.5, 10.0, 1.5))
#: The local cloud: a question is a loopback call, and every second a finished build is not
#: noticed is a second its build slot (the concurrent-builds quota) stays taken.
LOCAL_POLLING = Polling(build=Backoff(0.1, 0.5, 1.5), operation=Backoff(0.05, 0.5, 1.5))


def default_localcloud_dir() -> Path:
    """Where `cf2run localcloud serve` keeps its state unless told otherwise."""
    return Path(os.environ.get("CF2RUN_LOCALCLOUD_DIR", Path.home() / ".cf2run" / "localcloud"))


class Cloud:
    """Clients for one project, on GCP or on the local cloud, and how often to poll them
    (`polling`). Thread-safe, built lazily."""

    def __init__(self, *, project: str, storage_client: Callable[[], StorageClient],
                 channel: Callable[[str], grpc.Channel | None], credentials: Callable[[], Credentials],
                 registry: Callable[[], RegistryClient], id_token: Callable[[str], str],
                 polling: Polling, endpoints: Endpoints | None = None) -> None:
        self.project = project
        self.polling = polling
        self.endpoints = endpoints
        self._make_storage = storage_client
        self._channel = channel
        self._credentials = credentials
        self._make_registry = registry
        self._id_token = id_token

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def local(cls, endpoints: Endpoints, project: str = "local-project") -> Cloud:
        """Clients for the embedded local cloud: insecure loopback channels, no credentials."""
        http = httpx.Client(timeout=30)

        def id_token(audience: str) -> str:
            answer = http.get(
                f"{endpoints.metadata}/computeMetadata/v1/instance/service-accounts/default/identity",
                params={"audience": audience}, headers={"Metadata-Flavor": "Google"})
            answer.raise_for_status()
            return answer.text

        return cls(
            project=project,
            endpoints=endpoints,
            storage_client=lambda: StorageClient(
                project=project, credentials=AnonymousCredentials(),
                client_options=ClientOptions(api_endpoint=endpoints.storage)),
            channel=lambda service: grpc.insecure_channel(getattr(endpoints, service)),
            credentials=AnonymousCredentials,
            registry=lambda: RegistryClient(resolve=lambda host: f"http://{endpoints.registry}"),
            id_token=id_token,
            polling=LOCAL_POLLING,
        )

    @classmethod
    def gcp(cls, project: str, credentials_block: str | None = None) -> Cloud:
        """Clients for real Google Cloud: a prefect-gcp GcpCredentials block, else ADC."""

        @functools.cache
        def credentials() -> Credentials:
            if credentials_block:
                from prefect_gcp import GcpCredentials

                block = GcpCredentials.load(credentials_block)
                return block.get_credentials_from_service_account()  # type: ignore[no-any-return]
            import google.auth

            creds, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
            return creds  # type: ignore[no-any-return]

        def registry_auth() -> str:
            import google.auth.transport.requests

            creds = credentials()
            if not creds.valid:
                creds.refresh(google.auth.transport.requests.Request())
            basic = base64.b64encode(f"oauth2accesstoken:{creds.token}".encode()).decode()
            return f"Basic {basic}"

        def id_token(audience: str) -> str:
            import google.auth.transport.requests
            import google.oauth2.id_token
            from google.oauth2 import service_account

            request = google.auth.transport.requests.Request()
            creds = credentials()
            if isinstance(creds, service_account.Credentials):
                signer = service_account.IDTokenCredentials(
                    creds.signer, creds.service_account_email, creds._token_uri,
                    target_audience=audience)
                signer.refresh(request)
                return str(signer.token)
            token = google.oauth2.id_token.fetch_id_token(request, audience)
            return str(token)

        return cls(
            project=project,
            storage_client=lambda: StorageClient(project=project, credentials=credentials()),
            channel=lambda service: None,
            credentials=credentials,
            registry=lambda: RegistryClient(auth=registry_auth),
            id_token=id_token,
            polling=GCP_POLLING,
        )

    @classmethod
    def for_target(cls, target: Target) -> Cloud:
        """The (process-wide, cached) clients for a target."""
        if target.kind == "local":
            directory = target.localcloud_dir or default_localcloud_dir()
            return _cached_local(Endpoints.read(Path(directory)), target.project)
        return _cached_gcp(target.project, target.credentials_block)

    # -- clients ------------------------------------------------------------------------

    @functools.cached_property
    def storage(self) -> StorageClient:
        return self._make_storage()

    @functools.cached_property
    def builds(self) -> cloudbuild_v1.CloudBuildClient:
        channel = self._channel("cloudbuild")
        if channel is None:
            return cloudbuild_v1.CloudBuildClient(credentials=self._credentials())
        return cloudbuild_v1.CloudBuildClient(transport=CloudBuildGrpcTransport(channel=channel))

    @functools.cached_property
    def services(self) -> run_v2.ServicesClient:
        channel = self._channel("cloudrun")
        if channel is None:
            return run_v2.ServicesClient(credentials=self._credentials())
        return run_v2.ServicesClient(transport=ServicesGrpcTransport(channel=channel))

    @functools.cached_property
    def revisions(self) -> run_v2.RevisionsClient:
        channel = self._channel("cloudrun")
        if channel is None:
            return run_v2.RevisionsClient(credentials=self._credentials())
        return run_v2.RevisionsClient(transport=RevisionsGrpcTransport(channel=channel))

    @functools.cached_property
    def registry(self) -> RegistryClient:
        return self._make_registry()

    def id_token(self, audience: str) -> str:
        """An ID token whose audience is `audience` (a Cloud Run URL), for private services."""
        try:
            return self._id_token(audience)
        except Exception as error:  # google-auth and httpx raise many kinds
            raise Cf2RunError(f"cannot get an ID token for {audience}: {error}",
                              hint="on GCP use service-account credentials or ADC that can "
                                   "mint ID tokens") from error


@functools.cache
def _cached_local(endpoints: Endpoints, project: str) -> Cloud:
    return Cloud.local(endpoints, project)


@functools.cache
def _cached_gcp(project: str, credentials_block: str | None) -> Cloud:
    return Cloud.gcp(project, credentials_block)
