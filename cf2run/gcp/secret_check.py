"""Whether every secret a function's manifest names can be used, asked of Secret Manager before
anything is created (the plan, and the migration's `secrets` step before package and deploy).

Each `secret_env` variable and `secret_volumes` file names a version (a number, or ``latest``:
the newest version, whatever its state, as Cloud Run resolves it) of a secret in the target's
project or the reference's own. It must exist and be ENABLED, or the revision would fail to
start with a message about the revision, not the manifest. Only metadata is read
(GetSecretVersion, permission secretmanager.versions.get, in roles/secretmanager.viewer): never
the value. A check Secret Manager refuses (PERMISSION_DENIED) is a warning, not a problem: the
runtime service account may still read the secret.

    found = check(spec, target, cloud.secrets)
    found.problems   # ["secret_env API_KEY: secret api-key (version latest) does not exist in ..."]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.api_core import exceptions as api_exceptions
from google.cloud import secretmanager

from cf2run.manifest.mapping import service_account
from cf2run.manifest.spec import FunctionSpec, Target

ACCESSOR = "roles/secretmanager.secretAccessor"
VIEWER = "roles/secretmanager.viewer"
_STATE = secretmanager.SecretVersion.State


@dataclass(frozen=True)
class SecretUse:
    """One secret version the manifest names, and the field that names it."""

    field: str  # "secret_env API_KEY", "secret_volumes[0]", "secret_volumes[0].versions[1]"
    project: str
    secret: str
    version: str

    @property
    def name(self) -> str:
        return f"projects/{self.project}/secrets/{self.secret}/versions/{self.version}"

    @property
    def flags(self) -> str:
        return f"{self.secret} --project={self.project}"


@dataclass
class Findings:
    """What the check found: `problems` stop the migration; `warnings` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def uses(spec: FunctionSpec, target: Target) -> list[SecretUse]:
    """Every secret version `spec` names, in manifest order."""
    found = [SecretUse(f"secret_env {name}", ref.project or target.project, ref.secret, ref.version)
             for name, ref in spec.secret_env.items()]
    for index, volume in enumerate(spec.secret_volumes):
        project = volume.project or target.project
        if not volume.versions:
            found.append(SecretUse(f"secret_volumes[{index}]", project, volume.secret, "latest"))
        found += [SecretUse(f"secret_volumes[{index}].versions[{n}]", project, volume.secret, item.version)
                  for n, item in enumerate(volume.versions)]
    return found


def check(spec: FunctionSpec, target: Target, client: secretmanager.SecretManagerServiceClient) -> Findings:
    """Ask Secret Manager about each secret version `spec` names (each version once). Errors other
    than NOT_FOUND and PERMISSION_DENIED (UNAVAILABLE, ...) are raised, for the caller's retries."""
    findings = Findings()
    asked: set[str] = set()
    for use in uses(spec, target):
        if use.name in asked:
            continue
        asked.add(use.name)
        try:
            version = client.get_secret_version(name=use.name)
        except api_exceptions.NotFound:
            findings.problems.append(_missing(use, client))
        except api_exceptions.PermissionDenied as denied:
            findings.warnings.append(_not_checked(use, denied, service_account(spec, target)))
        else:
            if version.state != _STATE.ENABLED:
                findings.problems.append(_unusable(use, version))
    return findings


def _missing(use: SecretUse, client: secretmanager.SecretManagerServiceClient) -> str:
    what = f"{use.field}: secret {use.secret} (version {use.version}) does not exist in project {use.project}"
    try:
        client.get_secret(name=f"projects/{use.project}/secrets/{use.secret}")
    except api_exceptions.NotFound:
        return (f"{what}: create it with `gcloud secrets create {use.flags} --data-file=FILE` "
                "(or fix the name in the manifest)")
    except api_exceptions.GoogleAPICallError:
        pass  # the secret may exist: say both
    return (f"{what}: add a version with `gcloud secrets versions add {use.flags} --data-file=FILE`, "
            "or name one that exists (`gcloud secrets versions list "
            f"{use.flags}`)")


def _unusable(use: SecretUse, version: secretmanager.SecretVersion) -> str:
    number = version.name.rsplit("/", 1)[-1]
    state = _STATE(version.state).name
    which = f"version {number}" + (" (latest)" if use.version == "latest" else "")
    fix = (f"enable it with `gcloud secrets versions enable {number} --secret={use.secret} "
           f"--project={use.project}`" if state == "DISABLED" else
           f"add a version with `gcloud secrets versions add {use.flags} --data-file=FILE`")
    return (f"{use.field}: {which} of secret {use.secret} in project {use.project} is {state}, so Cloud "
            f"Run cannot read it: {fix}, or name another version in the manifest")


def _not_checked(use: SecretUse, denied: api_exceptions.GoogleAPICallError, runtime: str) -> str:
    return (f"{use.field}: could not check secret {use.secret} in project {use.project} ({denied.message}): "
            f"cf2run's credentials need secretmanager.versions.get ({VIEWER}) to check it before deploying. "
            f"Deploying anyway; the revision reads it as {runtime}, which needs {ACCESSOR}: "
            f"`gcloud secrets add-iam-policy-binding {use.flags} --member=serviceAccount:{runtime} "
            f"--role={ACCESSOR}`")
