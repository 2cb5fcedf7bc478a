"""The slow half of the local Cloud Run: what happens after a write is accepted.

A `Deployer` runs each service's jobs (deploy, delete) one at a time, in order, on that
service's own worker thread: it starts revisions through `Instances` (never holding the
state lock while a process starts), opens the service and tag URLs on the `Router` (on the
ports they had before, so URLs outlive revisions and restarts), routes traffic, finishes the
long-running operation, and then stops what no longer carries traffic. The revisions that carry
traffic or a tag are registered with `Instances`, which scales them to zero when idle and starts
them again on a request, unless min instances keep them warm. `restore()` brings services back
after a restart: their URLs, and the processes of the warm revisions only (the others start on
their first request).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from cf2run.localcloud.cloudrun import status
from cf2run.localcloud.cloudrun.router import Router
from cf2run.localcloud.cloudrun.rules import Target
from cf2run.localcloud.cloudrun.runtime import RevisionFailed, RevisionSpec
from cf2run.localcloud.cloudrun.scaling import Instances
from cf2run.localcloud.cloudrun.state import Store, tag_key
from cf2run.localcloud.frontend.operations import Operations
from cf2run.localcloud.secretmanager.store import SecretStore, SecretUnavailable
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings

log = logging.getLogger(__name__)

INVOKER = "roles/run.invoker"


class Deployer:
    """Runs the jobs that accepted writes leave behind. Thread-safe."""

    def __init__(self, store: Store, ops: Operations, settings: LocalCloudSettings,
                 faults: FaultInjector, instances: Instances, router: Router, secrets: SecretStore) -> None:
        self._store = store
        self._secrets = secrets
        self._ops = ops
        self._settings = settings
        self._faults = faults
        self._instances = instances
        self._router = router
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._workers_lock = threading.Lock()
        self._route_lock = threading.Lock()

    # -- jobs ----------------------------------------------------------------------------------

    def submit(self, service: str, op_name: str, job: Callable[[], None]) -> None:
        """Queue `job` on `service`'s worker; an unexpected error fails operation `op_name`."""
        def run() -> None:
            if self._store.closed:
                return
            try:
                job()
            except Exception as exc:
                log.exception("local Cloud Run job for %s failed", service)
                self._ops.fail(op_name, grpc.StatusCode.INTERNAL,
                               f"the local Cloud Run failed while working on {service}: {exc!r}")

        with self._workers_lock:
            worker = self._workers.get(service)
            if worker is None:
                worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudrun-deploy")
                self._workers[service] = worker
        worker.submit(run)

    def stop(self) -> None:
        """Drop queued jobs; running ones finish without saving (the store is closed)."""
        self._store.close()
        with self._workers_lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.shutdown(wait=False, cancel_futures=True)

    def deploy(self, op_name: str, name: str, generation: int, revision: str,
               targets: Sequence[Target]) -> None:
        """Make generation `generation` of service `name` serve: run `revision` (the one the
        write deploys, new or reused: LATEST from now on) and what the traffic `targets` name,
        then route them. On failure the traffic stays where it was."""
        time.sleep(self._settings.deploy_latency_s)
        if self._open_urls(name, []) is None:
            self._deleted_meanwhile(op_name, name)
            return
        resolved = [Target(t.revision or revision, t.percent, t.tag) for t in targets]
        needed = [revision, *sorted({t.revision for t in resolved if t.revision} - {revision})]
        reason = next((why for rev in needed if (why := self._start(name, rev))), None)
        if reason is not None:
            self._update(name, lambda s: status.failed(s, reason=reason, generation=generation),
                         op_name, failure=reason)
            return
        urls = self._open_urls(name, [t.tag for t in targets if t.tag])
        done = None if urls is None else self._update(name, lambda s: status.serving(
            s, uri=urls[0], latest=revision, targets=targets, tag_urls=urls[1],
            generation=generation))
        if done is None:
            self._deleted_meanwhile(op_name, name)
            return
        self.apply_routes(name)  # traffic leaves the old revisions before any of them stops
        self._ops.succeed(op_name, done, metadata=done)
        # As on Cloud Run, revisions without traffic go away after the deploy is done; the
        # service's next job waits on this worker until they have.
        self._stop_unused(name)

    def _deleted_meanwhile(self, op_name: str, name: str) -> None:
        self._ops.fail(op_name, grpc.StatusCode.ABORTED,
                       f"service {name} was deleted while it was being deployed")

    def delete(self, op_name: str, service: run_v2.Service, revisions: Sequence[str],
               url_keys: Sequence[str]) -> None:
        """Stop a deleted service's revisions and close its URLs."""
        time.sleep(self._settings.deploy_latency_s)
        for key in url_keys:
            self._router.close(key)
        self._instances.forget(*revisions)
        deleted = run_v2.Service(service)
        deleted.delete_time = status.now()
        self._ops.succeed(op_name, deleted, metadata=deleted)

    def restore(self) -> None:
        """After a restart: reopen each serving service's URLs on their ports and route them (all
        services at once); the revisions min instances keep warm start now, the others on their
        first request. A deploy the stop interrupted is marked failed (its operation is gone)."""
        interrupted = ("The local cloud stopped while this revision was being deployed; deploy "
                       "again.")
        with self._store.lock:
            state = self._store.state
            for name, service in state.services.items():
                if service.reconciling:
                    state.services[name] = status.failed(service, reason=interrupted,
                                                         generation=service.generation)
            for full, revision in state.revisions.items():
                if revision.reconciling:
                    state.revisions[full] = status.revision_failed(revision, interrupted)
            self._store.save()
            names = [s.name for s in state.services.values() if s.traffic_statuses]
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="cloudrun-restore") as pool:
            list(pool.map(self._restore_one, names))

    def _restore_one(self, name: str) -> None:
        with self._store.lock:
            service = run_v2.Service(self._store.state.services[name])
        targets = status.resolved_targets(service)
        urls = self._open_urls(name, [t.tag for t in targets if t.tag])
        if urls is None:
            return
        uri, tag_urls = urls
        if uri != service.uri:  # the old port was taken: the URL had to change
            log.warning("service %s moved from %s to %s", name, service.uri, uri)
            self._update(name, lambda s: _with_urls(s, uri, tag_urls))
        warm = self.apply_routes(name)
        for revision in warm:
            reason = self._start(name, revision)
            if reason:
                log.warning("revision %s of %s did not come back: %s", revision, name, reason)

    # -- routes --------------------------------------------------------------------------------

    def apply_routes(self, name: str) -> list[str]:
        """Point service `name`'s URLs at the revisions its traffic statuses name, with its
        current access policy and ingress; close the URLs of tags it no longer has. Those
        revisions may serve (`Instances.register`); returns those min instances keep warm."""
        with self._route_lock:
            with self._store.lock:
                state = self._store.state
                service = state.services.get(name)
                if service is None or not service.traffic_statuses:
                    return []
                targets = status.resolved_targets(service)
                warm = warm_revisions(service, targets, state.templates)
                public = is_public(service, state.policies.get(name))
                audiences = [service.uri, *(t.uri for t in service.traffic_statuses if t.uri),
                             *service.custom_audiences]
                timeout_s = service.template.timeout.total_seconds() or 300.0
                ingress = run_v2.IngressTraffic(service.ingress).name
                live = {tag_key(name, t.tag) for t in targets if t.tag}
                stale = [key for key in state.ports if key.startswith(f"{name}#") and key not in live]
                for key in stale:
                    del state.ports[key]
                self._store.save()
            service_id = status.short_name(name)
            for revision in sorted({t.revision for t in targets if t.revision}):
                self._instances.register(revision, service_id, self._spec_of(name, revision),
                                         warm=revision in warm)
            backends = [(t.revision, t.percent) for t in targets if t.revision and t.percent]
            # Ingress is the service's, not a revision's: every URL of the service follows it,
            # from the moment the update that changed it is done (securing/ingress: "Ingress is
            # set at the service level").
            self._router.route(name, backends, public=public, audiences=audiences,
                               timeout_s=timeout_s, ingress=ingress)
            for target in targets:
                if target.tag and target.revision:
                    self._router.route(tag_key(name, target.tag), [(target.revision, 100)],
                                       public=public, audiences=audiences, timeout_s=timeout_s,
                                       ingress=ingress)
            for key in stale:
                self._router.close(key)
        return sorted(warm)

    def _open_urls(self, name: str, tags: Sequence[str]) -> tuple[str, dict[str, str]] | None:
        """Open the service URL and its tags' URLs (on their old ports) and record the ports:
        (service URL, {tag: URL}), or None (and nothing left open) if the service is gone."""
        keys = [name, *(tag_key(name, tag) for tag in tags)]
        with self._store.lock:
            ports = {key: self._store.state.ports.get(key, 0) for key in keys}
        urls = {key: self._router.open(key, port) for key, port in ports.items()}
        with self._store.lock:
            service = self._store.state.services.get(name)
            if service is not None:
                self._store.state.ports.update(
                    {key: int(url.rsplit(":", 1)[1]) for key, url in urls.items()})
                service = run_v2.Service(service)  # a changed copy: what marks it changed (state.py)
                service.uri = urls[name]
                service.urls = [urls[name]]
                self._store.state.services[name] = service
                self._store.save()
        if service is None:  # deleted meanwhile: its delete job may not know these URLs
            for key in keys:
                self._router.close(key)
            return None
        return urls[name], {tag: urls[tag_key(name, tag)] for tag in tags}

    def _stop_unused(self, name: str) -> None:
        """Stop the revisions of `name` that carry no traffic and no tag."""
        with self._store.lock:
            service = self._store.state.services.get(name)
            used = {t.revision for t in status.resolved_targets(service)} if service else set()
            unused = [status.short_name(r.name) for r in self._store.state.revisions_of(name)
                      if status.short_name(r.name) not in used]
        self._instances.forget(*unused)

    # -- revisions and the stored service ------------------------------------------------------

    def _start(self, name: str, revision: str) -> str | None:
        """Run `revision` of service `name` (if not running yet); the reason it failed, or None.
        A failure fails the revision's Ready condition (a deploy's start, not a cold start)."""
        full = f"{name}/revisions/{revision}"
        with self._store.lock:
            record = self._store.state.revisions.get(full)
            template = self._store.state.templates.get(full)
        if record is None or template is None:
            return _gone(revision)
        never_ready = self._faults.never_ready(status.short_name(name)) and not status.is_ready(record)
        try:
            self._instances.start(revision, self._spec_of(name, revision), never_ready=never_ready)
        except RevisionFailed as exc:
            reason = exc.reason
            self._update_revision(full, lambda r: status.revision_failed(r, reason))
            return reason
        if not status.is_ready(record):
            self._update_revision(full, status.revision_ready)
        return None

    def _spec_of(self, name: str, revision: str) -> Callable[[], RevisionSpec]:
        """How to start `revision` of service `name`: its spec as of the start (secrets are
        read then, as an instance reads them when it starts). Raises `RevisionFailed`."""
        def spec() -> RevisionSpec:
            with self._store.lock:
                template = self._store.state.templates.get(f"{name}/revisions/{revision}")
            if template is None:
                raise RevisionFailed(revision, _gone(revision))
            service_id = status.short_name(name)
            return RevisionSpec(service=service_id, revision=revision, image=template.containers[0].image,
                                configuration=service_id, env=self._env(name, revision, template))

        return spec

    def _env(self, name: str, revision: str, template: run_v2.RevisionTemplate) -> dict[str, str]:
        """The container's env with secret references resolved from the local Secret Manager
        stand-in; the secrets of secret volumes must exist too (they are not mounted: see
        secretmanager/store.py). A missing or disabled one fails the revision, as on Cloud Run."""
        project = name.split("/")[1]
        env: dict[str, str] = {}
        for index, var in enumerate(template.containers[0].env):
            if "value_source" not in var:
                env[var.name] = var.value
                continue
            ref = var.value_source.secret_key_ref
            where = f"spec.template.spec.containers[0].env[{index}].value_from.secret_key_ref.name"
            data = self._secret(project, ref.secret, ref.version or "latest", revision, where)
            env[var.name] = data.decode("utf-8", errors="surrogateescape")
        for volume in template.volumes:
            if "secret" in volume:
                for version in [item.version or "latest" for item in volume.secret.items] or ["latest"]:
                    self._secret(project, volume.secret.secret, version, revision,
                                 f"spec.template.spec.volumes[{volume.name}].secret")
        return env

    def _secret(self, project: str, secret: str, version: str, revision: str, where: str) -> bytes:
        if secret.startswith("projects/"):
            _, project, _, secret = secret.split("/", 3)
        try:
            return self._secrets.access(project, secret, version)
        except SecretUnavailable as exc:
            raise RevisionFailed(revision, f"Revision '{revision}' is not ready and cannot serve "
                                           f"traffic. {where}: {exc}.") from exc

    def _update_revision(self, full: str, change: Callable[[run_v2.Revision], run_v2.Revision]) -> None:
        with self._store.lock:
            record = self._store.state.revisions.get(full)
            if record is not None:
                self._store.state.revisions[full] = change(record)
                self._store.save()

    def _update(self, name: str, change: Callable[[run_v2.Service], run_v2.Service],
                op_name: str | None = None, failure: str | None = None) -> run_v2.Service | None:
        """Apply `change` to the stored service; with `failure`, fail operation `op_name` with it."""
        with self._store.lock:
            current = self._store.state.services.get(name)
            changed = change(current) if current is not None else None
            if changed is not None:
                self._store.state.services[name] = changed
                self._store.save()
            copy = run_v2.Service(changed) if changed is not None else None
        if op_name is not None and failure is not None:
            self._ops.fail(op_name, grpc.StatusCode.FAILED_PRECONDITION, failure, metadata=copy)
        return copy


def _gone(revision: str) -> str:
    return (f"Revision '{revision}' does not exist or is deleted. Update all traffic to route to "
            "currently available revisions.")


def warm_revisions(service: run_v2.Service, targets: Sequence[Target],
                   templates: Mapping[str, run_v2.RevisionTemplate]) -> set[str]:
    """The revisions min instances keep running (one process each here). A revision's own
    ``scaling.min_instance_count`` starts its instances "whenever the revision is referenced in
    the traffic split (even at 0%) or has a traffic tag"; the service's is shared among the
    revisions that get traffic, in proportion to it, and a tagged revision without traffic does
    not count (https://cloud.google.com/run/docs/configuring/min-instances, "Revisions and
    minimum instances")."""
    warm = {t.revision for t in targets if t.revision and t.percent > 0
            and service.scaling.min_instance_count > 0}
    for target in targets:
        template = templates.get(f"{service.name}/revisions/{target.revision}") if target.revision else None
        if template is not None and template.scaling.min_instance_count > 0:
            warm.add(target.revision or "")
    return warm


def is_public(service: run_v2.Service, policy: policy_pb2.Policy | None) -> bool:
    """Whether anyone may invoke `service`: ``allUsers`` has ``roles/run.invoker`` in its IAM
    policy, or the invoker check is disabled."""
    if service.invoker_iam_disabled:
        return True
    bindings = policy.bindings if policy is not None else []
    return any(b.role == INVOKER and "allUsers" in b.members for b in bindings)


def _with_urls(service: run_v2.Service, uri: str, tag_urls: dict[str, str]) -> run_v2.Service:
    moved = run_v2.Service(service)
    moved.uri = uri
    moved.urls = [uri]
    for target in moved.traffic_statuses:
        if target.tag in tag_urls:
            target.uri = tag_urls[target.tag]
    return moved
