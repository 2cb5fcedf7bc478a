"""Cloud Build v1, locally: ``google.devtools.cloudbuild.v1.CloudBuild`` over gRPC.

CreateBuild / GetBuild / ListBuilds / CancelBuild, plus ``google.longrunning.Operations`` for
the operation CreateBuild returns (metadata ``BuildOperationMetadata``). It runs builds shaped
like ``gcloud builds submit --pack`` (see `cloudbuild_steps`) with the local builder, on
worker threads:

- status QUEUED -> WORKING -> SUCCESS / FAILURE / TIMEOUT / CANCELLED, with create/start/finish
  times, step statuses and timings, ``results.images[].digest``; INTERNAL_ERROR ("Build or step
  failed due to an internal cause", cloudbuild.proto Build.Status) for a build whose worker went
  away: the local cloud stopped or was killed while it was queued or working (it is not
  CANCELLED, which is "canceled by a user"), and for builds the ``build_faults`` knob ends so;
- at most ``settings.max_concurrent_builds`` builds WORKING (read live); the others wait QUEUED,
  first come first served; a build stays WORKING at least ``settings.build_latency_s`` (its
  real work, push included, as a remote build of that length);
  ``settings.fail_builds_matching`` fails builds of matching images (FAILURE, the source's fault),
  ``settings.build_faults`` ends them INTERNAL_ERROR or TIMEOUT (Cloud Build's own);
- the build log goes to ``LOGS_BUCKET/log-ID.txt`` in the storage emulator as the build runs
  (every ``LOG_FLUSH_INTERVAL_S`` and at the end; ``logs_bucket`` defaults to
  ``gs://PROJECT_cloudbuild_logs``); ``log_url`` downloads it;
- builds are kept as JSON under ``STATE/builds`` (written when created, started and ended) and
  listed again after a restart.

ListBuilds filters: terms joined by ``AND``, each ``FIELD="VALUE"`` (or unquoted) with FIELD
one of ``status``, ``tags``, ``id``, ``images``, ``trigger_id`` / ``build_trigger_id``;
``tags`` and ``images`` match any element. Newest first, paged by ``page_size`` / ``page_token``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.cloud.devtools import cloudbuild_v1
from google.longrunning import operations_pb2

from cf2run.gcp.oci import ImageRef, RegistryClient
from cf2run.localcloud.cloudbuild.builder import BuildCancelled, BuildError, PushFailed, build_function
from cf2run.localcloud.cloudbuild.steps import (
    PACK_STEP,
    PackBuild,
    PackConfig,
    SourceUnavailable,
    StepNotSupported,
    StorageAccess,
    describe_step,
    download_url,
    parse_step,
    substitute,
    unpack_source,
)
from cf2run.localcloud.frontend.grpcapi import Method, RpcError, invalid, not_found, service_handler
from cf2run.localcloud.frontend.operations import Operations
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings

log = logging.getLogger(__name__)

Build = cloudbuild_v1.Build
Status = cloudbuild_v1.Build.Status
SERVICE = "google.devtools.cloudbuild.v1.CloudBuild"

DEFAULT_TIMEOUT = timedelta(minutes=10)
DEFAULT_LOCATION = "global"
DEFAULT_PAGE_SIZE = 100
TERMINAL = frozenset({Status.SUCCESS, Status.FAILURE, Status.INTERNAL_ERROR, Status.TIMEOUT,
                      Status.CANCELLED, Status.EXPIRED})
LOG_FLUSH_INTERVAL_S = 2.0
QUEUE_POLL_S = 0.25
#: Stands in for the pack step image's digest in ``results.build_step_images``.
PACK_STEP_DIGEST = "sha256:" + "0" * 64
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.:-]{1,100}$")
_FILTER_TERM = re.compile(r'^\s*([a-z_]+)\s*=\s*(?:"([^"]*)"|(\S+))\s*$')
_FILTER_FIELDS = ("status", "tags", "id", "images", "trigger_id", "build_trigger_id")


def _must_be_specified(request: str, path: str) -> str:
    """Cloud Build's words for a missing field ("INVALID_ARGUMENT: source.revision must be
    specified to run this trigger", GoogleCloudPlatform/gcc-creative-studio#181)."""
    return f"{path} must be specified"



class _Stopped(Exception):
    """The build was stopped from outside: cancelled, timed out or the service is stopping."""


class _Ended(Exception):
    """Cloud Build itself ends the build (the `build_faults` knob): `status`, `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


#: status_detail of a build whose worker went away with the local cloud.
WORKER_GONE = "the local cloud stopped while this build was queued or running"


@dataclass
class _Job:
    """A build and what runs it."""

    build: Any  # cloudbuild_v1.Build, mutated only under the service lock
    operation: str
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: int | None = None
    stop_detail: str = ""
    log_lines: list[str] = field(default_factory=list)
    log_flushed: float = 0.0
    thread: threading.Thread | None = None
    timer: threading.Timer | None = None
    storage: StorageAccess | None = None
    #: images a pack step built but the registry refused: pushed (and failing) in the PUSH phase
    unpushed: dict[str, PushFailed] = field(default_factory=dict)


class _PushError(Exception):
    """Pushing one of the build's `images` failed: the build ends FAILURE with PUSH_FAILED."""


class _StepFailed(Exception):
    """A build step exited non-zero: the build ends FAILURE with USER_BUILD_STEP; what the step
    printed is in the log, Cloud Build's own words only say which step failed."""

    def __init__(self, index: int, name: str) -> None:
        self.summary = f'build step {index} "{name}" failed: step exited with non-zero status: 1'
        super().__init__(self.summary)

    def failure(self) -> cloudbuild_v1.Build.FailureInfo:
        return cloudbuild_v1.Build.FailureInfo(
            type_=cloudbuild_v1.Build.FailureInfo.FailureType.USER_BUILD_STEP,
            detail=f"Build step failure: {self.summary}")


class CloudBuildService:
    """The local Cloud Build v1 API. `handlers()` for `grpcapi.serve`; `stop()` on shutdown."""

    def __init__(self, state_dir: Path, settings: LocalCloudSettings, faults: FaultInjector,
                 storage_url: str, registry: RegistryClient) -> None:
        self.settings = settings
        self.faults = faults
        self.storage_url = storage_url
        self.registry = registry
        self.builds_dir = state_dir / "builds"
        self.cache_dir = state_dir / "cache"
        self.builds_dir.mkdir(parents=True, exist_ok=True)
        self.operations = Operations()
        self._lock = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._queue: list[str] = []
        self._working = 0
        self._stopping = False
        self._storages: dict[str, StorageAccess] = {}
        self._log_buckets: set[str] = set()
        self._restore()

    # -- gRPC ----------------------------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        methods: dict[str, Method] = {
            "CreateBuild": (self.create_build, cloudbuild_v1.CreateBuildRequest,
                            operations_pb2.Operation),
            "GetBuild": (self.get_build, cloudbuild_v1.GetBuildRequest, Build),
            "ListBuilds": (self.list_builds, cloudbuild_v1.ListBuildsRequest,
                           cloudbuild_v1.ListBuildsResponse),
            "CancelBuild": (self.cancel_build, cloudbuild_v1.CancelBuildRequest, Build),
        }
        return [service_handler(SERVICE, methods, self.faults, _must_be_specified),
                self.operations.handler(self.faults)]

    def stop(self) -> None:
        """Cancel queued and running builds and wait for their threads."""
        with self._lock:
            self._stopping = True
            jobs = list(self._jobs.values())
            for job in jobs:
                if job.thread is not None and job.thread.is_alive():
                    self._request_stop(job, Status.INTERNAL_ERROR, WORKER_GONE)
            self._lock.notify_all()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout=30)

    # -- the API -------------------------------------------------------------------------------------

    def create_build(self, request: cloudbuild_v1.CreateBuildRequest) -> Any:
        project, location = _project_location(request.project_id, request.parent)
        if not request.build.steps:
            raise invalid("invalid build: build must contain at least one step")
        build = _copy(request.build)  # its OUTPUT_ONLY fields were cleared by grpcapi.accept
        build_id = str(uuid.uuid4())
        build.id = build_id
        build.project_id = project
        build.name = f"projects/{project}/locations/{location}/builds/{build_id}"
        build.status = Status.QUEUED
        build.create_time = _now()
        if "timeout" not in build or build.timeout.total_seconds() <= 0:
            build.timeout = DEFAULT_TIMEOUT
        _apply_substitutions(build, location)
        bucket, prefix = _logs_location(build.logs_bucket, project)
        build.logs_bucket = f"gs://{bucket}" + (f"/{prefix}" if prefix else "")
        build.log_url = download_url(self.storage_url, bucket, _log_object(prefix, build_id))
        for step in build.steps:
            step.status = Status.QUEUED
        operation = f"projects/{project}/locations/{location}/operations/{uuid.uuid4()}"
        job = _Job(build=build, operation=operation)
        with self._lock:
            if self._stopping:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, "the local Cloud Build is shutting down")
            self._jobs[build_id] = job
            self._queue.append(build_id)
            self._persist(job)
            op = self.operations.start(operation, self._metadata(job))
            job.thread = threading.Thread(target=self._run, args=(job,), name=f"build-{build_id[:8]}",
                                          daemon=True)
            job.thread.start()
        return op

    def get_build(self, request: cloudbuild_v1.GetBuildRequest) -> Any:
        job = self._find(request.project_id, request.id, request.name)
        with self._lock:
            return _copy(job.build)

    def list_builds(self, request: cloudbuild_v1.ListBuildsRequest) -> Any:
        project, _ = _project_location(request.project_id, request.parent)
        matches = _filter(request.filter)
        with self._lock:
            builds = [_copy(job.build) for job in self._jobs.values()
                      if job.build.project_id == project and matches(job.build)]
        builds.sort(key=lambda b: (b.create_time, b.id), reverse=True)
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            raise invalid(f"invalid page_token {request.page_token!r}") from None
        size = request.page_size if request.page_size > 0 else DEFAULT_PAGE_SIZE
        page = builds[offset:offset + size]
        more = offset + size < len(builds)
        return cloudbuild_v1.ListBuildsResponse(builds=page,
                                                next_page_token=str(offset + size) if more else "")

    def cancel_build(self, request: cloudbuild_v1.CancelBuildRequest) -> Any:
        job = self._find(request.project_id, request.id, request.name)
        with self._lock:
            if job.build.status not in TERMINAL:
                self._request_stop(job, Status.CANCELLED, "")
                self._lock.notify_all()
        if job.thread is not None:
            job.thread.join(timeout=10)
        with self._lock:
            return _copy(job.build)

    def _find(self, project_id: str, build_id: str, name: str) -> _Job:
        if name:
            match = re.fullmatch(r"projects/([^/]+)/(?:locations/[^/]+/)?builds/([^/]+)", name)
            if not match:
                raise invalid(f"invalid build name {name!r}: want projects/P/locations/L/builds/ID")
            project_id, build_id = match[1], match[2]
        if not project_id:
            raise invalid("project_id is required")
        if not build_id:
            raise invalid("id is required")
        with self._lock:
            job = self._jobs.get(build_id)
        if job is None or job.build.project_id != project_id:
            raise not_found(f'build "{build_id}" not found in project "{project_id}"')
        return job

    # -- running a build -------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        try:
            self._wait_for_slot(job)
            self._start(job)
            try:
                self._execute(job)
                self._finish(job, Status.SUCCESS, "")
            finally:
                with self._lock:
                    self._working -= 1
                    self._lock.notify_all()
        except _Stopped:
            self._finish(job, job.stop_reason or Status.CANCELLED, job.stop_detail)
        except _Ended as ended:
            self._finish(job, ended.status, ended.detail)
        except _PushError as error:
            self._finish(job, Status.FAILURE, str(error), cloudbuild_v1.Build.FailureInfo(
                type_=cloudbuild_v1.Build.FailureInfo.FailureType.PUSH_FAILED, detail=str(error)))
        except _StepFailed as failed:
            # Google leaves status_detail empty on a failed build and names the step in
            # failure_info (google/oss-rebuild#1604; FailureType USER_BUILD_STEP, cloudbuild.proto);
            # the log's last line is "ERROR: build step 0 "IMAGE" failed: step exited with non-zero
            # status: 1" (GoogleCloudPlatform/buildpacks#546).
            self._finish(job, Status.FAILURE, "", failed.failure(), closing=failed.summary)
        except (BuildError, StepNotSupported, SourceUnavailable) as error:
            message = error.message if isinstance(error, BuildError) else str(error)
            self._finish(job, Status.FAILURE, message)
        except Exception as error:  # a bug here must not leave the build WORKING forever
            log.exception("build %s failed unexpectedly", job.build.id)
            self._finish(job, Status.INTERNAL_ERROR, f"internal error in the local Cloud Build: {error!r}")

    def _wait_for_slot(self, job: _Job) -> None:
        """Stay QUEUED until first in line and under the concurrent-build quota (read live)."""
        build_id = job.build.id
        with self._lock:
            try:
                while self._queue[0] != build_id or self._working >= self.settings.max_concurrent_builds:
                    if job.cancel.is_set():
                        raise _Stopped()
                    self._lock.wait(QUEUE_POLL_S)
                if job.cancel.is_set():
                    raise _Stopped()
                self._working += 1
            finally:
                self._queue.remove(build_id)
                self._lock.notify_all()

    def _start(self, job: _Job) -> None:
        with self._lock:
            job.build.status = Status.WORKING
            job.build.start_time = _now()
            self._persist(job)
            self.operations.update(job.operation, self._metadata(job))
        job.log_flushed = time.monotonic()  # the first lines go out with the next flush
        timeout = job.build.timeout.total_seconds()
        job.timer = threading.Timer(timeout, self._time_out, args=(job, timeout))
        job.timer.daemon = True
        job.timer.start()
        self._ensure_logs_bucket(job)
        self._log(job, f'starting build "{job.build.id}"')

    def _time_out(self, job: _Job, timeout: float) -> None:
        with self._lock:
            if job.build.status not in TERMINAL:
                self._request_stop(job, Status.TIMEOUT, f"build timed out after {timeout:g}s")
                self._lock.notify_all()

    @staticmethod
    def _request_stop(job: _Job, reason: int, detail: str) -> None:
        if job.stop_reason is None:
            job.stop_reason, job.stop_detail = reason, detail
        job.cancel.set()

    def _execute(self, job: _Job) -> None:
        build = job.build
        storage = self._storage(job)
        working = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="cf2run-cloudbuild-") as tmp:
            workspace = Path(tmp) / "workspace"
            self._fetch_source(job, storage, workspace)
            self._log(job, "BUILD")
            builder: str | None = None
            built: dict[str, str] = {}
            for index, step in enumerate(build.steps):
                builder = self._run_step(job, index, step, workspace, builder, built)
            self._push(job, built)
        self._log(job, "DONE")
        self._simulated_latency(job, working)

    def _fetch_source(self, job: _Job, storage: StorageAccess, workspace: Path) -> None:
        source = job.build.source
        started = _now()
        self._log(job, "FETCHSOURCE")
        if "storage_source" in source:
            src = source.storage_source
            where = f"gs://{src.bucket}/{src.object_}" + (f"#{src.generation}" if src.generation else "")
            self._log(job, f"Fetching storage object: {where}")
            data = storage.fetch(src.bucket, src.object_, src.generation or None)
            unpack_source(data, workspace, where)
            self._log(job, f"Copying {where}... {len(data)} bytes")
        elif "repo_source" in source or "git_source" in source or "storage_source_manifest" in source:
            raise SourceUnavailable("only source.storage_source is supported by the local Cloud Build")
        else:
            workspace.mkdir(parents=True)
        with self._lock:
            job.build.timing["FETCHSOURCE"] = cloudbuild_v1.TimeSpan(start_time=started, end_time=_now())

    def _simulated_latency(self, job: _Job, working: float) -> None:
        """Wait (cancellably) until the build has been WORKING `build_latency_s` since `working`."""
        left = self.settings.build_latency_s - (time.monotonic() - working)
        if left > 0 and job.cancel.wait(left):
            raise _Stopped()

    def _run_step(self, job: _Job, index: int, step: Any, workspace: Path, builder: str | None,
                  built: dict[str, str]) -> str | None:
        self._set_step(job, index, Status.WORKING)
        self._log(job, f"Starting Step #{index}")
        prefix = f"Step #{index}: "
        try:
            action = parse_step(index, step.name, step.entrypoint, list(step.args))
            if isinstance(action, PackConfig):
                self._log(job, f"{prefix}Builder {action.builder} is now the default builder")
                builder = action.builder
            else:
                self._pack_build(job, prefix, action, action.builder or builder, workspace, built)
        except (_Stopped, BuildCancelled):
            self._set_step(job, index, job.stop_reason or Status.CANCELLED)
            raise _Stopped() from None
        except StepNotSupported:
            self._set_step(job, index, Status.FAILURE)
            self._log(job, f"Finished Step #{index}")
            raise
        except BuildError as error:
            # What pack printed (the buildpacks', pip's, npm's, the Functions Framework's words) is
            # the step's output, in the log; the build's own status only says the step failed.
            self._set_step(job, index, Status.FAILURE)
            for number, line in enumerate(error.message.splitlines()):
                self._log(job, prefix + ("ERROR: " if number == 0 else "") + line)
            self._log(job, f"Finished Step #{index}")
            raise _StepFailed(index, step.name) from None
        self._set_step(job, index, Status.SUCCESS)
        self._log(job, f"Finished Step #{index}")
        return builder

    def _pack_build(self, job: _Job, prefix: str, action: PackBuild, builder: str | None,
                    workspace: Path, built: dict[str, str]) -> None:
        if builder is None:  # what pack says when neither config nor --builder chose one
            raise BuildError("Please select a default builder with:\n\n"
                             "\tpack config default-builder <builder-image>",
                             hint="add the `pack config default-builder B` step, or --builder B")
        self._log(job, f"{prefix}Builder {builder}: the local builder stands in for it")
        if self.faults.build_should_fail(action.image):
            raise BuildError(f"the local cloud's fail_builds_matching knob "
                             f"({self.settings.fail_builds_matching!r}) matches image {action.image}")
        fault = self.faults.build_fault(action.image)
        if fault is not None:
            status = getattr(Status, fault.status)
            detail = (f"build timed out after {job.build.timeout.total_seconds():g}s"
                      if status == Status.TIMEOUT else "an internal error occurred in Cloud Build")
            raise _Ended(status, f"{detail} (the local cloud's build_faults knob, image {action.image})")
        source_dir = workspace
        if action.path:
            source_dir = (workspace / action.path).resolve()
            if not source_dir.is_relative_to(workspace.resolve()) or not source_dir.is_dir():
                raise BuildError(f"--path {action.path!r} is not a directory of the source")
        try:
            built[action.image] = build_function(
                source_dir, action.env, action.image, self.registry, self.cache_dir,
                lambda line: self._log(job, prefix + line), cancel=job.cancel)
        except PushFailed as error:
            # `pack build IMAGE` without --publish builds into the worker's Docker daemon and Cloud
            # Build pushes `images` after the steps (REFERENCE §1): the step succeeded, the push fails.
            self._log(job, f"{prefix}Successfully built image '{action.image}'")
            job.unpushed[action.image] = error
            built[action.image] = ""

    def _push(self, job: _Job, built: dict[str, str]) -> None:
        images = list(job.build.images)
        if images:
            self._log(job, "PUSH")
        results = cloudbuild_v1.Results(
            build_step_images=[PACK_STEP_DIGEST if s.name.startswith(PACK_STEP) else ""
                               for s in job.build.steps],
            build_step_outputs=[b"" for _ in job.build.steps])
        started = _now()
        for image in images:
            digest = built.get(image)
            if digest is None:
                raise BuildError(f"failed to push {image}: no build step built this image "
                                 f"(pack build steps built: {', '.join(built) or 'none'})")
            self._log(job, f"Pushing {image}")
            refused = job.unpushed.get(image)
            if refused is not None:
                # Cloud Build's log and detail for a refused push (google/oss-fuzz#2217).
                self._log(job, f"The push refers to repository [{ImageRef.parse(image).name}]")
                self._log(job, refused.denial)
                self._log(job, "ERROR: failed to push because we ran out of retries.")
                raise _PushError(f'error pushing image "{image}": exit status 1')
            self._log(job, f"{image}: digest: {digest}")
            results.images.append(cloudbuild_v1.BuiltImage(
                name=image, digest=digest,
                push_timing=cloudbuild_v1.TimeSpan(start_time=started, end_time=_now())))
        with self._lock:
            job.build.results = results
            if images:
                job.build.timing["PUSH"] = cloudbuild_v1.TimeSpan(start_time=started, end_time=_now())

    def _finish(self, job: _Job, status: int, detail: str,
                failure: cloudbuild_v1.Build.FailureInfo | None = None, closing: str = "") -> None:
        """End the build with `status`, `detail` (its status_detail) and `failure`; `closing` is
        the log's last line when it is not the detail."""
        if job.timer is not None:
            job.timer.cancel()
        if status in (Status.FAILURE, Status.INTERNAL_ERROR):
            self._log(job, "ERROR")
            self._log(job, f"ERROR: {closing or detail}")
        elif status == Status.TIMEOUT:
            self._log(job, "ERROR: context deadline exceeded: " + detail)
        elif status == Status.CANCELLED:
            self._log(job, "CANCELLED" + (f": {detail}" if detail else ""))
        with self._lock:
            build = job.build
            build.status = status
            build.status_detail = detail
            if failure is not None:
                build.failure_info = failure
            build.finish_time = _now()
            if "start_time" in build:
                build.timing["BUILD"] = cloudbuild_v1.TimeSpan(start_time=build.start_time,
                                                               end_time=build.finish_time)
            for step in build.steps:
                if step.status == Status.WORKING:
                    step.status = status
            self._persist(job)
        self._flush_log(job, force=True)
        metadata = self._metadata(job)
        if status == Status.SUCCESS:
            self.operations.succeed(job.operation, _copy(job.build), metadata)
        else:
            code, message = _operation_error(status, detail)
            self.operations.fail(job.operation, code, message, metadata)

    # -- steps and logs ------------------------------------------------------------------------------

    def _set_step(self, job: _Job, index: int, status: int) -> None:
        with self._lock:
            step = job.build.steps[index]
            step.status = status
            now = _now()
            if status == Status.WORKING:
                step.timing = cloudbuild_v1.TimeSpan(start_time=now)
            elif "timing" in step:
                step.timing = cloudbuild_v1.TimeSpan(start_time=step.timing.start_time, end_time=now)
            self.operations.update(job.operation, self._metadata(job))

    def _log(self, job: _Job, line: str) -> None:
        with self._lock:
            job.log_lines.append(line)
        if time.monotonic() - job.log_flushed >= LOG_FLUSH_INTERVAL_S:
            self._flush_log(job)

    def _flush_log(self, job: _Job, force: bool = False) -> None:
        """Write the log so far to the logs bucket (best effort: a failure is only logged here)."""
        if not force and time.monotonic() - job.log_flushed < LOG_FLUSH_INTERVAL_S:
            return
        job.log_flushed = time.monotonic()
        with self._lock:
            text = "\n".join(job.log_lines) + "\n"
            bucket, prefix = _logs_location(job.build.logs_bucket, job.build.project_id)
        name = _log_object(prefix, job.build.id)
        try:
            try:
                self._storage(job).upload_text(bucket, name, text)
            except gexc.NotFound:  # the logs bucket was deleted since this service made it
                with self._lock:
                    self._log_buckets.discard(bucket)
                self._ensure_logs_bucket(job)
                self._storage(job).upload_text(bucket, name, text)
        except Exception as error:
            log.warning("cannot write the log of build %s to gs://%s: %s", job.build.id, bucket, error)

    def _ensure_logs_bucket(self, job: _Job) -> None:
        """Create the logs bucket unless this service already did (or found it there)."""
        bucket, _ = _logs_location(job.build.logs_bucket, job.build.project_id)
        with self._lock:
            if bucket in self._log_buckets:
                return
        try:
            self._storage(job).ensure_bucket(bucket)
        except Exception as error:
            log.warning("cannot create the logs bucket gs://%s: %s", bucket, error)
            return
        with self._lock:
            self._log_buckets.add(bucket)

    def _storage(self, job: _Job) -> StorageAccess:
        """The project's storage client, shared by its builds (its connections are kept)."""
        if job.storage is None:
            with self._lock:
                project = job.build.project_id
                if project not in self._storages:
                    self._storages[project] = StorageAccess(self.storage_url, project)
                job.storage = self._storages[project]
        return job.storage

    def _metadata(self, job: _Job) -> Any:
        return cloudbuild_v1.BuildOperationMetadata(build=_copy(job.build))

    # -- persistence ---------------------------------------------------------------------------------

    def _persist(self, job: _Job) -> None:
        path = self.builds_dir / f"{job.build.id}.json"
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        build = Build.to_json(job.build, indent=None)  # the record's JSON, without a re-encode
        tmp.write_text(f'{{"operation": {json.dumps(job.operation)}, "build": {build}}}')
        os.replace(tmp, path)

    def _restore(self) -> None:
        """Builds of an earlier run; one that was not finished then ended with the run."""
        for path in sorted(self.builds_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                build = Build.from_json(json.dumps(record["build"]), ignore_unknown_fields=True)
            except (ValueError, KeyError) as error:
                log.warning("skipping unreadable build record %s: %s", path, error)
                continue
            job = _Job(build=build, operation=record["operation"])
            self._jobs[build.id] = job
            self.operations.start(job.operation, self._metadata(job))
            if build.status not in TERMINAL:
                build.status = Status.INTERNAL_ERROR
                build.status_detail = WORKER_GONE
                build.finish_time = _now()
                self._persist(job)
            if build.status == Status.SUCCESS:
                self.operations.succeed(job.operation, _copy(build), self._metadata(job))
            else:
                code, message = _operation_error(build.status, build.status_detail)
                self.operations.fail(job.operation, code, message, self._metadata(job))


# -- helpers ------------------------------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(UTC)


def _copy(build: Any) -> Any:
    return Build.deserialize(Build.serialize(build))


def _project_location(project_id: str, parent: str) -> tuple[str, str]:
    """The project and location of a request, from `project_id` and/or ``projects/P/locations/L``."""
    location = DEFAULT_LOCATION
    if parent:
        match = re.fullmatch(r"projects/([^/]+)(?:/locations/([^/]+))?", parent)
        if not match:
            raise invalid(f"invalid parent {parent!r}: want projects/PROJECT/locations/LOCATION")
        if project_id and project_id != match[1]:
            raise invalid(f"project_id {project_id!r} does not match parent {parent!r}")
        project_id, location = match[1], match[2] or DEFAULT_LOCATION
    if not project_id:
        raise invalid("project_id is required (or a parent projects/PROJECT/locations/LOCATION)")
    if not _PROJECT_RE.match(project_id):
        raise invalid(f"invalid project_id {project_id!r}")
    return project_id, location


def _apply_substitutions(build: Any, location: str) -> None:
    """Cloud Build substitutions in step names, args, env, dir and images (INVALID_ARGUMENT if bad)."""
    values = {"PROJECT_ID": build.project_id, "BUILD_ID": build.id, "LOCATION": location,
              **dict(build.substitutions)}
    for key in build.substitutions:
        if not key.startswith("_"):
            raise invalid(f'invalid substitution key "{key}": user-defined substitutions start with "_"')
    loose = build.options.substitution_option == cloudbuild_v1.BuildOptions.SubstitutionOption.ALLOW_LOOSE
    try:
        for index, step in enumerate(build.steps):
            where = describe_step(index, step.name, list(step.args))
            step.name = substitute(step.name, values, loose=loose)
            step.args = [substitute(arg, values, loose=loose) for arg in step.args]
            step.env = [substitute(env, values, loose=loose) for env in step.env]
            step.dir_ = substitute(step.dir_, values, loose=loose)
        where = "images"
        build.images = [substitute(image, values, loose=loose) for image in build.images]
    except ValueError as error:
        raise invalid(f"invalid build: {where}: {error}") from None


def _logs_location(logs_bucket: str, project: str) -> tuple[str, str]:
    """(bucket, object prefix) of a build's logs; the default bucket is PROJECT_cloudbuild_logs."""
    if logs_bucket:
        rest = logs_bucket.removeprefix("gs://").strip("/")
        bucket, _, prefix = rest.partition("/")
        return bucket, prefix
    return re.sub(r"[:.]", "_", project) + "_cloudbuild_logs", ""


def _log_object(prefix: str, build_id: str) -> str:
    return (f"{prefix}/" if prefix else "") + f"log-{build_id}.txt"


def _operation_error(status: int, detail: str) -> tuple[grpc.StatusCode, str]:
    """The operation error Cloud Build gives for a build that did not succeed."""
    if status == Status.TIMEOUT:
        return grpc.StatusCode.DEADLINE_EXCEEDED, f"Build timeout: {detail}" if detail else "Build timeout"
    if status == Status.CANCELLED:
        return grpc.StatusCode.CANCELLED, "Build was cancelled" + (f": {detail}" if detail else "")
    return (grpc.StatusCode.UNKNOWN,
            "Build failed; check build logs for details" + (f": {detail}" if detail else ""))


def _filter(expression: str) -> Callable[[Any], bool]:
    """A predicate for a ListBuilds filter (see the module doc for what is supported)."""
    terms: list[tuple[str, str]] = []
    for raw in re.split(r"\s+AND\s+", expression.strip()) if expression.strip() else []:
        match = _FILTER_TERM.match(raw)
        if not match or match[1] not in _FILTER_FIELDS:
            raise invalid(f"unsupported filter term {raw!r}: the local Cloud Build supports "
                          f'FIELD="VALUE" terms joined by AND, FIELD one of {", ".join(_FILTER_FIELDS)}')
        terms.append((match[1], match[2] if match[2] is not None else match[3]))

    def matches(build: Any) -> bool:
        for name, value in terms:
            if name == "status" and Status(build.status).name != value.upper():
                return False
            if name == "tags" and value not in build.tags:
                return False
            if name == "images" and value not in build.images:
                return False
            if name == "id" and build.id != value:
                return False
            if name in ("trigger_id", "build_trigger_id") and build.build_trigger_id != value:
                return False
        return True

    return matches
