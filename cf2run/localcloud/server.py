"""`LocalCloud`: the Google services on 127.0.0.1, started and stopped as one.

    with LocalCloud() as cloud:            # ephemeral state dir, for tests and the demo
        cloud.endpoints.cloudrun            # '127.0.0.1:PORT'
        Cloud.local(cloud.endpoints)        # the official clients, pointed at it

`cf2run localcloud serve --state-dir DIR` runs the same thing persistently: it reuses the
ports recorded in DIR/endpoints.json, and services that were serving come back on the same
URLs. No process outlives `close()`, which marks endpoints.json stopped (its ports kept), nor a
`kill -9` of it: its children die with it, and a restart ends what one left (children.py); a
second local cloud in the same state dir is refused while the first one lives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import grpc

from cf2run.gcp.oci import RegistryClient, basic_access_token
from cf2run.localcloud import children
from cf2run.localcloud.cloudbuild.api import CloudBuildService
from cf2run.localcloud.cloudfunctions.api import CloudFunctionsService
from cf2run.localcloud.cloudfunctions.gen1 import Gen1Functions
from cf2run.localcloud.cloudfunctions.gen1_frontend import FunctionsFrontEnd
from cf2run.localcloud.cloudfunctions.store import FunctionStore
from cf2run.localcloud.cloudrun.api import CloudRunService
from cf2run.localcloud.cloudrun.router import Router
from cf2run.localcloud.cloudrun.runtime import Runtime
from cf2run.localcloud.cloudrun.scaling import Instances
from cf2run.localcloud.endpoints import FILENAME, Endpoints
from cf2run.localcloud.frontend.grpcapi import serve
from cf2run.localcloud.frontend.grpcauth import RequireAccessToken
from cf2run.localcloud.iam.accounts import Accounts, AccountsServer, bearer_error
from cf2run.localcloud.iam.metadata import CLOUD_PLATFORM_SCOPE, MetadataServer, TokenAuthority
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.registry.repositories import DEFAULT_REPOSITORY, DockerRepositories
from cf2run.localcloud.secretmanager.api import SecretManagerService
from cf2run.localcloud.settings import INTERNAL_HEADER, FaultInjector, LocalCloudSettings
from cf2run.localcloud.storage.emulator import StorageFront, StorageServer

log = logging.getLogger(__name__)
#: Who the local Cloud Build pushes and the local Cloud Run pulls images as.
SERVICE_AGENT = "service-000000000000@gcp-sa-cloudbuild.iam.gserviceaccount.com"


class LocalCloud:
    """Cloud Storage, Artifact Registry, Cloud Build, Cloud Run, Cloud Functions and Secret Manager on
    loopback."""

    def __init__(self, state_dir: Path | None = None,
                 settings: LocalCloudSettings | None = None) -> None:
        self._ephemeral = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="cf2run-localcloud-")) if state_dir is None \
            else Path(state_dir)
        self.settings = settings or LocalCloudSettings()
        self.faults = FaultInjector(self.settings)
        self._stack = contextlib.ExitStack()
        self._endpoints: Endpoints | None = None
        self._marked = False  # endpoints.json says this instance started (or is starting) here
        self.seeded: list[str] = []  # what start(seed_functions=...) took

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise RuntimeError("the local cloud is not started")
        return self._endpoints

    def start(self, seed_functions: Path | None = None) -> LocalCloud:
        """Start every service; with `seed_functions`, take that seed directory's Cloud Functions
        (as `seed_functions()` does; their names in `seeded`) before endpoints.json says the cloud
        runs, so no command sees a partial list of functions."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        children.claim(self.state_dir)  # LocalCloudBusy while another live one serves here
        previous = _previous_ports(self.state_dir)
        # Before any service listens: a command meanwhile is told it is starting, not sent to the
        # token service that answers first while the others are still to come (endpoints.py).
        Endpoints.mark_starting(self.state_dir)
        self._marked = True
        ended = children.end_leftovers(self.state_dir)
        if ended:
            log.warning("ended %d processes an earlier local cloud in %s left running (pids %s)",
                        len(ended), self.state_dir, ", ".join(map(str, ended)))
        try:
            self._start(previous, seed_functions)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, previous: dict[str, int], seed_functions: Path | None) -> None:
        stack, state = self._stack, self.state_dir

        tokens = TokenAuthority(state)
        # Callers reach Cloud Storage through its front end (credentials checked); the local Cloud
        # Build, like Google's service agents, talks to fake-gcs-server directly.
        storage_front = StorageFront(tokens, port=previous.get("storage", 0), faults=self.faults)
        storage_front.start()
        stack.callback(storage_front.stop)
        storage = StorageServer(state / "storage", external_url=storage_front.url)
        storage.start()
        stack.callback(storage.stop)
        storage_front.backend = f"127.0.0.1:{storage.port}"
        self.accounts = Accounts(state, tokens)
        accounts = AccountsServer(self.accounts, port=previous.get("accounts", 0))
        accounts.start()
        stack.callback(accounts.stop)

        # Artifact Registry's token exchange takes an OAuth access token as the Basic password of
        # user oauth2accesstoken (https://cloud.google.com/artifact-registry/docs/docker/authentication).
        # Images go only into repositories that exist, as there: the default target's is created.
        self.repositories = DockerRepositories.of(state)
        self.repositories.ensure(*DEFAULT_REPOSITORY)
        registry = RegistryServer(
            state / "registry", self.faults, port=previous.get("registry", 0),
            auth=lambda user, password: user == "oauth2accesstoken" and not bearer_error(password, tokens),
            repositories=self.repositories)
        registry.start()
        stack.callback(registry.stop)
        # Cloud Build pushes and Cloud Run pulls as Google's own service agents do: with a token.
        registry_client = RegistryClient(resolve=lambda host: f"http://{registry.address}",
                                         headers={INTERNAL_HEADER: self.faults.internal_key},
                                         auth=lambda: basic_access_token(tokens.mint_access(
                                             SERVICE_AGENT, [CLOUD_PLATFORM_SCOPE])[0]))

        metadata = MetadataServer(tokens, port=previous.get("metadata", 0))
        metadata.start()
        stack.callback(metadata.stop)

        runtime = Runtime(state / "runtime", registry_client,
                          ready_deadline_s=lambda: self.settings.ready_deadline_s,
                          fork_server=lambda: self.settings.fork_server)
        stack.callback(runtime.stop_all)
        self.instances = Instances(runtime, idle_after_s=lambda: self.settings.scale_to_zero_after_s)
        stack.callback(self.instances.close)
        router = Router(tokens, backend=self.instances.serving,
                        inside_vpc=lambda: self.settings.caller_in_vpc)
        stack.callback(router.stop_all)
        self.cloudrun = CloudRunService(state / "cloudrun", self.settings, self.faults,
                                        self.instances, router, tokens)
        stack.callback(self.cloudrun.stop)
        self.cloudbuild = CloudBuildService(state / "cloudbuild", self.settings, self.faults,
                                            storage.url, registry_client)
        stack.callback(self.cloudbuild.stop)

        front_end = [RequireAccessToken(tokens)]
        build_server, build_port = serve(self.cloudbuild.handlers(), previous.get("cloudbuild", 0), front_end)
        stack.callback(_stopper(build_server))
        run_server, run_port = serve(self.cloudrun.handlers(), previous.get("cloudrun", 0), front_end)
        stack.callback(_stopper(run_server))
        self.cloudrun.restore()
        functions_port, functions_url = self._start_functions(
            previous, tokens, self.instances, registry_client, storage.url, storage_front.url)
        secrets_server, secrets_port = serve(
            SecretManagerService(self.cloudrun.secrets, self.settings, self.faults).handlers(),
            previous.get("secretmanager", 0), front_end)
        stack.callback(_stopper(secrets_server))

        self._endpoints = Endpoints(
            storage=storage_front.url, registry=registry.address,
            cloudbuild=f"127.0.0.1:{build_port}", cloudrun=f"127.0.0.1:{run_port}",
            metadata=metadata.url, accounts=accounts.url,
            cloudfunctions=f"127.0.0.1:{functions_port}", functions=functions_url,
            secretmanager=f"127.0.0.1:{secrets_port}",
            credentials=str(self.accounts.default_key_file()))
        if seed_functions is not None:
            self.seeded = self.seed_functions(seed_functions)
        self._endpoints.write(state)  # clears the starting mark; kept after close (the ports are reused)

    def _start_functions(self, previous: dict[str, int], tokens: TokenAuthority, instances: Instances,
                         registry: RegistryClient, storage_backend: str, storage_url: str) -> tuple[int, str]:
        """Cloud Functions: the API (gRPC) and the 1st-gen functions' front end; the functions
        seeded before serve again. Returns (the API's port, the front end's URL)."""
        stack, state = self._stack, self.state_dir / "cloudfunctions"
        front = FunctionsFrontEnd(tokens, backend=instances.serving,
                                  inside_vpc=lambda: self.settings.caller_in_vpc,
                                  port=previous.get("functions", 0))
        front.start()
        stack.callback(front.stop)
        gen1 = Gen1Functions(state / "gen1", front, instances, registry, self.repositories,
                             self.cloudbuild.cache_dir,
                             source_of=lambda record: self.cloudfunctions.source_of(record))
        self.cloudfunctions = CloudFunctionsService(FunctionStore(state / "functions"), self.settings,
                                                    self.faults, tokens, storage_backend, storage_url, gen1)
        server, port = serve(self.cloudfunctions.handlers(), previous.get("cloudfunctions", 0),
                             [RequireAccessToken(tokens)])
        stack.callback(_stopper(server))
        self.cloudfunctions.restore()
        return port, front.url

    def seed_functions(self, directory: Path) -> list[str]:
        """Take the Cloud Functions of a seed directory (cloudfunctions/seed.py; SeedError naming
        the file when it is bad, before anything changes) and serve the 1st-gen ones; returns their
        resource names. Idempotent: an unchanged function is not deployed or built again. Kept in
        the state dir: a restarted local cloud serves them again."""
        if self._endpoints is None:
            raise RuntimeError("the local cloud is not started")
        return self.cloudfunctions.seed(Path(directory))

    def create_repository(self, repository: str, project: str = DEFAULT_REPOSITORY[0],
                          location: str = DEFAULT_REPOSITORY[1]) -> str:
        """Create an Artifact Registry Docker repository, as `gcloud artifacts repositories create
        REPOSITORY --repository-format=docker --location=LOCATION --project=PROJECT` does; returns
        its resource name (RepositoryExists, InvalidRepository as `DockerRepositories.create`)."""
        return DockerRepositories.of(self.state_dir).create(project, location, repository)

    def id_token(self, audience: str) -> str:
        """An ID token for a private local service (audience = its URL or a tag URL)."""
        return TokenAuthority(self.state_dir).mint(audience)

    def logs(self, service: str) -> str:
        """What the service's revisions wrote to stdout and stderr."""
        return self.cloudrun.logs(service)

    def close(self) -> None:
        self._stack.close()
        if self._marked:  # commands then say at once that none runs here
            Endpoints.mark_stopped(self.state_dir)
        self._endpoints, self._marked = None, False
        children.release(self.state_dir)
        if self._ephemeral:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _stopper(server: grpc.Server) -> Callable[[], None]:
    def stop() -> None:
        server.stop(grace=1).wait()

    return stop


def _previous_ports(state_dir: Path) -> dict[str, int]:
    """Ports of the last run in this state dir, so URLs stay the same after a restart."""
    try:
        recorded = json.loads((state_dir / FILENAME).read_text())
    except (OSError, ValueError):
        return {}
    return {name: Endpoints.port_of(str(recorded[name])) for name in Endpoints.SERVICES if name in recorded}
