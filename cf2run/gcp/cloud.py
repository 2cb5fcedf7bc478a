"""The official Google clients for a target, built in one place.

Nothing else in cf2run knows whether it talks to real GCP or to the embedded local cloud:
tasks ask `Cloud.for_target(target)` for `storage`, `builds`, `services`, `revisions`,
`functions` (Cloud Functions v1), `functions_v2`, `secrets` (Secret Manager), `registry` and
`id_token(audience)`, and get
the same client types either way, with the
`polling` that suits the backend.
Clients are never task parameters (they would break Prefect's cache keys).

Each Google client library is imported when its client is first built, not with this module:
an unchanged rerun needs Cloud Run and Artifact Registry only, and a command pays for what it
uses (bench/cli_rerun.py).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from google.auth.credentials import Credentials

from cf2run.errors import Cf2RunError
from cf2run.gcp.credentials import IdTokens, application_default, from_block, kind_of, resolve
from cf2run.gcp.oci import RegistryClient, basic_access_token
from cf2run.gcp.reachability import ReachingInterceptor, ReachingSession
from cf2run.localcloud.endpoints import Endpoints, serve_command
from cf2run.localcloud.iam.accounts import route_google_auth, routed_to

if TYPE_CHECKING:
    import grpc
    from google.cloud import functions_v1, functions_v2, run_v2, secretmanager
    from google.cloud.devtools import cloudbuild_v1
    from google.cloud.storage import Client as StorageClient

    from cf2run.manifest.spec import Target

C = TypeVar("C")


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


#: The services' names in messages.
SERVICE_NAMES = {"storage": "Cloud Storage", "cloudbuild": "Cloud Build", "cloudrun": "Cloud Run",
                 "cloudfunctions": "Cloud Functions", "secretmanager": "Secret Manager"}


def default_localcloud_dir() -> Path:
    """Where `cf2run localcloud serve` keeps its state unless told otherwise."""
    return Path(os.environ.get("CF2RUN_LOCALCLOUD_DIR", Path.home() / ".cf2run" / "localcloud"))


class Cloud:
    """Clients for one project, on GCP or on the local cloud, and how often to poll them
    (`polling`). Thread-safe, built lazily.

    Both clouds authenticate the same way, with google-auth's own classes (cf2run/gcp/credentials.py):
    only the endpoints differ. `endpoints` None means Google's."""

    def __init__(self, *, project: str, credentials: Callable[[], Credentials], polling: Polling,
                 endpoints: Endpoints | None = None) -> None:
        self.project = project
        self.polling = polling
        self.endpoints = endpoints
        self._resolve_credentials = credentials
        self._credentials: Credentials | None = None
        self._lock = threading.Lock()  # a fleet's threads ask for the credentials at once
        #: What to check when an endpoint does not answer (cf2run/gcp/reachability.py).
        self.unreachable_hint = ("check the network (DNS, proxy, firewall) and that the API is "
                                 "reachable from here; then run it again")

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def local(cls, endpoints: Endpoints, project: str = "local-project",
              base: Callable[[], Credentials] | None = None, impersonate: str | None = None,
              state_dir: Path | None = None) -> Cloud:
        """Clients for the embedded local cloud: loopback endpoints, and (unless `base` says otherwise)
        the local cloud's own service-account key (`endpoints.credentials`) through google-auth.
        `state_dir`: where it runs, named when it stops answering."""
        from google.oauth2 import service_account

        route_google_auth(endpoints.accounts)
        route_storage_clients(endpoints.storage)
        own_key = functools.partial(service_account.Credentials.from_service_account_file,
                                    endpoints.credentials)
        cloud = cls(project=project, endpoints=endpoints, polling=LOCAL_POLLING,
                    credentials=functools.partial(resolve, base or own_key, impersonate))
        start = f"`{serve_command(state_dir)}`" if state_dir else "`cf2run localcloud serve`"
        cloud.unreachable_hint = f"is the local cloud still running? start it again with {start}"
        return cloud

    @classmethod
    def gcp(cls, project: str, base: Callable[[], Credentials] | None = None,
            impersonate: str | None = None) -> Cloud:
        """Clients for real Google Cloud (credentials: `base`, else ADC). Refused in a process whose
        google-auth talks to a local cloud (`route_google_auth`): its tokens would go there."""
        if (local := routed_to()) is not None:
            raise Cf2RunError(f"this process already sends google-auth's token requests to the local "
                              f"cloud at {local}, so it cannot migrate to Google Cloud",
                              hint="run Google Cloud migrations in a process of their own (a cf2run "
                                   "command, or a Prefect worker's flow run)")
        if emulator := os.environ.get(STORAGE_EMULATOR_HOST):
            raise Cf2RunError(f"{STORAGE_EMULATOR_HOST}={emulator} is set, so this process' Cloud Storage "
                              "calls (source archives, results) would go there, not to Google Cloud",
                              hint=f"unset {STORAGE_EMULATOR_HOST} to migrate to Google Cloud")
        return cls(project=project, polling=GCP_POLLING,
                   credentials=functools.partial(resolve, base or application_default, impersonate))

    @classmethod
    def for_target(cls, target: Target) -> Cloud:
        """The (process-wide, cached) clients for a target: its credentials block, else ADC on GCP and
        the local cloud's own key locally; impersonating the target's impersonate_service_account."""
        if target.kind == "local":  # a stopped or killed local cloud: LocalCloudNotRunning, at once
            directory = Path(target.localcloud_dir or default_localcloud_dir())
            endpoints = Endpoints.running(directory)
            # The route is process-wide and the clients are cached: the local cloud asked for last
            # gets the endpoint-less storage clients (one per process in use; tests have several).
            route_storage_clients(endpoints.storage)
            return _cached_local(endpoints, target.project, target.credentials_block,
                                 target.impersonate_service_account, directory)
        return _cached_gcp(target.project, target.credentials_block, target.impersonate_service_account)

    # -- credentials --------------------------------------------------------------------

    @property
    def credentials(self) -> Credentials:
        """The target's credentials, resolved once (CredentialsMissing when there are none)."""
        if self._credentials is None:
            with self._lock:
                if self._credentials is None:
                    self._credentials = self._resolve_credentials()
        return self._credentials

    @functools.cached_property
    def _id_tokens(self) -> IdTokens:
        return IdTokens.for_credentials(self.credentials)

    def check_identity(self) -> None:
        """Cf2RunError, naming the kind of credentials and what to do, when they cannot call the APIs
        (none found) or cannot get the smoke test's ID token. No network call."""
        self._id_tokens  # noqa: B018 - building it is the check

    def id_token(self, audience: str) -> str:
        """An ID token whose audience is `audience` (a Cloud Run URL), for private services."""
        try:
            return self._id_tokens(audience)
        except Cf2RunError:
            raise
        except Exception as error:  # google-auth raises many kinds
            hint = "check that these credentials may mint ID tokens (to impersonate an account: " \
                   "roles/iam.serviceAccountTokenCreator on it)"
            raise Cf2RunError(f"cannot get an ID token for {audience} with {kind_of(self.credentials)}: "
                              f"{error}", hint=hint) from error

    def _access_token(self) -> str:
        """A current OAuth access token of the credentials (refreshed when needed)."""
        import google.auth.transport.requests

        found = self.credentials
        if not found.valid:
            found.refresh(google.auth.transport.requests.Request())
        return str(found.token)

    def _channel(self, service: str) -> grpc.Channel | None:
        """An authenticated loopback channel to a local service (None on Google: the client makes its own)."""
        if self.endpoints is None:
            return None
        import google.auth.transport.requests
        import grpc
        from google.auth.transport.grpc import AuthMetadataPlugin

        plugin = AuthMetadataPlugin(self.credentials, google.auth.transport.requests.Request())
        address = getattr(self.endpoints, service)
        # Call credentials need a secure channel; gRPC's local credentials are one over loopback TCP.
        channel = grpc.secure_channel(address, grpc.composite_channel_credentials(
            grpc.local_channel_credentials(), grpc.metadata_call_credentials(plugin)))
        return grpc.intercept_channel(channel, ReachingInterceptor(
            SERVICE_NAMES[service], address, self.unreachable_hint))

    def _grpc_client(self, client: Callable[..., C], transport: Callable[..., Any], service: str) -> C:
        """`client` of the Google API: its own channel on Google, the local service's otherwise."""
        channel = self._channel(service)
        if channel is None:
            return client(credentials=self.credentials)
        return client(transport=transport(channel=channel))

    # -- clients ------------------------------------------------------------------------

    @functools.cached_property
    def storage(self) -> StorageClient:
        """Its session raises EndpointUnreachable for an endpoint nobody answers at, which the
        client's own retry (120 s) does not repeat: the step's retries are the one budget."""
        from google.api_core.client_options import ClientOptions
        from google.cloud.storage import Client as StorageClient

        local = ClientOptions(api_endpoint=self.endpoints.storage) if self.endpoints else None
        session = ReachingSession(self.credentials, SERVICE_NAMES["storage"], self.unreachable_hint)
        return StorageClient(project=self.project, credentials=self.credentials, client_options=local,
                             _http=session)

    @functools.cached_property
    def builds(self) -> cloudbuild_v1.CloudBuildClient:
        from google.cloud.devtools import cloudbuild_v1
        from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import (
            CloudBuildGrpcTransport,
        )

        return self._grpc_client(cloudbuild_v1.CloudBuildClient, CloudBuildGrpcTransport, "cloudbuild")

    @functools.cached_property
    def services(self) -> run_v2.ServicesClient:
        from google.cloud import run_v2
        from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport

        return self._grpc_client(run_v2.ServicesClient, ServicesGrpcTransport, "cloudrun")

    @functools.cached_property
    def revisions(self) -> run_v2.RevisionsClient:
        from google.cloud import run_v2
        from google.cloud.run_v2.services.revisions.transports import RevisionsGrpcTransport

        return self._grpc_client(run_v2.RevisionsClient, RevisionsGrpcTransport, "cloudrun")

    @functools.cached_property
    def functions(self) -> functions_v1.CloudFunctionsServiceClient:
        """Cloud Functions v1: 1st-gen functions in their own shape (get, download URL, IAM, call)."""
        from google.cloud import functions_v1
        from google.cloud.functions_v1.services.cloud_functions_service.transports import (
            CloudFunctionsServiceGrpcTransport,
        )

        return self._grpc_client(functions_v1.CloudFunctionsServiceClient,
                                 CloudFunctionsServiceGrpcTransport, "cloudfunctions")

    @functools.cached_property
    def functions_v2(self) -> functions_v2.FunctionServiceClient:
        """Cloud Functions v2: lists 1st- and 2nd-gen functions (`environment` GEN_1 / GEN_2)."""
        from google.cloud import functions_v2
        from google.cloud.functions_v2.services.function_service.transports import (
            FunctionServiceGrpcTransport,
        )

        return self._grpc_client(functions_v2.FunctionServiceClient, FunctionServiceGrpcTransport,
                                 "cloudfunctions")

    @functools.cached_property
    def secrets(self) -> secretmanager.SecretManagerServiceClient:
        """Secret Manager: whether the secrets a manifest names exist (cf2run never reads their data)."""
        from google.cloud import secretmanager
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcTransport,
        )

        return self._grpc_client(secretmanager.SecretManagerServiceClient,
                                 SecretManagerServiceGrpcTransport, "secretmanager")

    @functools.cached_property
    def registry(self) -> RegistryClient:
        """Artifact Registry: Basic ``oauth2accesstoken:ACCESS_TOKEN`` exchanged for a Bearer token."""
        auth = lambda: basic_access_token(self._access_token())  # noqa: E731
        if self.endpoints is None:
            return RegistryClient(auth=auth)
        address = self.endpoints.registry
        return RegistryClient(resolve=lambda host: f"http://{address}", auth=auth)


#: google-cloud-storage's emulator variable: a client whose `client_options` name no endpoint sends
#: its calls there (google/cloud/storage/client.py: `api_endpoint` first, then this; added by
#: googleapis/google-cloud-python#9219), with the credentials it was given, if any.
STORAGE_EMULATOR_HOST = "STORAGE_EMULATOR_HOST"


def route_storage_clients(url: str) -> None:
    """Point the Cloud Storage clients of this process that name no endpoint at the local cloud's
    Cloud Storage at `url`, as `route_google_auth` does for the token hosts: prefect-gcp's
    `GcsBucket` (the workers' shared result storage, cf2run/result_storage.py) builds its client
    without one. Its credentials still go with every call, and the local Cloud Storage checks them.

    The client reads STORAGE_EMULATOR_HOST through `_get_storage_emulator_override` when it is
    built; that function is answered here rather than the variable set, so the processes this one
    starts do not inherit the route. cf2run's own clients name their endpoint, and a process
    routed here refuses Google Cloud targets (`Cloud.gcp`), so no call meant for Google comes here."""
    import google.cloud.storage.client as storage_client

    storage_client._get_storage_emulator_override = lambda: url  # type: ignore[attr-defined]


def _block(name: str | None) -> Callable[[], Credentials] | None:
    return functools.partial(from_block, name) if name else None


@functools.cache
def _cached_local(endpoints: Endpoints, project: str, block: str | None, impersonate: str | None,
                  state_dir: Path | None = None) -> Cloud:
    return Cloud.local(endpoints, project, _block(block), impersonate, state_dir)


@functools.cache
def _cached_gcp(project: str, block: str | None, impersonate: str | None) -> Cloud:
    return Cloud.gcp(project, _block(block), impersonate)
