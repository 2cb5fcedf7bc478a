"""What a migration would do, found out without changing any cloud resource (the fleet's dry run).

Per function: tar the source locally (no upload) to get the image tag the build would produce,
HEAD that tag in the registry (build cached or needed), GetService and compare it with the
service the deploy step would send (deploy unchanged, update or create). Read-only calls only.
"""

from __future__ import annotations

from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import ImageRef
from cf2run.manifest import mapping
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import VerifiedImage
from tasks.build import image_for
from tasks.deploy import get_service, serves, service_for, service_path, short_name
from tasks.package import source_sha256
from tasks.policy import RETRIES


class FunctionPlan(BaseModel):
    """What migrating one function would do now."""

    model_config = ConfigDict(extra="forbid")

    function: str = Field(description="Function (service) name.")
    ok: bool = Field(default=True, description="False when the function could not be planned.")
    message: str | None = Field(default=None, description="Why it could not be planned.")
    build: Literal["cached", "needed"] | None = Field(
        default=None, description="'cached': the image for this source and settings exists.")
    deploy: Literal["unchanged", "update", "create"] | None = Field(
        default=None, description="What the deploy step would do to the Cloud Run service.")
    image: str | None = Field(default=None, description="Image tag the build produces.")
    digest: str | None = Field(default=None, description="Digest of the image, when already built.")
    current_revision: str | None = Field(default=None, description="Revision the service runs now.")
    revision: str | None = Field(
        default=None, description="Revision the deploy would serve (known when the build is cached).")
    url: str | None = Field(default=None, description="Service URL, when the service exists.")
    cloud_run_writes: int = Field(
        default=0, description="Cloud Run writes the deploy would make (create or update, IAM binding).")

    @classmethod
    def failed(cls, function: str, error: BaseException | str) -> FunctionPlan:
        return cls(function=function, ok=False, message=str(error))


def plan(spec: FunctionSpec, target: Target, cloud: Cloud) -> FunctionPlan:
    """Find out, with read-only calls, whether `spec` needs a build and what its deploy would do."""
    sha256 = source_sha256(spec.source)
    image = image_for(spec, target, sha256)
    built = cloud.registry.head_manifest(ImageRef.parse(image))
    existing = get_service(cloud.services, service_path(target, spec.name), step="plan")
    result = FunctionPlan(function=spec.name, image=image, build="needed" if built is None else "cached",
                          deploy="create" if existing is None else "update")
    if existing is not None:
        result.current_revision = short_name(existing.latest_ready_revision) or None
        result.url = existing.uri or None
    if built is not None:
        result.digest = built.digest
        verified = VerifiedImage(image=f"{ImageRef.parse(image).name}@{built.digest}", digest=built.digest,
                                 platform="linux/amd64", web_process="")
        wanted = service_for(spec, target, verified, sha256)
        result.revision = wanted.template.revision
        if existing is not None and serves(existing, wanted):
            result.deploy = "unchanged"
    if result.deploy == "create":  # CreateService, then one SetIamPolicy for its invokers, if any
        result.cloud_run_writes = 1 + bool(spec.allow_unauthenticated or spec.invokers)
    elif result.deploy == "update":  # the candidate revision, then promoting it
        result.cloud_run_writes = 2
    elif existing is not None and existing.ingress != mapping.INGRESS[spec.ingress]:
        result.cloud_run_writes = 1  # promote changes the ingress alone (tasks/deploy.py)
    return result


@task(name="plan", task_run_name="plan[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def plan_function(spec: FunctionSpec, target: Target) -> FunctionPlan:
    """What migrating `spec` would do now (no cloud resource is changed)."""
    return plan(spec, target, Cloud.for_target(target))
