"""submit_pack_build: the function's source -> an image in Artifact Registry, via Cloud Build pack.

The Build is exactly what `gcloud builds submit --pack image=IMAGE,env=K=V` creates
(REFERENCE §1), with the builder pinned, the function's build env as pack `--env`, `$`
escaped, an explicit timeout, and tags naming the tool and the function.
"""

from __future__ import annotations

import hashlib
import json

from google.cloud.devtools import cloudbuild_v1
from google.protobuf import duration_pb2

from cf2run.results import SourceArchive
from cf2run.spec import FunctionSpec, Target

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
    """The Build `gcloud builds submit --pack image=IMAGE,env=...` creates (REFERENCE §1).

    Steps: ``pack config default-builder BUILDER``, then ``pack build IMAGE --network
    cloudbuild --env K=V ... --builder BUILDER``; source pinned to the archive's generation;
    ``images: [IMAGE]`` so Cloud Build pushes it and reports its digest.
    """
    env_args = [arg for name, value in pack_env(spec) for arg in ("--env", f"{name}={value}")]
    return cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(
            bucket=archive.bucket, object_=archive.object_name, generation=archive.generation)),
        steps=[
            _pack_step("config", "default-builder", target.builder),
            _pack_step("build", image, "--network", "cloudbuild", *env_args, "--builder", target.builder),
        ],
        images=[image],
        timeout=duration_pb2.Duration(seconds=target.build_timeout_s),
        tags=build_tags(spec),
    )


# ==============================================================================================
# The Prefect task: submit, poll, reuse an existing tag (added separately)
# ==============================================================================================
