"""submit_pack_build: the function's source -> an image in Artifact Registry, via Cloud Build pack.

The Build is exactly what `gcloud builds submit --pack image=IMAGE,env=K=V` creates
(REFERENCE §1), with the builder pinned, the function's build env as pack `--env`, `$`
escaped, an explicit timeout, and tags naming the tool and the function.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import operator
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2
from prefect import get_run_logger, task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext

from cf2run.errors import BuildFailed
from cf2run.fleet.quotas import build_slot
from cf2run.gcp.build_log import explain as explain_log
from cf2run.gcp.build_log import read_tail
from cf2run.gcp.build_outcome import build_error
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import ImageRef
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import BuiltImage, SourceArchive
from tasks.policy import RETRIES

# ==============================================================================================
# The build request and the image tag (pure: no clients, no I/O)
# ==============================================================================================

#: The step image and entrypoint gcloud uses for --pack builds (REFERENCE §1).
PACK_STEP_IMAGE = "gcr.io/k8s-skaffold/pack"
PACK_ENTRYPOINT = "pack"
#: Bump when the build request changes in a way that changes images, to stop reusing old tags.
TAG_SCHEME = 1
TOOL_TAG = "cf2run"


def pack_env(spec: FunctionSpec) -> list[tuple[str, str]]:
    """The buildpacks' build env, in a stable order: the function's own settings, then build_env."""
    derived = [
        ("GOOGLE_FUNCTION_TARGET", spec.entry_point),
        ("GOOGLE_FUNCTION_SIGNATURE_TYPE", spec.signature_type),
        ("GOOGLE_RUNTIME", spec.language),
        ("GOOGLE_RUNTIME_VERSION", spec.runtime_version),
    ]
    return derived + sorted(spec.build_env.items())


def image_tag(spec: FunctionSpec, target: Target, archive_sha256: str) -> str:
    """A tag that names the build's inputs: source sha256 + every setting the build sees.

    Same source and settings -> same tag (so an existing tag means "already built");
    any change to the source, runtime, entry point, signature type, build env or builder
    -> a new tag.
    """
    inputs = {"scheme": TAG_SCHEME, "source": archive_sha256, "builder": target.builder,
              "env": pack_env(spec)}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode())
    return f"{TOOL_TAG}-{digest.hexdigest()[:32]}"


def image_for(spec: FunctionSpec, target: Target, archive_sha256: str) -> str:
    """``REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG`` for this source and these settings."""
    return f"{target.image_repository(spec.name)}:{image_tag(spec, target, archive_sha256)}"


def build_tags(spec: FunctionSpec) -> list[str]:
    """Cloud Build tags (``^[\\w][\\w.-]{0,127}$``) naming the tool and the function."""
    return [TOOL_TAG, f"fn-{spec.name}"]


def escape_substitutions(arg: str) -> str:
    """Cloud Build reads ``$NAME`` in step args as a substitution; ``$$`` is a literal ``$``."""
    return arg.replace("$", "$$")


def _pack_step(*args: str) -> cloudbuild_v1.BuildStep:
    return cloudbuild_v1.BuildStep(name=PACK_STEP_IMAGE, entrypoint=PACK_ENTRYPOINT,
                                   args=[escape_substitutions(arg) for arg in args])


def pack_build_request(spec: FunctionSpec, target: Target, archive: SourceArchive,
                       image: str) -> cloudbuild_v1.Build:
    """The Build `gcloud builds submit --pack image=IMAGE,builder=BUILDER,env=...` creates.

    One step, ``pack build IMAGE --network cloudbuild --env K=V ... --builder BUILDER``: gcloud
    adds the ``pack config default-builder`` step only when no builder is given
    (googlecloudsdk/command_lib/builds/submit_util.py, ``_SetBuildSteps``; REFERENCE §7), and
    cf2run always gives the pinned one. Source pinned to the archive's generation;
    ``images: [IMAGE]`` so Cloud Build pushes it and reports its digest.
    """
    env_args = [arg for name, value in pack_env(spec) for arg in ("--env", f"{name}={value}")]
    return cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(
            bucket=archive.bucket, object_=archive.object_name, generation=archive.generation)),
        steps=[_pack_step("build", image, "--network", "cloudbuild", *env_args, "--builder",
                          target.builder)],
        images=[image],
        timeout=duration_pb2.Duration(seconds=target.build_timeout_s),
        tags=build_tags(spec),
    )


# ==============================================================================================
# The Prefect task: reuse an existing tag, else submit the build and poll it
# ==============================================================================================

#: Build states after which Cloud Build will not change the build any more.
TERMINAL = {
    cloudbuild_v1.Build.Status.SUCCESS, cloudbuild_v1.Build.Status.FAILURE,
    cloudbuild_v1.Build.Status.INTERNAL_ERROR, cloudbuild_v1.Build.Status.TIMEOUT,
    cloudbuild_v1.Build.Status.CANCELLED, cloudbuild_v1.Build.Status.EXPIRED,
}


def build_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key across flow runs: the image the inputs name (source sha256 + build settings).

    On the local target the image lives in one local cloud, so its directory is part of the
    key: a cached result from another (e.g. an earlier `cf2run demo`) is not this one's.
    """
    target: Target = parameters["target"]
    image = image_for(parameters["spec"], target, parameters["archive"].sha256)
    return image if target.kind == "gcp" else f"{image}@{target.localcloud_dir}"


@task(name="build", task_run_name="build[{spec.name}]", persist_result=True,
      cache_policy=CacheKeyFnPolicy(cache_key_fn=build_cache_key) + TASK_SOURCE, **RETRIES)
def submit_pack_build(spec: FunctionSpec, target: Target, archive: SourceArchive) -> BuiltImage:
    """Build the function's image with Cloud Build pack, unless that exact image exists (pushed
    by a build that succeeded), or join a build of it still running (one an earlier attempt or
    run started: CreateBuild is not idempotent, and its answer can be lost after it took effect)."""
    logger = get_run_logger()
    cloud = Cloud.for_target(target)
    image = image_for(spec, target, archive.sha256)
    earlier = builds_of_image(cloud, target, image)
    latest = earlier[0] if earlier else None
    existing = cloud.registry.head_manifest(ImageRef.parse(image))
    if existing is not None and (latest is None or latest.status == cloudbuild_v1.Build.Status.SUCCESS):
        logger.info("%s already built: %s@%s", spec.name, image, existing.digest)
        return BuiltImage(image=image, digest=existing.digest, cached=True)
    if existing is not None and latest is not None and latest.status in TERMINAL:
        logger.info("%s: not reusing %s, its last build %s ended %s", spec.name, image, latest.id,
                    latest.status.name)

    with build_slot() as slot:  # the project's concurrent-builds quota, shared by every flow run
        if latest is not None and latest.status not in TERMINAL:
            build_id, sent = latest.id, _monotonic_at(latest.create_time)
            earlier = earlier[1:]
            logger.info("joining build %s of %s, %s since an earlier attempt started it: %s",
                        build_id, spec.name, latest.status.name, latest.log_url)
        else:
            sent = time.monotonic()
            operation = cloud.builds.create_build(
                parent=_location(target), project_id=target.project,
                build=pack_build_request(spec, target, archive, image))
            build_id = operation.metadata.build.id
            logger.info("build %s started for %s: %s", build_id, spec.name,
                        operation.metadata.build.log_url)
        build = wait_for_build(cloud, target, build_id, spec.name, sent, keep=slot.keep)
    if build.status != cloudbuild_v1.Build.Status.SUCCESS:
        raise build_error(build, spec.name, image, earlier,
                          explain=lambda: explain_log(read_tail(cloud.storage, build), spec))
    digest = next((built.digest for built in build.results.images if built.name == image), None)
    if not digest:
        raise BuildFailed(f"build {build_id} of {spec.name} succeeded but reported no digest "
                          f"for {image}; log: {build.log_url}")
    return BuiltImage(image=image, digest=digest, build_id=build_id, log_url=build.log_url,
                      cached=False)


#: The builds of an image looked at before building it: the newest decide (a fleet builds an
#: image once; more are retries after Cloud Build's own failures).
EARLIER_BUILDS = 10


def builds_of_image(cloud: Cloud, target: Target, image: str) -> list[cloudbuild_v1.Build]:
    """The newest builds that push `image`, newest first: ListBuilds filtered on ``images``
    (https://cloud.google.com/build/docs/view-build-results, "Filtering build results using
    queries"), in the location the pipeline builds in."""
    request = cloudbuild_v1.ListBuildsRequest(parent=_location(target), project_id=target.project,
                                              filter=f'images="{image}"', page_size=EARLIER_BUILDS)
    return list(itertools.islice(cloud.builds.list_builds(request=request), EARLIER_BUILDS))


def _location(target: Target) -> str:
    return f"projects/{target.project}/locations/{target.region}"


def _monotonic_at(when: datetime) -> float:
    """The monotonic time of the wall-clock time `when` (a build's create time), not later than now."""
    return time.monotonic() - max(0.0, (datetime.now(UTC) - when).total_seconds())


class RecentBuilds:
    """How long this process' last successful builds took, created to finished (Cloud Build's
    clock): builds of one fleet take about as long as each other, so the next one is asked
    about right when they ended, not up to a backoff step later (a step its build slot idles)."""

    def __init__(self, keep: int = 16) -> None:
        self._seconds: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.known = threading.Event()  #: set once the first build ended

    def add(self, seconds: float) -> None:
        with self._lock:
            self._seconds.append(seconds)
        self.known.set()

    def typical_s(self) -> float | None:
        """The median of the recent durations; None before the first build ended."""
        with self._lock:
            return statistics.median(self._seconds) if self._seconds else None


RECENT_BUILDS = RecentBuilds()


def wait_for_build(cloud: Cloud, target: Target, build_id: str, function: str, sent: float,
                   keep: Callable[[], None] = lambda: None) -> cloudbuild_v1.Build:
    """Poll GetBuild on `cloud.polling.build`'s schedule from `sent` (monotonic time the build was
    asked for), with quick asks around the time this process' recent builds took, until the
    build ends (or its timeout passes); `keep()` after every poll (the build slot renews its
    lease there). Builds that started before any had ended (a fleet's first ones, which all
    take about as long) switch to the quick asks as soon as the first one ends."""
    name = f"projects/{target.project}/locations/{target.region}/builds/{build_id}"
    deadline = sent + target.build_timeout_s + 120
    expected = RECENT_BUILDS.typical_s()
    schedule = cloud.polling.build.schedule(expected)
    while True:
        wait = max(0.0, sent + next(schedule) - time.monotonic())
        if expected is not None:
            time.sleep(wait)
        elif RECENT_BUILDS.known.wait(wait):
            expected = RECENT_BUILDS.typical_s()
            past = functools.partial(operator.ge, time.monotonic() - sent)  # asks before now
            schedule = itertools.dropwhile(past, cloud.polling.build.schedule(expected))
            continue
        build = cloud.builds.get_build(name=name)  # the client retries UNAVAILABLE itself
        if build.status in TERMINAL:
            if build.status == cloudbuild_v1.Build.Status.SUCCESS:
                RECENT_BUILDS.add((build.finish_time - build.create_time).total_seconds())
            return build
        if time.monotonic() > deadline:
            raise BuildFailed(f"build {build_id} of {function} still {build.status.name} after "
                              f"{target.build_timeout_s}s (its timeout); log: {build.log_url}")
        keep()
