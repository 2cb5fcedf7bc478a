"""The old functions, running: each seeded 1st-gen function built, started and routed as gen1 does.

A function is built with the local buildpack (`builder.build_function`) as gen1 builds it with
Google's buildpacks: ``GOOGLE_FUNCTION_TARGET`` = entryPoint (default: the function id),
``GOOGLE_FUNCTION_SIGNATURE_TYPE`` = ``http`` for an HTTPS trigger and ``event`` for an event
trigger (gen1 event functions are background functions, ``(data, context)``), ``GOOGLE_RUNTIME``
= runtime, plus its buildEnvironmentVariables; into its project's Artifact Registry repository
``gcf-artifacts`` in its region, which gen1 creates on first deploy (functions.proto,
CloudFunction.docker_repository). Then its instance runs in the local runtime with its
environmentVariables, and an HTTP function answers at ``{functions}/ID`` (cloudfunctions/gen1_frontend.py). An
idle instance stops and the next request or call starts one (`scaling.Instances`, as gen1 scales
to zero), unless the function's minInstances keeps it warm; after a restart only those start at
once.

A function whose source cannot be had, unpacked safely (an entry with ``..``) or built stays
listed by the API but is not served (logged, and in ``STATE/cloudfunctions/gen1/.../ID.build.log``).
What was built is remembered per function (``ID.json``: seed digest and image), so an unchanged
seed is not built again, and a restart only starts the instances.

`call` delivers CallFunction: to an event function a legacy event, ``{"data": DATA, "context":
{eventId, timestamp, eventType, resource}}`` (the background function format of the Functions
Framework, https://github.com/GoogleCloudPlatform/functions-framework-python, "legacy GCF event");
to an HTTP function a POST of the data.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cf2run.gcp.oci import ImageRef, RegistryClient
from cf2run.localcloud.cloudbuild.builder import BuildError, build_function
from cf2run.localcloud.cloudbuild.steps import SourceUnavailable, unpack_source
from cf2run.localcloud.cloudfunctions.gen1_frontend import (
    INTERNAL_INGRESS,
    FunctionRoute,
    FunctionsFrontEnd,
    execution_id,
)
from cf2run.localcloud.cloudfunctions.shapes import GEN1_REPOSITORY, gen1_image
from cf2run.localcloud.cloudfunctions.store import Record
from cf2run.localcloud.cloudrun.runtime import RevisionFailed, RevisionSpec
from cf2run.localcloud.cloudrun.scaling import Instances, NoInstance
from cf2run.localcloud.registry.repositories import DockerRepositories

log = logging.getLogger(__name__)
INVOKER = "roles/cloudfunctions.invoker"


class NotServing(Exception):
    """The function has no running instance; the message says why."""


class Gen1Functions:
    """Builds, runs and routes 1st-gen functions. `source_of(record)` fetches a function's zip
    (None: it has none); `front` serves the HTTP ones. Thread-safe."""

    def __init__(self, state_dir: Path, front: FunctionsFrontEnd, instances: Instances,
                 registry: RegistryClient, repositories: DockerRepositories, cache_dir: Path,
                 source_of: Callable[[Record], bytes | None]) -> None:
        self.root = Path(state_dir)
        self.front = front
        self.instances = instances
        self.registry = registry
        self.repositories = repositories
        self.cache_dir = cache_dir
        self.source_of = source_of
        self._revisions: dict[str, str] = {}  # function name -> its running revision
        self._problems: dict[str, str] = {}  # function name -> why it does not serve
        self._lock = threading.Lock()

    def serve(self, records: list[Record], *, start: bool = True) -> None:
        """Build (unless built already) and route each function, a few at once; problems are
        logged. `start`: start each one now (a deploy), else only those minInstances keeps warm
        (a restart: the others start on their first request)."""
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="gen1") as pool:
            list(pool.map(lambda record: self._serve_one(record, start), records))

    def problem(self, name: str) -> str | None:
        """Why a function does not serve (None when it does, or was never asked to)."""
        return self._problems.get(name)

    def call(self, record: Record, data: str, timeout_s: float = 60.0) -> tuple[str, str, str]:
        """(execution id, result, error) of one CallFunction; NotServing when it has no instance."""
        revision = self._revisions.get(record.name)
        if revision is None:
            raise NotServing(self._problems.get(record.name, "it has no running instance"))
        execution = execution_id()
        trigger = record.function.get("eventTrigger")
        body = data.encode() if trigger is None else json.dumps(legacy_event(trigger, data)).encode()
        try:
            with self.instances.serving(revision) as address:
                response = httpx.post(f"http://{address}/", content=body, timeout=timeout_s,
                                      headers={"Content-Type": "application/json",
                                               "Function-Execution-Id": execution})
        except NoInstance as error:
            raise NotServing(error.reason) from None
        except httpx.HTTPError as error:
            return execution, "", f"function execution failed: {error}"
        if response.is_success:
            return execution, response.text if trigger is None else "", ""
        failed = f"function execution failed: HTTP {response.status_code}"
        return execution, "", response.text.strip() or failed

    # -- serving ---------------------------------------------------------------------------------

    def _serve_one(self, record: Record, start: bool) -> None:
        revision = f"{record.function_id}-version-{record.version}"
        warm = int(str(record.function.get("minInstances") or 0)) > 0
        try:
            image = self._image(record)
            env = {str(k): str(v) for k, v in dict(record.function.get("environmentVariables") or {}).items()}
            spec = RevisionSpec(service=record.function_id, revision=revision, image=image,
                                env=env, configuration=record.function_id)
            if start or warm:
                self.instances.start(revision, lambda: spec)
            self.instances.register(revision, record.function_id, lambda: spec, warm=warm)
        except (BuildError, SourceUnavailable, RevisionFailed) as error:
            log.warning("1st-gen function %s is listed but not served: %s", record.name, error)
            with self._lock:
                self._problems[record.name] = str(error)
            return
        with self._lock:
            previous = self._revisions.get(record.name)
            self._revisions[record.name] = revision
            self._problems.pop(record.name, None)
        if "httpsTrigger" in record.function:
            self.front.route(record.function_id, FunctionRoute(
                revision=revision, url=record.function["httpsTrigger"]["url"],
                public=is_public(record.policy),
                internal=record.function.get("ingressSettings") in INTERNAL_INGRESS,
                timeout_s=float(record.function.get("timeout", "60s").rstrip("s"))))
        if previous is not None and previous != revision:
            self.instances.forget(previous)
        log.info("1st-gen function %s serves as %s", record.name, revision)

    def _image(self, record: Record) -> str:
        """The function's built image (``...@sha256:...``): the one built from this seed, else a new build."""
        built_file = self._state_file(record, ".json")
        try:
            built = json.loads(built_file.read_text())
            if built["digest"] == record.digest:
                return str(built["image"])
        except (OSError, ValueError, KeyError):
            pass
        image = self._build(record)
        built_file.write_text(json.dumps({"digest": record.digest, "image": image}))
        return image

    def _build(self, record: Record) -> str:
        source = self.source_of(record)
        if source is None:
            raise SourceUnavailable("its source is not an archive in Cloud Storage (a Cloud Source "
                                    "Repositories source cannot be fetched locally)")
        if source[:2] != b"PK":
            raise SourceUnavailable("its source archive is not a zip file")
        self.repositories.ensure(record.project, record.region, GEN1_REPOSITORY)
        tag = gen1_image(record.project, record.region, record.function_id, record.version)
        log_path = self._state_file(record, ".build.log")
        with tempfile.TemporaryDirectory(prefix="cf2run-gen1-") as tmp, log_path.open("w") as out:
            unpack_source(source, Path(tmp), f"of function {record.name}")
            digest = build_function(Path(tmp), build_env(record.function, record.function_id), tag,
                                    self.registry, self.cache_dir, lambda line: print(line, file=out))
        ref = ImageRef.parse(tag)
        return f"{ref.host}/{ref.repository}@{digest}"

    def _state_file(self, record: Record, suffix: str) -> Path:
        path = self.root / record.project / record.region / f"{record.function_id}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def build_env(function: dict[str, object], function_id: str) -> dict[str, str]:
    """The buildpack env gen1 builds a function with."""
    build_vars = function.get("buildEnvironmentVariables") or {}
    assert isinstance(build_vars, dict)
    return {**{str(k): str(v) for k, v in build_vars.items()},
            "GOOGLE_FUNCTION_TARGET": str(function.get("entryPoint") or function_id),
            "GOOGLE_FUNCTION_SIGNATURE_TYPE": "event" if "eventTrigger" in function else "http",
            "GOOGLE_RUNTIME": str(function.get("runtime", ""))}


def is_public(policy: dict[str, object]) -> bool:
    """Whether ``allUsers`` may invoke (roles/cloudfunctions.invoker)."""
    bindings = policy.get("bindings") or []
    assert isinstance(bindings, list)
    return any(b.get("role") == INVOKER and "allUsers" in b.get("members", []) for b in bindings)


#: What gen1 gives a background function as `context.resource` for Pub/Sub and Storage events: an
#: object naming the service and the message type, not the bare resource name (the "GCF HTTP"
#: representation in GoogleCloudPlatform/functions-framework-conformance docs/mapping.md, which
#: functions-framework-python's event_conversion.py rebuilds as `_PUBSUB_MESSAGE_TYPE` and
#: `storage#object`). Other event types carry the name as a string.
RESOURCE_SHAPES = {
    "pubsub": ("pubsub.googleapis.com", "type.googleapis.com/google.pubsub.v1.PubsubMessage"),
    "storage": ("storage.googleapis.com", "storage#object"),
}


def legacy_event(trigger: dict[str, str], data: str) -> dict[str, object]:
    """A background function's event of CallFunction's `data` (JSON if it parses, else the text)."""
    try:
        payload: object = json.loads(data)
    except ValueError:
        payload = data
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event_type, name = trigger.get("eventType", ""), trigger.get("resource", "")
    kind = next((kind for kind in RESOURCE_SHAPES if f".{kind}." in event_type
                 or f"cloud.{kind}/" in event_type), None)
    resource: object = name
    if kind is not None:
        service, message_type = RESOURCE_SHAPES[kind]
        resource = {"service": service, "name": name, "type": message_type}
    return {"data": payload, "context": {"eventId": str(secrets.randbelow(10**16)), "timestamp": now,
                                         "eventType": event_type, "resource": resource}}
