"""gen1 settings -> Cloud Run v2 fields (REFERENCE §5), one pure function per setting.

`tasks.deploy.service_for` assembles the Service from these; `cf2run plan` and the golden
tests read them too. Secrets stay references (Secret Manager resource names); their values
are never read here.
"""

from __future__ import annotations

from google.cloud import run_v2

from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.manifest.spec_parts import SecretVolume

INGRESS = {
    "all": run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL,
    "internal-only": run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY,
    "internal-and-gclb": run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER,
}
EGRESS = {
    "private-ranges-only": run_v2.VpcAccess.VpcEgress.PRIVATE_RANGES_ONLY,
    "all-traffic": run_v2.VpcAccess.VpcEgress.ALL_TRAFFIC,
}
APPSPOT = "appspot.gserviceaccount.com"
#: gen1's max instances when none is set: "If you don't specify a limit, Cloud Run functions sets
#: a default of 3000" (cloud.google.com/functions/1stgendocs/configuring/max-instances).
GEN1_DEFAULT_MAX_INSTANCES = 3000
#: Cloud Run's when `scaling.max_instance_count` is unset (run_v2 RevisionScaling docs).
CLOUD_RUN_DEFAULT_MAX_INSTANCES = 100
VOLUME_PREFIX = "secret"


def service_account(spec: FunctionSpec, target: Target) -> str:
    """`spec.service_account`, else gen1's runtime account ``PROJECT@appspot.gserviceaccount.com``.

    A domain-scoped project ``example.com:proj`` has ``proj.example.com@appspot...``.
    """
    if spec.service_account:
        return spec.service_account
    domain, _, project = target.project.rpartition(":")
    return f"{project}.{domain}@{APPSPOT}" if domain else f"{project}@{APPSPOT}"


def max_instances(spec: FunctionSpec) -> int:
    """`template.scaling.max_instance_count`: `spec.max_instances`, else gen1's default 3000.

    Never left unset: Cloud Run would make it 100, a 30th of what the function could scale to
    on gen1. Cloud Run caps it by the project's regional CPU and memory quotas
    (cloud.google.com/run/docs/configuring/max-instances-limits) and refuses a value above
    ("maxScale may not exceed N"); cf2run then fails the deploy naming `max_instances` rather
    than lower it silently.
    """
    return GEN1_DEFAULT_MAX_INSTANCES if spec.max_instances is None else spec.max_instances


def max_instances_note(spec: FunctionSpec) -> str | None:
    """What `cf2run plan` says about a function without `max_instances` (None when it has one)."""
    if spec.max_instances is not None:
        return None
    return (f"max instances {GEN1_DEFAULT_MAX_INSTANCES}: max_instances is unset, so the function "
            f"keeps gen1's default (Cloud Run's own default would be "
            f"{CLOUD_RUN_DEFAULT_MAX_INSTANCES}); Cloud Run refuses it where the project's "
            f"regional quota allows fewer for cpu {spec.effective_cpu} and memory {spec.memory}: "
            "set max_instances then")


def secret_name(secret: str, project: str | None, target: Target) -> str:
    """What Cloud Run takes: the id for a secret of the target's project, else its resource name."""
    if project is None or project == target.project:
        return secret
    return f"projects/{project}/secrets/{secret}"


def container_env(spec: FunctionSpec, target: Target) -> list[run_v2.EnvVar]:
    """`env` as values, then `secret_env` as Secret Manager references, each in manifest order."""
    plain = [run_v2.EnvVar(name=name, value=value) for name, value in spec.env.items()]
    secret = [run_v2.EnvVar(name=name, value_source=run_v2.EnvVarSource(
        secret_key_ref=run_v2.SecretKeySelector(secret=secret_name(ref.secret, ref.project, target),
                                                version=ref.version)))
        for name, ref in spec.secret_env.items()]
    return plain + secret


def volume_name(index: int) -> str:
    return f"{VOLUME_PREFIX}-{index}"


def volumes(spec: FunctionSpec, target: Target) -> list[run_v2.Volume]:
    """One secret volume per `secret_volumes` entry (no items = the latest, named after the secret)."""
    return [run_v2.Volume(name=volume_name(index), secret=_secret_source(volume, target))
            for index, volume in enumerate(spec.secret_volumes)]


def _secret_source(volume: SecretVolume, target: Target) -> run_v2.SecretVolumeSource:
    items = [run_v2.VersionToPath(path=item.path, version=item.version) for item in volume.versions]
    return run_v2.SecretVolumeSource(secret=secret_name(volume.secret, volume.project, target),
                                     items=items)


def volume_mounts(spec: FunctionSpec) -> list[run_v2.VolumeMount]:
    return [run_v2.VolumeMount(name=volume_name(index), mount_path=volume.mount_path)
            for index, volume in enumerate(spec.secret_volumes)]


def connector_name(connector: str, target: Target) -> str:
    """A connector's full name; a bare name is in the target's project and region."""
    if connector.startswith("projects/"):
        return connector
    return f"projects/{target.project}/locations/{target.region}/connectors/{connector}"


def vpc_access(spec: FunctionSpec, target: Target) -> run_v2.VpcAccess | None:
    """`template.vpc_access` for a function with a connector, else None (no VPC access)."""
    if spec.vpc_connector is None:
        return None
    return run_v2.VpcAccess(connector=connector_name(spec.vpc_connector, target),
                            egress=EGRESS[spec.vpc_egress])
