"""Cloud Run Admin API v2 on 127.0.0.1, for the official `google.cloud.run_v2` clients.

Serves ``google.cloud.run.v2.Services`` (Create/Get/List/Update/DeleteService, Get/Set/
TestIamPermissions), ``google.cloud.run.v2.Revisions`` (Get/List/DeleteRevision) and
``google.longrunning.Operations`` for its own operations.

A write is validated as Google validates it (`cloudrun_rules`), stored, and answered with a
long-running operation (``projects/P/locations/L/operations/UUID``, metadata = the Service);
the `Deployer` then does the slow part on the service's worker thread: the revision runs as a
local process (`Runtime`), the service has one stable URL and each traffic tag its own
(`Router`), and a revision that does not become ready fails the operation while the service
keeps serving its previous revision. Idle revisions scale to zero and start again on a request
(`scaling`). A service is private (403 without an ID token whose
audience is its URL) until its IAM policy grants ``allUsers`` ``roles/run.invoker``; one whose
ingress is internal answers 404 on all its URLs to callers outside its VPC (cloudrun/router.py).

State (services, revisions, policies, URL ports) is saved to ``STATE_DIR/state.json`` after
every change; `restore()` brings serving services back on the same URLs after a restart.
"""

from __future__ import annotations

import random
import secrets
import string
import uuid
from decimal import Decimal
from pathlib import Path

import grpc
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning.operations_pb2 import Operation

from cf2run.localcloud.cloudrun import rules, status
from cf2run.localcloud.cloudrun.deploy import Deployer
from cf2run.localcloud.cloudrun.router import Router
from cf2run.localcloud.cloudrun.scaling import Instances
from cf2run.localcloud.cloudrun.state import Store, page
from cf2run.localcloud.frontend.grpcapi import RpcError, service_handler
from cf2run.localcloud.frontend.operations import Operations
from cf2run.localcloud.iam.metadata import TokenAuthority
from cf2run.localcloud.secretmanager.store import SecretStore
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings

Code = grpc.StatusCode


class CloudRunService:
    """The local Cloud Run v2: its gRPC handlers, `restore()` after a restart, `stop()`.

    `instances` runs revisions (on its runtime) and scales them to zero, `router` serves the
    URLs (and checks ID tokens with `tokens`, the authority it was made with: accepted here to
    keep the module contract, unused).
    `secrets` (default: the local cloud's, `SecretStore.of(STATE_DIR/..)`) holds the secret
    versions that secret environment variables and secret volumes name (see secretmanager/store.py).
    """

    def __init__(self, state_dir: Path, settings: LocalCloudSettings, faults: FaultInjector,
                 instances: Instances, router: Router, tokens: TokenAuthority,
                 secrets: SecretStore | None = None) -> None:
        self._store = Store(Path(state_dir))
        self._ops = Operations()
        self._settings = settings
        self._faults = faults
        self._instances = instances
        self._runtime = instances.runtime
        self.secrets = secrets or SecretStore.of(Path(state_dir).parent)
        self._deployer = Deployer(self._store, self._ops, settings, faults, instances, router,
                                  self.secrets)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        services = service_handler("google.cloud.run.v2.Services", {
            "CreateService": (self.create_service, run_v2.CreateServiceRequest, Operation),
            "GetService": (self.get_service, run_v2.GetServiceRequest, run_v2.Service),
            "ListServices": (self.list_services, run_v2.ListServicesRequest,
                             run_v2.ListServicesResponse),
            "UpdateService": (self.update_service, run_v2.UpdateServiceRequest, Operation),
            "DeleteService": (self.delete_service, run_v2.DeleteServiceRequest, Operation),
            "GetIamPolicy": (self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest,
                             policy_pb2.Policy),
            "SetIamPolicy": (self.set_iam_policy, iam_policy_pb2.SetIamPolicyRequest,
                             policy_pb2.Policy),
            "TestIamPermissions": (self.test_iam_permissions,
                                   iam_policy_pb2.TestIamPermissionsRequest,
                                   iam_policy_pb2.TestIamPermissionsResponse),
        }, self._faults)
        revisions = service_handler("google.cloud.run.v2.Revisions", {
            "GetRevision": (self.get_revision, run_v2.GetRevisionRequest, run_v2.Revision),
            "ListRevisions": (self.list_revisions, run_v2.ListRevisionsRequest,
                              run_v2.ListRevisionsResponse),
            "DeleteRevision": (self.delete_revision, run_v2.DeleteRevisionRequest, Operation),
        }, self._faults)
        return [services, revisions, self._ops.handler(self._faults)]

    def restore(self) -> None:
        """After a restart: serving services come back on their URLs, their revisions running."""
        self._deployer.restore()

    def stop(self) -> None:
        """Stop taking on work. Revision processes and URLs end with the Runtime and Router."""
        self._deployer.stop()

    def logs(self, service: str) -> str:
        """What `service`'s revisions (service id, or full name) wrote to stdout and stderr."""
        return self._runtime.logs(status.short_name(service))

    # -- Services ------------------------------------------------------------------------------

    def create_service(self, request: run_v2.CreateServiceRequest) -> Operation:
        where = "CreateServiceRequest"
        rules.check_parent(request.parent, f"{where}.parent")
        rules.check_service_id(request.service_id, f"{where}.service_id")
        return self._write(request.parent, request.service_id, request.service, where,
                           create=True, validate_only=request.validate_only)

    def update_service(self, request: run_v2.UpdateServiceRequest) -> Operation:
        where = "UpdateServiceRequest"
        parent, service_id = rules.split_service_name(request.service.name, f"{where}.service.name")
        rules.check_service_id(service_id, f"{where}.service.name")
        return self._write(parent, service_id, request.service, where, create=False,
                           allow_missing=request.allow_missing, validate_only=request.validate_only)

    def _write(self, parent: str, service_id: str, given: run_v2.Service, where: str, *,
               create: bool, allow_missing: bool = False, validate_only: bool = False) -> Operation:
        """Accept a Create/Update (or an upsert): validate, store, and queue the deploy."""
        name = f"{parent}/services/{service_id}"
        with self._store.lock:
            state = self._store.state
            current = state.services.get(name)
            if current is not None and create:
                raise RpcError(Code.ALREADY_EXISTS, f"Resource '{service_id}' already exists.")
            if current is None and not (create or allow_missing):
                raise RpcError(Code.NOT_FOUND, status.not_found("SERVICE", name))
            if current is not None:
                rules.check_etag(given.etag, current.etag, f"service {name}")
                rules.check_immutable(given, current, f"{where}.service")
            existing = {status.short_name(r.name) for r in state.revisions_of(name)}
            targets = rules.check_service(given, service_id, existing, f"{where}.service")
            rules.check_instance_quota(given.template, Decimal(str(self._settings.run_cpu_quota)),
                                       int(self._settings.run_memory_quota_gib * 2**30))
            template = rules.with_defaults(given.template)
            revision, new = self._revision_for(name, current, template)
            service = status.accepted(name, given, current, template)
            made = status.new_revision(service, revision, template,
                                       self._log_uri(service_id)) if new else None
            service.latest_created_revision = f"{name}/revisions/{revision}"
            if validate_only:
                return self._done(parent, service)
            if made is not None:
                state.revisions[made.name] = made
                state.templates[made.name] = template
            state.services[name] = service
            self._store.save()
            op = self._ops.start(_op_name(parent), service)
        self._deployer.submit(name, op.name, lambda: self._deployer.deploy(
            op.name, name, service.generation, revision, targets))
        return op

    def _revision_for(self, name: str, current: run_v2.Service | None,
                      template: run_v2.RevisionTemplate) -> tuple[str, bool]:
        """(revision this write deploys, whether it is new). A named revision that exists is
        deployed again (as Knative's bring-your-own revision names are: it becomes the latest)
        when the configuration is the same: the service's current template name with the very
        same template, an older revision's name with the same spec (cloudrun_rules' sources).
        An unnamed template equal to the latest one makes no new revision."""
        templates = self._store.state.templates
        if template.revision:
            existing = templates.get(f"{name}/revisions/{template.revision}")
            if existing is None:
                return template.revision, True
            if current is not None and current.template.revision == template.revision:
                same = rules.same_configuration(current.template, template)
            else:
                same = rules.same_configuration(existing, template, metadata=False)
            if same:
                return template.revision, False
            raise rules.revision_name_taken(template.revision)
        if current is not None and current.latest_created_revision:
            latest = templates.get(current.latest_created_revision)
            if latest is not None and rules.same_configuration(latest, template):
                return status.short_name(current.latest_created_revision), False
        generation = 1 if current is None else current.generation + 1
        suffix = "".join(random.choices(string.ascii_lowercase, k=3))
        return f"{status.short_name(name)}-{generation:05d}-{suffix}", True

    def get_service(self, request: run_v2.GetServiceRequest) -> run_v2.Service:
        rules.split_service_name(request.name, "GetServiceRequest.name")
        with self._store.lock:
            return run_v2.Service(self._service(request.name))

    def list_services(self, request: run_v2.ListServicesRequest) -> run_v2.ListServicesResponse:
        where = "ListServicesRequest"
        rules.check_parent(request.parent, f"{where}.parent")
        prefix = f"{request.parent}/services/"
        with self._store.lock:
            found = sorted((run_v2.Service(s) for s in self._store.state.services.values()
                            if s.name.startswith(prefix)), key=lambda s: s.name)
        services, token = page(found, request.page_size, request.page_token, where)
        return run_v2.ListServicesResponse(services=services, next_page_token=token)

    def delete_service(self, request: run_v2.DeleteServiceRequest) -> Operation:
        name = request.name
        parent, _ = rules.split_service_name(name, "DeleteServiceRequest.name")
        with self._store.lock:
            state = self._store.state
            service = run_v2.Service(self._service(name))
            rules.check_etag(request.etag, service.etag, f"service {name}")
            if request.validate_only:
                return self._done(parent, service)
            revisions = [status.short_name(r.name) for r in state.revisions_of(name)]
            for revision in state.revisions_of(name):
                del state.revisions[revision.name]
                state.templates.pop(revision.name, None)
            del state.services[name]
            state.policies.pop(name, None)
            url_keys = [key for key in state.ports if key == name or key.startswith(f"{name}#")]
            for key in url_keys:
                del state.ports[key]
            self._store.save()
            op = self._ops.start(_op_name(parent), service)
        self._deployer.submit(name, op.name, lambda: self._deployer.delete(
            op.name, service, revisions, url_keys))
        return op

    # -- IAM -----------------------------------------------------------------------------------

    def get_iam_policy(self, request: iam_policy_pb2.GetIamPolicyRequest) -> policy_pb2.Policy:
        rules.split_service_name(request.resource, "GetIamPolicyRequest.resource")
        with self._store.lock:
            return rules.policy_at_version(
                self._policy(request.resource), request.options.requested_policy_version,
                "GetIamPolicyRequest.options.requested_policy_version")

    def set_iam_policy(self, request: iam_policy_pb2.SetIamPolicyRequest) -> policy_pb2.Policy:
        name = request.resource
        rules.split_service_name(name, "SetIamPolicyRequest.resource")
        rules.check_policy(request.policy, "SetIamPolicyRequest.policy")
        with self._store.lock:
            current = self._policy(name)
            if request.policy.etag and request.policy.etag != current.etag:
                raise RpcError(Code.ABORTED, "There were concurrent policy changes. Please retry "
                                             "the whole read-modify-write with exponential "
                                             "backoff.")
            policy = _copy_policy(request.policy)  # conditions and all
            policy.version = policy.version or 1
            policy.etag = secrets.token_bytes(8)
            self._store.state.policies[name] = policy
            self._store.save()
            answer = _copy_policy(policy)
        self._deployer.apply_routes(name)
        return answer

    def test_iam_permissions(self, request: iam_policy_pb2.TestIamPermissionsRequest
                             ) -> iam_policy_pb2.TestIamPermissionsResponse:
        """The local caller owns everything: every Cloud Run permission is granted."""
        rules.split_service_name(request.resource, "TestIamPermissionsRequest.resource")
        with self._store.lock:
            self._service(request.resource)
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=[p for p in request.permissions if p.startswith("run.")])

    # -- Revisions -----------------------------------------------------------------------------

    def get_revision(self, request: run_v2.GetRevisionRequest) -> run_v2.Revision:
        rules.split_revision_name(request.name, "GetRevisionRequest.name")
        with self._store.lock:
            return run_v2.Revision(self._revision(request.name))

    def list_revisions(self, request: run_v2.ListRevisionsRequest) -> run_v2.ListRevisionsResponse:
        where = "ListRevisionsRequest"
        location, service_id = rules.split_service_name(request.parent, f"{where}.parent")
        with self._store.lock:
            found = [run_v2.Revision(r) for r in self._store.state.revisions.values()
                     if r.service == request.parent
                     or (service_id == "-" and r.service.startswith(f"{location}/services/"))]
        found.sort(key=lambda r: (r.create_time, r.name), reverse=True)  # newest first
        revisions, token = page(found, request.page_size, request.page_token, where)
        return run_v2.ListRevisionsResponse(revisions=revisions, next_page_token=token)

    def delete_revision(self, request: run_v2.DeleteRevisionRequest) -> Operation:
        name = request.name
        service_name, revision_id = rules.split_revision_name(name, "DeleteRevisionRequest.name")
        parent = service_name.rsplit("/services/", 1)[0]
        with self._store.lock:
            state = self._store.state
            revision = run_v2.Revision(self._revision(name))
            rules.check_etag(request.etag, revision.etag, f"revision {name}")
            service = state.services.get(service_name)
            if service is not None:
                serving = {t.revision for t in status.resolved_targets(service)}
                if revision_id in serving:
                    raise RpcError(Code.FAILED_PRECONDITION,
                                   f"Revision '{revision_id}' cannot be deleted: it is serving "
                                   "traffic or has a tag. Route its traffic elsewhere first.")
                if service.latest_created_revision == name:
                    raise RpcError(Code.FAILED_PRECONDITION,
                                   f"Revision '{revision_id}' cannot be deleted: it is the latest "
                                   "revision of its service.")
            if request.validate_only:
                return self._done(parent, revision)
            del state.revisions[name]
            state.templates.pop(name, None)
            self._store.save()
            op = self._ops.start(_op_name(parent), revision)

        def stop() -> None:
            self._instances.forget(revision_id)
            self._ops.succeed(op.name, revision, metadata=revision)

        self._deployer.submit(service_name, op.name, stop)
        return op

    # -- helpers (call with the store lock held) -----------------------------------------------

    def _service(self, name: str) -> run_v2.Service:
        service = self._store.state.services.get(name)
        if service is None:
            raise RpcError(Code.NOT_FOUND, status.not_found("SERVICE", name))
        return service

    def _revision(self, name: str) -> run_v2.Revision:
        revision = self._store.state.revisions.get(name)
        if revision is None:
            raise RpcError(Code.NOT_FOUND, status.not_found("REVISION", name))
        return revision

    def _policy(self, name: str) -> policy_pb2.Policy:
        """The service's IAM policy (an empty one, with an etag, until one is set)."""
        self._service(name)
        policy = self._store.state.policies.get(name)
        if policy is None:
            policy = policy_pb2.Policy(version=1, etag=secrets.token_bytes(8))
            self._store.state.policies[name] = policy
            self._store.save()
        return policy

    def _done(self, parent: str, resource: run_v2.Service | run_v2.Revision) -> Operation:
        """A finished operation answering `resource` (validate_only requests)."""
        name = _op_name(parent)
        self._ops.start(name, resource)
        self._ops.succeed(name, resource, metadata=resource)
        return self._ops.get(name)

    def _log_uri(self, service_id: str) -> str:
        return (self._runtime.root / "logs" / f"{service_id}.log").resolve().as_uri()


def _op_name(parent: str) -> str:
    return f"{parent}/operations/{uuid.uuid4()}"


def _copy_policy(policy: policy_pb2.Policy) -> policy_pb2.Policy:
    copied = policy_pb2.Policy()
    copied.CopyFrom(policy)
    return copied

