"""verify_image: check the built image through the OCI distribution API before deploying it.

Three things, each read from the registry (Artifact Registry on GCP, the local registry offline):

1. the tag resolves to the digest the build reported (nobody moved it in between);
2. the image is linux/amd64, the only platform Cloud Run runs (for an index: its linux/amd64 entry);
3. the config's buildpack metadata (label ``io.buildpacks.build.metadata``) names a ``web``
   process, which is what Cloud Run starts.

It also reads the local cloud's note (label ``cf2run.runtime.note``) of a language version other
than the runtime names, so the report can say so.

Read-only, so cached across flow runs on the image reference and digest.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cf2run.errors import ImageVerificationError
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import INDEX_MEDIA_TYPES, ImageRef, Manifest, RegistryClient
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import LOCAL_RUNTIME_NOTE_LABEL, BuiltImage, VerifiedImage
from tasks.policy import RETRIES

PLATFORM = "linux/amd64"
BUILD_METADATA_LABEL = "io.buildpacks.build.metadata"
WEB_PROCESS = "web"

_REBUILD = "rebuild the image (run the migration again) with a Google buildpacks builder"


def verify_built_image(registry: RegistryClient, built: BuiltImage) -> VerifiedImage:
    """Check `built` in the registry; ImageVerificationError says which check failed and why."""
    ref = ImageRef.parse(built.image)
    descriptor = registry.head_manifest(ref)
    if descriptor is None:
        raise ImageVerificationError(
            f"verify {built.image}: the tag is not in the registry (the build reported {built.digest})",
            hint="check that the build pushed the image to this repository, then run the migration again")
    if descriptor.digest != built.digest:
        raise ImageVerificationError(
            f"verify {built.image}: the tag resolves to {descriptor.digest}, but the build reported "
            f"{built.digest}",
            hint="something else pushed this tag after the build; run the migration again to rebuild")
    top = registry.get_manifest(ref.with_digest(built.digest))
    manifest = _platform_manifest(registry, ref, top)
    config_digest = manifest.json().get("config", {}).get("digest")
    if not config_digest:
        raise ImageVerificationError(f"verify {built.image}: manifest {manifest.digest} names no config blob",
                                     hint=_REBUILD)
    config = _json_blob(registry.get_blob(ref, config_digest), f"config {config_digest} of {built.image}")
    platform = platform_of(config)
    if platform != PLATFORM:
        raise ImageVerificationError(
            f"verify {built.image}: the image is {platform}, Cloud Run runs {PLATFORM} only",
            hint=f"{_REBUILD} for {PLATFORM}")
    labels = (config.get("config") or {}).get("Labels") or {}
    return VerifiedImage(image=built.by_digest, digest=built.digest, platform=platform,
                         web_process=web_process(config, built.image),
                         runtime_note=labels.get(LOCAL_RUNTIME_NOTE_LABEL))


def platform_of(config: dict[str, Any]) -> str:
    """``os/architecture`` of an image config (``?`` for what it leaves out)."""
    return f"{config.get('os') or '?'}/{config.get('architecture') or '?'}"


def web_process(config: dict[str, Any], image: str) -> str:
    """The ``web`` process of the buildpack metadata in an image config, as one shell-quoted line."""
    labels = (config.get("config") or {}).get("Labels") or {}
    raw = labels.get(BUILD_METADATA_LABEL)
    if raw is None:
        raise ImageVerificationError(
            f"verify {image}: the image config has no {BUILD_METADATA_LABEL} label, so it was not built "
            "by buildpacks and Cloud Run would not know what to start", hint=_REBUILD)
    metadata = _json_blob(raw.encode(), f"label {BUILD_METADATA_LABEL} of {image}")
    processes = metadata.get("processes") or []
    for process in processes:
        if isinstance(process, dict) and process.get("type") == WEB_PROCESS:
            return _command_line(process)
    found = ", ".join(str(p.get("type")) for p in processes if isinstance(p, dict)) or "none"
    raise ImageVerificationError(
        f"verify {image}: the buildpack metadata names no '{WEB_PROCESS}' process (processes: {found})",
        hint="a function build sets GOOGLE_FUNCTION_TARGET so the buildpacks add the Functions "
             "Framework web process; check the entry point and build env, then rebuild")


def _command_line(process: dict[str, Any]) -> str:
    # Platform API < 0.10 writes `command` as a string, later versions as a list.
    command = process.get("command") or []
    words = [command] if isinstance(command, str) else [str(word) for word in command]
    words += [str(arg) for arg in process.get("args") or []]
    return shlex.join(words)


def _platform_manifest(registry: RegistryClient, ref: ImageRef, top: Manifest) -> Manifest:
    """`top` itself, or for an index the manifest of its linux/amd64 entry."""
    if top.media_type not in INDEX_MEDIA_TYPES:
        return top
    entries = top.json().get("manifests") or []
    os_name, _, arch = PLATFORM.partition("/")
    for entry in entries:
        platform = entry.get("platform") or {}
        if platform.get("os") == os_name and platform.get("architecture") == arch:
            return registry.get_manifest(ref.with_digest(str(entry["digest"])))
    listed = ", ".join(sorted(f"{(e.get('platform') or {}).get('os', '?')}/"
                              f"{(e.get('platform') or {}).get('architecture', '?')}" for e in entries))
    raise ImageVerificationError(
        f"verify {ref.name}@{top.digest}: the image index has no {PLATFORM} entry "
        f"(it has: {listed or 'none'})",
        hint=f"{_REBUILD} for {PLATFORM}")


def _json_blob(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError as error:
        raise ImageVerificationError(f"verify: {what} is not JSON ({error})", hint=_REBUILD) from None
    if not isinstance(parsed, dict):
        raise ImageVerificationError(f"verify: {what} is not a JSON object", hint=_REBUILD)
    return parsed


#: Never cached: verifying is three cheap reads, and it is what tells the flow that a cached
#: build result no longer matches the registry (the image was deleted or the tag moved).
@task(name="verify", task_run_name="verify[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def verify_image(spec: FunctionSpec, target: Target, built: BuiltImage) -> VerifiedImage:
    """Check the built image: tag -> reported digest, linux/amd64, a buildpack ``web`` process."""
    logger = get_run_logger()
    verified = verify_built_image(Cloud.for_target(target).registry, built)
    logger.info("%s is %s, web process: %s", verified.image, verified.platform, verified.web_process)
    if verified.runtime_note:
        logger.warning("%s: the local cloud built %s with %s", spec.name, verified.image,
                       verified.runtime_note)
    return verified
