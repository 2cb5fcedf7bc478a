"""gen1 settings -> Cloud Run v2 fields (REFERENCE §5), one pure function per setting.

`tasks.deploy.service_for` assembles the Service from these; `cf2run plan` and the golden
tests read them too. Secrets stay references (Secret Manager resource names); their values
are never read here.
"""

from __future__ import annotations

from google.cloud import run_v2

from cf2run.spec import FunctionSpec, Target
from cf2run.spec_parts import SecretVolume

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
VOLUME_PREFIX = "secret"


def service_account(spec: FunctionSpec, target: Target) -> str:
    """`spec.service_account`, else gen1's runtime account ``PROJECT@appspot.gserviceaccount.com``.

    A domain-scoped project ``example.com:proj`` has ``proj.example.com@appspot...``.
    """
    if spec.service_account:
        return spec.service_account
    domain, _, project = target.project.rpartition(":")
    return f"{project}.{domain}@{APPSPOT}" if domain else f"{project}@{APPSPOT}"


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
