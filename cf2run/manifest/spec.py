"""What to migrate and where: `FunctionSpec`, `SmokeRequest`, `Target`, `Manifest`.

These Pydantic models are the boundary users touch: the YAML manifest, the CLI flags and
the Prefect UI form (which shows every field's description). They reject, before any cloud
call, what Google would reject later (REFERENCE.md §4, §1), with messages that name the
field and say what to do.

    manifest = load_manifest(Path("examples/manifest.yaml"), only=["orders-api"])
    for spec in manifest.functions:
        ...  # spec.name, spec.runtime, spec.effective_cpu, manifest.target.bucket
"""

from __future__ import annotations

import difflib
import keyword
import re
import types
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cf2run.errors import SpecError
from cf2run.forms import partial
from cf2run.manifest import principals
from cf2run.manifest.spec_parts import (
    ParityCheck,
    SecretRef,
    SecretVolume,
    SmokeRequest,
    StrictModel,
    Trigger,
    overlapping_mounts,
)

Runtime = Literal[
    "python38", "python39", "python310", "python311", "python312", "python313",
    "nodejs16", "nodejs18", "nodejs20", "nodejs22",
]
SignatureType = Literal["http", "event", "cloudevent"]
Ingress = Literal["all", "internal-only", "internal-and-gclb"]
VpcEgress = Literal["private-ranges-only", "all-traffic"]

#: Cloud Run sets these itself; the v2 API refuses them in `containers[].env` (REFERENCE §4).
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"})
#: Build env names cf2run derives from spec fields (REFERENCE §2); setting them twice would conflict.
DERIVED_BUILD_ENV = {
    "GOOGLE_FUNCTION_TARGET": "entry_point",
    "GOOGLE_FUNCTION_SIGNATURE_TYPE": "signature_type",
    "GOOGLE_RUNTIME": "runtime",
    "GOOGLE_RUNTIME_VERSION": "runtime",
    "GOOGLE_PYTHON_VERSION": "runtime",
    "GOOGLE_NODEJS_VERSION": "runtime",
}
#: gen1 memory tiers (MiB) and the CPU that came with each (REFERENCE §5).
GEN1_CPU_BY_MEMORY_MIB = {128: "0.083", 256: "0.167", 512: "0.333", 1024: "0.583",
                          2048: "1", 4096: "2", 8192: "2"}
#: Cloud Run's minimum vCPU above a memory size (MiB): REFERENCE §4 plus Cloud Run's memory limits.
MIN_CPU_ABOVE_MEMORY_MIB = ((512, 0.5), (1024, 1.0), (4096, 2.0), (8192, 4.0), (16384, 6.0),
                            (24576, 8.0))
#: The memory (MiB) Cloud Run needs at least for a cpu (cloud.google.com/run/docs/configuring/
#: services/cpu: "4 2 GiB, 6 4 GiB, 8 4 GiB").
MIN_MEMORY_FOR_CPU_MIB = ((8.0, 4096), (6.0, 4096), (4.0, 2048))
MEMORY_MIB_RANGE = (128, 32768)
CPU_RANGE = (0.08, 8.0)
WHOLE_CPUS_ABOVE_ONE = (2.0, 4.0, 6.0, 8.0)
DEFAULT_BUILDER = "gcr.io/buildpacks/builder:google-22"
#: Runtimes Google builds only on its Ubuntu 18 stack (google-18-full), which the google-22 and
#: google-24 builders do not have; gcr.io/buildpacks/builder:v1 does.
UBUNTU18_RUNTIMES = frozenset({"python38", "python39", "nodejs16"})
UBUNTU18_BUILDER = "gcr.io/buildpacks/builder:v1"
NEWER_STACK_TAGS = ("google-22", "google-24")

#: Cloud Run: traffic tag + service name <= 46 (REFERENCE §4); the shortest candidate tag is 'c'.
MAX_NAME_WITH_TAG = 45

#: The shape of a service name; its length is MAX_NAME_WITH_TAG, said and checked apart.
SERVICE_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]*[a-z0-9])?$")
NAME_RULES = (f"lowercase letters, digits and '-', starting with a letter and not ending with '-', "
              f"at most {MAX_NAME_WITH_TAG} characters")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JS_IDENTIFIER_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
PROJECT_RE = re.compile(r"^(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
REPOSITORY_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
SERVICE_ACCOUNT_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CONNECTOR_RE = re.compile(r"^[a-z][-a-z0-9]{0,23}[a-z0-9]$")
CONNECTOR_PATH_RE = re.compile(r"^projects/[^/]+/locations/[a-z]+-[a-z]+[0-9]+/connectors/"
                               r"[a-z][-a-z0-9]{0,23}[a-z0-9]$")
QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
CPU_RE = re.compile(r"^(?:([0-9]+(?:\.[0-9]+)?)|([0-9]+)m)$")
QUANTITY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                  "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_mib(quantity: str) -> float:
    """The size in MiB of a Kubernetes memory quantity such as ``512Mi`` or ``1Gi``."""
    match = QUANTITY_RE.match(quantity)
    if not match:
        raise ValueError(f"memory {quantity!r} is not a Kubernetes quantity; write it like '512Mi' or '2Gi'")
    return float(match.group(1)) * QUANTITY_UNITS[match.group(2)] / 2**20


def cpu_cores(quantity: str) -> float:
    """The vCPUs of a Cloud Run CPU limit such as ``1``, ``0.5`` or ``500m``."""
    match = CPU_RE.match(quantity)
    if not match:
        raise ValueError(f"cpu {quantity!r} is not a CPU quantity; write it like '1', '0.5' or '500m'")
    return float(match.group(1)) if match.group(1) else int(match.group(2)) / 1000


def _check_env_names(env: Iterable[str], field: str) -> None:
    for name in env:
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"{field} name {name!r} is not a valid environment variable name; use "
                             "letters, digits and '_', not starting with a digit")


def _check_runtime_env(names: Collection[str], field: str, advice: str) -> None:
    """Names the revision's environment gets: valid, and none that Cloud Run sets itself."""
    _check_env_names(names, field)
    reserved = sorted(RESERVED_ENV & set(names))
    if reserved:
        raise ValueError(f"{field} sets {', '.join(reserved)}, which Cloud Run reserves and sets "
                         f"itself; {advice}")


_Model = StrictModel

#: Names of variables that usually hold credentials.
CREDENTIAL_NAME_RE = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIALS?|ACCESS_?KEY)", re.IGNORECASE)
#: Shapes of well-known credentials (the prefixes their issuers document, as secret scanners use).
CREDENTIAL_VALUES = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r'"private_key"\s*:'), "a service-account key"),
    (re.compile(r"\bya29\.[0-9A-Za-z_-]{20,}"), "a Google OAuth access token"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), "a Google API key"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key"),
    (re.compile(r"\b(?:gh[pousr]_[0-9A-Za-z]{36}|github_pat_[0-9A-Za-z_]{22,})"), "a GitHub token"),
    (re.compile(r"\bglpat-[0-9A-Za-z_-]{20}"), "a GitLab token"),
    (re.compile(r"\bnpm_[0-9A-Za-z]{36}\b"), "an npm token"),
    (re.compile(r"\bxox[abprs]-[0-9A-Za-z-]{10,}"), "a Slack token"),
    (re.compile(r"\b[rs]k_live_[0-9A-Za-z]{20,}"), "a Stripe key"),
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), "a URL with a password"),
)


def looks_like_credential(name: str, value: str) -> str | None:
    """Why a variable looks like it holds a credential (its value's shape, or a non-empty value
    under a credential's name), or None."""
    for pattern, what in CREDENTIAL_VALUES:
        if pattern.search(value):
            return f"its value looks like {what}"
    match = CREDENTIAL_NAME_RE.search(name)
    if match and value.strip():
        return f"its name says {match.group(1).upper()}"
    return None



def service_account_email(email: str | None, field: str) -> str | None:
    """`email` when it is one (a manifest field naming a service account), else ValueError."""
    if email is not None and not SERVICE_ACCOUNT_RE.match(email):
        raise ValueError(f"{field} {email!r} is not an email address; give the service account's "
                         "email, e.g. NAME@PROJECT.iam.gserviceaccount.com")
    return email

PRINCIPAL_FORMS = ("user:EMAIL, serviceAccount:EMAIL, group:EMAIL, domain:DOMAIN, allAuthenticatedUsers, "
                   "principal://... or principalSet://... "
                   "(https://cloud.google.com/iam/docs/principal-identifiers)")


def invoker_problem(member: str) -> str | None:
    """What is wrong with `member` as an entry of `invokers` (cf2run/manifest/principals.py), or None."""
    parsed = principals.parse(member)
    if member == principals.ALL_USERS:
        return ("invokers lists allUsers: to make the service public set allow_unauthenticated: "
                "true (invokers names who else may call a private service)")
    if parsed is None:
        meant = principals.misspelled_type(member)
        if meant == principals.ALL_USERS:
            return invoker_problem(meant)
        if meant:
            return f"invokers member {member!r}: IAM's types are case-sensitive; write {meant!r}"
        if principals.EMAIL_RE.match(member):
            return (f"invokers member {member!r} has no type; write user:{member}, "
                    f"serviceAccount:{member} or group:{member}")
        return f"invokers member {member!r} is not an IAM principal; use {PRINCIPAL_FORMS}"
    if parsed.kind == principals.DELETED:
        return f"invokers member {member!r} is a deleted principal; remove it"
    if not principals.well_formed(parsed):
        what = {"domain": "a domain name such as example.com",
                "principal": "a principal URI such as principal://iam.googleapis.com/...",
                "principalSet": "a principal set URI such as principalSet://iam.googleapis.com/..."}
        return (f"invokers member {member!r}: after '{parsed.kind}:' comes "
                f"{what.get(parsed.kind, 'an email address')}")
    return None


class FunctionSpec(_Model):
    """One Cloud Function to migrate: its source, how to build it and how Cloud Run should run it."""

    #: Fields the Prefect UI's form shows after the others (cf2run/forms.py).
    FORM_LAST: ClassVar[tuple[str, ...]] = (
        "build_env", "build_env_plain", "secret_files", "min_instances", "service_account",
        "ingress", "labels", "secret_volumes", "vpc_connector", "vpc_egress", "trigger", "smoke",
        "parity")

    name: str = Field(
        description=f"Cloud Run service name (and image name): {NAME_RULES} (room for the "
                    "candidate traffic tag).",
        json_schema_extra={"pattern": SERVICE_NAME_RE.pattern, "maxLength": MAX_NAME_WITH_TAG})
    source: Path = Field(
        description="Directory with the function's source (only the function body: main.py or "
                    "index.js plus requirements.txt / package.json). In a manifest, relative to "
                    "the manifest's directory; as a flow parameter (the migrate-function form), a "
                    "path in the worker's checkout of this repository, e.g. examples/python-http.")
    runtime: Runtime = Field(
        description="Cloud Functions runtime id, e.g. 'python312' or 'nodejs20'; gives the "
                    "buildpack language and version.")
    entry_point: str = Field(
        description="Name of the function in the source to serve (GOOGLE_FUNCTION_TARGET).")
    signature_type: SignatureType = Field(
        default="http",
        description="Functions Framework signature: 'http' (request/response), 'event' (legacy "
                    "background (data, context)) or 'cloudevent'.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Runtime environment variables of the service (PORT, K_SERVICE, K_REVISION "
                    "and K_CONFIGURATION are set by Cloud Run and cannot be given).")
    build_env: dict[str, str] = Field(
        default_factory=dict,
        description="Build-time environment variables passed to the buildpacks as pack --env "
                    "(gen1 buildEnvironmentVariables). Not secret: the values are stored in Prefect "
                    "flow-run parameters and in the Cloud Build record, so values that look like "
                    "credentials are refused (runtime secrets belong in secret_env).")
    secret_files: Literal["warn", "refuse"] = Field(
        default="warn",
        description="What to do when the source holds files that look like secrets (.env, private "
                    "keys, service-account keys, an .npmrc with a token) that gcloud's ignore rules "
                    "would upload: 'warn' (in the log and the report, naming the .gcloudignore line "
                    "that leaves each out) or 'refuse' (fail before anything is uploaded).")
    build_env_plain: list[str] = Field(
        default_factory=list,
        description="build_env names whose values look like credentials but may be stored in the "
                    "open (checked by you): cf2run refuses them otherwise.")
    memory: str = Field(
        default="256Mi",
        description="Memory limit as a Kubernetes quantity (gen1 tiers: 128Mi, 256Mi, 512Mi, 1Gi, "
                    "2Gi, 4Gi, 8Gi); 128Mi to 32Gi.")
    cpu: str | None = Field(
        default=None,
        description="vCPU limit ('0.5', '1', '2', '500m'); unset = the CPU gen1 gave this memory "
                    "tier (128Mi .083, 256Mi .167, 512Mi .333, 1Gi .583, 2Gi 1, 4Gi 2, 8Gi 2).")
    timeout_s: int = Field(
        default=60, ge=1, le=3600,
        description="Request timeout in seconds; gen1's default 60, gen1 allowed up to 540, Cloud Run "
                    "up to 3600.")
    concurrency: int = Field(
        default=1, ge=1, le=1000,
        description="Concurrent requests per instance; gen1 served one at a time (1). More than "
                    "1 needs at least 1 vCPU.")
    min_instances: int = Field(default=0, ge=0, le=1000, description="Minimum number of instances kept warm.")
    max_instances: int | None = Field(
        default=None, ge=1,
        description="Maximum number of instances; unset = 3000, gen1's default (Cloud Run's own "
                    "default, 100, is not used). Cloud Run refuses more than the project's regional "
                    "CPU and memory quotas allow for this cpu and memory ('maxScale may not exceed "
                    "N'): then set it to at most N, or ask for more quota.")
    service_account: str | None = Field(
        default=None,
        description="Service account email the service runs as; unset = gen1's runtime account "
                    "PROJECT@appspot.gserviceaccount.com of the target project (never Cloud Run's "
                    "compute default).")
    ingress: Ingress = Field(
        default="all",
        description="Who may reach the service: 'all', 'internal-only' or 'internal-and-gclb' "
                    "(callers outside the VPC get 404). A service setting: a candidate runs under the "
                    "service's current ingress, a change takes effect at promote.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels on the service (keys: lowercase letter first, then lowercase letters, "
                    "digits, '_' or '-'; at most 63 characters each).")
    secret_env: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="Environment variables read from Secret Manager (gen1 "
                    "secretEnvironmentVariables): NAME: SECRET, NAME: SECRET:VERSION or NAME: "
                    "{secret, version, project}. Each must exist and be enabled: plan and the "
                    "migration check it in Secret Manager before anything is created. cf2run never "
                    "reads or prints the values.")
    secret_volumes: list[SecretVolume] = Field(
        default_factory=list,
        description="Secrets mounted as files (gen1 secretVolumes): {mount_path, secret, project, "
                    "versions: [{path, version}]}; no versions = the latest in a file named after "
                    "the secret.")
    vpc_connector: str | None = Field(
        default=None,
        description="Serverless VPC Access connector (gen1 vpcConnector): its name in the target "
                    "region, or projects/P/locations/R/connectors/NAME.")
    vpc_egress: VpcEgress = Field(
        default="private-ranges-only",
        description="Traffic sent through the connector (gen1 vpcConnectorEgressSettings): "
                    "'private-ranges-only' or 'all-traffic'.")
    allow_unauthenticated: bool = Field(
        default=False, description="Make the service public (allUsers may invoke it). Private by default.")
    invokers: list[str] = Field(
        default_factory=list,
        description="IAM members given roles/run.invoker on the service at promote, after the smoke "
                    "test (gen1's roles/cloudfunctions.invoker members): user:EMAIL, "
                    "serviceAccount:EMAIL, group:EMAIL, domain:DOMAIN, allAuthenticatedUsers (any "
                    "Google account), principal://... or principalSet://...; allUsers is "
                    "allow_unauthenticated: true. cf2run adds members, never removes them.")
    trigger: Trigger | None = Field(
        default=None,
        description="Event functions: the event they react to (gen1 eventTrigger). The smoke test "
                    "then sends such an event (CloudEvents binary mode) and the report gives the "
                    "Eventarc trigger to create.")
    smoke: SmokeRequest = Field(
        default_factory=lambda: SmokeRequest(), description="The request that checks the deployed service.")
    parity: ParityCheck = Field(
        default_factory=lambda: ParityCheck(),
        description="Parity with the old function: after the smoke test, the same requests go to the "
                    "old function and to the new revision, whose answers must match before it is "
                    "promoted. Unset (no old_url nor old_function) = no parity check.")

    @field_validator("name")
    @classmethod
    def _service_name(cls, name: str) -> str:
        if not SERVICE_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid Cloud Run service name; use {NAME_RULES}")
        if len(name) > MAX_NAME_WITH_TAG:
            raise ValueError(
                f"{name!r} has {len(name)} characters; use at most {MAX_NAME_WITH_TAG} characters "
                "(Cloud Run counts the service name together with the traffic tag cf2run tests a new "
                "revision under before it gets traffic)")
        return name

    @field_validator("source")
    @classmethod
    def _source_dir(cls, source: Path, info: ValidationInfo) -> Path:
        manifest_dir = (info.context or {}).get("base_dir")
        base = Path(manifest_dir or Path.cwd())
        resolved = (base / source.expanduser()).resolve()
        if not resolved.is_dir():
            what = "is not a directory" if resolved.exists() else "does not exist"
            start = ("the manifest's directory" if manifest_dir else
                     f"this worker's checkout ({base}): give a path in the checkout, e.g. "
                     "examples/python-http, or migrate the function from its manifest "
                     "(the migrate-from-manifest form)")
            raise ValueError(f"source directory {str(source)!r} ({resolved}) {what}; point it at the "
                             f"function's source directory (relative paths start at {start})")
        return resolved

    @field_validator("entry_point")
    @classmethod
    def _entry_point(cls, entry_point: str, info: ValidationInfo) -> str:
        runtime = str(info.data.get("runtime", ""))
        if runtime.startswith("python"):
            if not entry_point.isidentifier() or keyword.iskeyword(entry_point):
                raise ValueError(f"entry_point {entry_point!r} is not a Python identifier; give the "
                                 "name of the function defined in main.py")
        elif not JS_IDENTIFIER_RE.match(entry_point):
            raise ValueError(f"entry_point {entry_point!r} is not a JavaScript identifier; give the "
                             "name of the exported function")
        return entry_point

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        _check_runtime_env(env, "env", "remove it (read it at run time instead)")
        return env

    @field_validator("build_env")
    @classmethod
    def _build_env(cls, build_env: dict[str, str]) -> dict[str, str]:
        _check_env_names(build_env, "build_env")
        derived = sorted(DERIVED_BUILD_ENV.keys() & build_env.keys())
        if derived:
            source = DERIVED_BUILD_ENV[derived[0]]
            raise ValueError(f"build_env sets {derived[0]}, which cf2run derives from the `{source}` "
                             f"field; remove it and set `{source}` instead")
        return build_env

    @model_validator(mode="after")
    def _no_credentials_in_build_env(self) -> FunctionSpec:
        unknown = sorted(set(self.build_env_plain) - self.build_env.keys())
        if unknown:
            raise ValueError(f"build_env_plain names {', '.join(unknown)}, which build_env does not "
                             "set; remove it from build_env_plain")
        for name, value in self.build_env.items():
            why = None if name in self.build_env_plain else looks_like_credential(name, value)
            if why:
                raise ValueError(
                    f"build_env {name} looks like a credential ({why}); build_env values are stored "
                    "in Prefect flow-run parameters and in the Cloud Build record, readable by "
                    "anyone who may read those. Put runtime secrets in secret_env; if this value "
                    f"may be stored in the open, add {name} to build_env_plain")
        return self

    @field_validator("memory")
    @classmethod
    def _memory(cls, memory: str) -> str:
        low, high = MEMORY_MIB_RANGE
        if not low <= memory_mib(memory) <= high:
            raise ValueError(f"memory {memory!r} is outside Cloud Run's range 128Mi..32Gi")
        return memory

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, cpu: str | None) -> str | None:
        if cpu is None:
            return None
        cores = cpu_cores(cpu)
        low, high = CPU_RANGE
        if not low <= cores <= high or (cores > 1 and cores not in WHOLE_CPUS_ABOVE_ONE):
            raise ValueError(f"cpu {cpu!r} is not a Cloud Run CPU limit; use a value from 0.08 to 1, "
                             "or 2, 4, 6 or 8")
        if cores < 1 and Decimal(str(cores)) != Decimal(str(cores)).quantize(Decimal("0.001")):
            raise ValueError(f"cpu {cpu!r}: below 1, Cloud Run takes cpu in steps of 0.001 (e.g. "
                             f"'{round(cores, 3):g}')")
        return cpu

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, email: str | None) -> str | None:
        return service_account_email(email, "service_account")

    @field_validator("invokers")
    @classmethod
    def _invokers(cls, invokers: list[str]) -> list[str]:
        for member in invokers:
            problem = invoker_problem(member)
            if problem:
                raise ValueError(problem)
        twice = sorted({member for member in invokers if invokers.count(member) > 1})
        if twice:
            raise ValueError(f"invokers lists {', '.join(twice)} more than once; keep one")
        return invokers

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) > 64:
            raise ValueError(f"{len(labels)} labels given; Google allows at most 64")
        for key, value in labels.items():
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"label key {key!r} is invalid; start with a lowercase letter and use "
                                 "lowercase letters, digits, '_' and '-', at most 63 characters")
            if not LABEL_VALUE_RE.match(value):
                raise ValueError(f"label {key!r} has invalid value {value!r}; use lowercase letters, "
                                 "digits, '_' and '-', at most 63 characters")
        return labels

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, secret_env: dict[str, SecretRef]) -> dict[str, SecretRef]:
        _check_runtime_env(secret_env, "secret_env", "use another name")
        return secret_env

    @field_validator("secret_volumes")
    @classmethod
    def _secret_volumes(cls, volumes: list[SecretVolume]) -> list[SecretVolume]:
        overlap = overlapping_mounts(volumes)
        if overlap:
            first, second = overlap
            what = "twice" if first == second else f"and {second} inside it"
            raise ValueError(f"secret_volumes mount {first} {what}; a mount path is shadowed entirely "
                             "by its secret: give each secret its own directory")
        return volumes

    @field_validator("vpc_connector")
    @classmethod
    def _vpc_connector(cls, connector: str | None) -> str | None:
        if connector is not None and not (CONNECTOR_RE.match(connector)
                                          or CONNECTOR_PATH_RE.match(connector)):
            raise ValueError(f"vpc_connector {connector!r} is not a connector name (lowercase letters, "
                             "digits and '-', 2 to 25 characters, starting with a letter) nor "
                             "projects/P/locations/REGION/connectors/NAME")
        return connector

    @model_validator(mode="after")
    def _settings_together(self) -> FunctionSpec:
        both = sorted(self.env.keys() & self.secret_env.keys())
        if both:
            raise ValueError(f"{', '.join(both)} is set both in env and in secret_env; keep one")
        if self.vpc_egress == "all-traffic" and self.vpc_connector is None:
            raise ValueError("vpc_egress 'all-traffic' needs vpc_connector; name the connector or "
                             "remove vpc_egress")
        self._check_trigger()
        self._check_parity()
        return self

    def _check_trigger(self) -> None:
        trigger = self.trigger
        if trigger is None:
            return
        if self.signature_type == "http":
            raise ValueError("an http function has no trigger; set signature_type: event or "
                             "cloudevent, or remove trigger")
        if self.signature_type == "event" and trigger.kind == "custom":
            raise ValueError(f"signature_type 'event' with trigger.event_type {trigger.event_type!r}: "
                             "the Functions Framework turns only known event types (Pub/Sub, Storage, "
                             "Firestore, Firebase) into legacy (data, context) events; use "
                             "signature_type: cloudevent for this one")
        if self.smoke.body is not None or self.smoke.json_body is not None:
            raise ValueError("smoke sets a body, but a function with a trigger is smoke-tested with "
                             "an event of that trigger; put the event's data in trigger.data")

    def _check_parity(self) -> None:
        old_function = self.parity.old_function
        if old_function and self.signature_type == "http" and self.trigger is None:
            raise ValueError(f"parity.old_function {old_function!r} is for event functions (called "
                             "through CallFunction); an http function is compared over HTTP: set "
                             "parity.old_url to its URL instead")

    @model_validator(mode="after")
    def _cloud_run_rules(self) -> FunctionSpec:
        if self.max_instances is not None and self.max_instances < self.min_instances:
            raise ValueError(f"max_instances ({self.max_instances}) is below min_instances "
                             f"({self.min_instances}); raise max_instances or lower min_instances")
        mib = memory_mib(self.memory)
        if self.cpu is None and mib > max(GEN1_CPU_BY_MEMORY_MIB):
            raise ValueError(f"memory {self.memory} is above gen1's 8Gi tier, so there is no gen1 CPU "
                             "for it; set cpu explicitly (at least 4 above 8Gi)")
        cores = self.cpu_cores
        shown = f"cpu {self.effective_cpu}" + ("" if self.cpu else f" (gen1's CPU for {self.memory})")
        if cores < 1 and self.concurrency > 1:
            raise ValueError(f"concurrency {self.concurrency} with {shown}: below 1 vCPU Cloud Run "
                             "serves one request at a time; set concurrency: 1 or cpu: '1'")
        for above_mib, needed in MIN_CPU_ABOVE_MEMORY_MIB:
            if mib > above_mib and cores < needed:
                raise ValueError(f"memory {self.memory} with {shown}: Cloud Run needs at least "
                                 f"{needed:g} vCPU above {above_mib}Mi; set cpu: '{needed:g}' or "
                                 "lower memory")
        least = next((need for at, need in MIN_MEMORY_FOR_CPU_MIB if cores >= at), 0)
        if mib < least:
            raise ValueError(f"cpu {self.effective_cpu} with memory {self.memory}: Cloud Run needs at "
                             f"least {least // 1024}Gi of memory for {cores:g} vCPU; set memory: "
                             f"{least // 1024}Gi or more, or lower cpu")
        return self

    @property
    def effective_cpu(self) -> str:
        """The CPU limit Cloud Run gets: `cpu`, else what gen1 gave this memory tier."""
        if self.cpu is not None:
            return self.cpu
        mib = memory_mib(self.memory)
        tiers = [tier for tier in GEN1_CPU_BY_MEMORY_MIB if tier >= mib] or [max(GEN1_CPU_BY_MEMORY_MIB)]
        tier = min(tiers)
        return GEN1_CPU_BY_MEMORY_MIB[tier]

    @property
    def cpu_cores(self) -> float:
        """`effective_cpu` as a number of vCPUs."""
        return cpu_cores(self.effective_cpu)

    @property
    def language(self) -> Literal["python", "nodejs"]:
        """Buildpack language (GOOGLE_RUNTIME): 'python' or 'nodejs'."""
        return "python" if self.runtime.startswith("python") else "nodejs"

    @property
    def runtime_version(self) -> str:
        """Language version for the buildpacks (GOOGLE_RUNTIME_VERSION), in the semver wildcard
        form Google's buildpack docs use: 'python312' -> '3.12.x', 'nodejs20' -> '20.x.x'."""
        digits = self.runtime.removeprefix(self.language)
        return f"{digits[0]}.{digits[1:]}.x" if self.language == "python" else f"{digits}.x.x"


class Target(_Model):
    """Where functions are migrated to: the embedded local cloud or a real GCP project."""

    kind: Literal["local", "gcp"] = Field(
        default="local", description="'local' = the embedded local cloud on 127.0.0.1; 'gcp' = Google Cloud.")
    project: str = Field(default="local-project", description="Google Cloud project id.",
                         json_schema_extra={"pattern": PROJECT_RE.pattern})
    region: str = Field(
        default="us-central1", description="Region for Cloud Build, Artifact Registry and Cloud Run.",
        json_schema_extra={"pattern": REGION_RE.pattern})
    repository: str = Field(
        default="cf2run", description="Artifact Registry Docker repository that receives the images.",
        json_schema_extra={"pattern": REPOSITORY_RE.pattern})
    staging_bucket: str | None = Field(
        default=None,
        description="Cloud Storage bucket for source archives; unset = PROJECT_cloudbuild as gcloud "
                    "uses (':' and '.' in the project become '_', 'google' becomes 'elgoog'), "
                    "refused when another project owns a bucket of that name.")
    builder: str = Field(
        default=DEFAULT_BUILDER,
        description="Buildpacks builder image, pinned to a tag or digest (e.g. "
                    "gcr.io/buildpacks/builder:google-22); ':latest' is refused.")
    build_timeout_s: int = Field(default=1200, ge=60, le=86400, description="Cloud Build timeout in seconds.")
    credentials_block: str | None = Field(
        default=None,
        description="Name of a prefect-gcp GcpCredentials block (key file, key info, or neither = ADC); "
                    "unset = Application Default Credentials (kind 'local': the local cloud's own key).")
    impersonate_service_account: str | None = Field(
        default=None,
        description="Service account to act as, like gcloud's --impersonate-service-account: the "
                    "credentials need roles/iam.serviceAccountTokenCreator on it.")
    localcloud_dir: Path | None = Field(
        default=None,
        description="For kind 'local': directory holding the local cloud's endpoints.json; unset = "
                    "$CF2RUN_LOCALCLOUD_DIR, else ~/.cf2run/localcloud.")

    @field_validator("project")
    @classmethod
    def _project(cls, project: str) -> str:
        if not PROJECT_RE.match(project):
            raise ValueError(f"{project!r} is not a Google Cloud project id; use 6 to 30 lowercase "
                             "letters, digits and '-', starting with a letter")
        return project

    @field_validator("region")
    @classmethod
    def _region(cls, region: str) -> str:
        if not REGION_RE.match(region):
            raise ValueError(f"{region!r} is not a Google Cloud region; write it like 'us-central1'")
        return region

    @field_validator("repository")
    @classmethod
    def _repository(cls, repository: str) -> str:
        if not REPOSITORY_RE.match(repository):
            raise ValueError(f"{repository!r} is not an Artifact Registry repository id; use lowercase "
                             "letters, digits and '-', starting with a letter")
        return repository

    @field_validator("impersonate_service_account")
    @classmethod
    def _service_account(cls, email: str | None) -> str | None:
        return service_account_email(email, "impersonate_service_account")

    @field_validator("staging_bucket")
    @classmethod
    def _staging_bucket(cls, bucket: str | None) -> str | None:
        if bucket is not None and not BUCKET_RE.match(bucket.removeprefix("gs://")):
            raise ValueError(f"{bucket!r} is not a Cloud Storage bucket name; use 3 to 63 lowercase "
                             "letters, digits, '-', '_' and '.' (without gs://)")
        return None if bucket is None else bucket.removeprefix("gs://")

    @field_validator("builder")
    @classmethod
    def _pinned_builder(cls, builder: str) -> str:
        last = builder.rsplit("/", 1)[-1]
        tag = last.partition(":")[2] if ":" in last else None
        if "@sha256:" not in builder and tag in (None, "latest"):
            raise ValueError(
                f"builder {builder!r} is not pinned; ':latest' has moved between stacks "
                "(google-22 -> google-24), so the same source could build differently. Use a fixed "
                f"tag such as {DEFAULT_BUILDER!r} or 'gcr.io/buildpacks/builder:google-24'")
        return builder

    @model_validator(mode="after")
    def _gcp_needs_project(self) -> Target:
        if self.kind == "gcp" and self.project == "local-project":
            raise ValueError("target kind 'gcp' needs your Google Cloud project; set target.project")
        return self

    @property
    def bucket(self) -> str:
        """Bucket for source archives: `staging_bucket`, else gcloud's ``PROJECT_cloudbuild``.

        gcloud's default (googlecloudsdk/command_lib/builds/staging_bucket_util.py,
        ``GetDefaultStagingBucket``): ':' and '.' become '_', and 'google', which bucket names
        cannot contain, becomes 'elgoog' (``google.com:proj`` -> ``elgoog_com_proj_cloudbuild``).
        """
        if self.staging_bucket:
            return self.staging_bucket
        safe_project = self.project.replace(":", "_").replace(".", "_").replace("google", "elgoog")
        return safe_project + "_cloudbuild"

    @property
    def registry_host(self) -> str:
        """Artifact Registry Docker host for the region."""
        return f"{self.region}-docker.pkg.dev"

    def image_repository(self, name: str) -> str:
        """``REGION-docker.pkg.dev/PROJECT/REPOSITORY/NAME`` (no tag)."""
        return f"{self.registry_host}/{self.project.replace(':', '/')}/{self.repository}/{name}"


#: A flow parameter `target` (the run forms): Target's fields, empty; those set replace the base
#: target's (cf2run/forms.py `override`), so a deployment's target stays unless a field is changed.
TargetChanges = Annotated[Target | None, WithJsonSchema(partial(
    Target, "Where to migrate to. Fields set here replace those of the target the run would use "
            "otherwise (a fleet: the manifest's; one function: the embedded local cloud); a "
            "deployment fixes its own in prefect.yaml (`parameters: target:`)."))]


class Manifest(_Model):
    """A fleet of functions and the target they migrate to (the YAML manifest)."""

    target: Target = Field(
        default_factory=lambda: Target(), description="Where the functions are migrated to.")
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Function fields applied to every function; a function's own value wins "
                    "(mappings such as env, labels and smoke are merged key by key).")
    functions: list[FunctionSpec] = Field(min_length=1, description="The functions to migrate.")

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        defaults = data.get("defaults") or {}
        functions = data.get("functions")
        if not isinstance(defaults, Mapping) or not isinstance(functions, list):
            return data
        known = {key: value for key, value in defaults.items() if key in _field_names(FunctionSpec)}
        merged = [_merge(known, item) if isinstance(item, Mapping) else item for item in functions]
        return {**data, "functions": merged}

    @field_validator("defaults")
    @classmethod
    def _known_defaults(cls, defaults: dict[str, Any]) -> dict[str, Any]:
        for key in defaults:
            if key == "name":
                raise ValueError("defaults cannot set `name`; each function needs its own name")
            if key not in _field_names(FunctionSpec):
                raise ValueError(f"unknown field {key!r} in defaults{_did_you_mean(key, FunctionSpec)}")
        return defaults

    @field_validator("functions")
    @classmethod
    def _builder_has_the_runtimes(cls, functions: list[FunctionSpec], info: ValidationInfo
                                  ) -> list[FunctionSpec]:
        target = info.data.get("target")
        if not isinstance(target, Target):
            return functions
        tag = target.builder.rsplit(":", 1)[-1]
        if tag not in NEWER_STACK_TAGS:
            return functions
        for index, spec in enumerate(functions):
            if spec.runtime in UBUNTU18_RUNTIMES:
                raise ValueError(
                    f"functions[{index}] ({spec.name}).runtime: {spec.runtime} is built only on "
                    f"Google's Ubuntu 18 stack, which target.builder {target.builder} ({tag}) does "
                    f"not have; set target.builder: {UBUNTU18_BUILDER} for it, or move the function "
                    "to a newer runtime (python310+, nodejs18+)")
        return functions

    @field_validator("functions")
    @classmethod
    def _unique_names(cls, functions: list[FunctionSpec]) -> list[FunctionSpec]:
        first: dict[str, int] = {}
        for index, spec in enumerate(functions):
            if spec.name in first:
                raise ValueError(f"function name {spec.name!r} is used by functions[{first[spec.name]}] "
                                 f"and functions[{index}]; service names must be unique, rename one")
            first[spec.name] = index
        return functions

    def function(self, name: str) -> FunctionSpec:
        """The function called `name` (SpecError if there is none)."""
        for spec in self.functions:
            if spec.name == name:
                return spec
        raise SpecError(f"no function named {name!r}", hint=f"known: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.functions]

    def select(self, only: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> Manifest:
        """The functions named in `only` (all when empty) minus those in `exclude`.

        A name that is not in the manifest is a SpecError (a typo would otherwise skip or
        migrate the wrong functions); selecting nothing is one too.
        """
        for option, names in (("only", only), ("exclude", exclude)):
            unknown = [name for name in names or () if name not in self.names]
            if unknown:
                raise SpecError(f"{option} names {', '.join(map(repr, unknown))}, not in the manifest",
                                hint=f"functions in the manifest: {', '.join(self.names)}")
        kept = [spec for spec in self.functions
                if (not only or spec.name in only) and spec.name not in (exclude or ())]
        if not kept:
            raise SpecError("only/exclude leave no function to migrate",
                            hint=f"functions in the manifest: {', '.join(self.names)}")
        return self.model_copy(update={"functions": kept})


# -- loading a manifest -----------------------------------------------------------------------


def load_manifest(path: Path, *, only: Sequence[str] | None = None,
                  target_kind: str | None = None) -> Manifest:
    """Read and validate a YAML manifest; every problem is a SpecError naming file, function and field.

    `only` keeps the named functions (all are validated); `target_kind` overrides `target.kind`.
    Relative `source` paths are resolved against the manifest's directory.
    """
    shown = str(path)
    data = _read_yaml(Path(path))
    if not isinstance(data, dict):
        raise SpecError(f"{shown}: the manifest must be a mapping with a `functions:` list "
                        "(and optionally `target:` and `defaults:`)")
    if target_kind is not None:
        if target_kind not in get_args(Target.model_fields["kind"].annotation):
            raise SpecError(f"--target {target_kind!r} is not a target kind; use 'local' or 'gcp'")
        target = data.get("target") or {}
        data = {**data, "target": {**target, "kind": target_kind} if isinstance(target, dict) else target}
    try:
        manifest = Manifest.model_validate(data, context={"base_dir": Path(path).resolve().parent})
    except ValidationError as error:
        raise SpecError(_explain(error, shown, data)) from None
    if only:
        unknown = [name for name in only if name not in manifest.names]
        if unknown:
            raise SpecError(f"{shown}: --only names {', '.join(map(repr, unknown))}, not in the manifest",
                            hint=f"functions in the manifest: {', '.join(manifest.names)}")
        manifest = manifest.model_copy(
            update={"functions": [spec for spec in manifest.functions if spec.name in only]})
    return manifest


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
            continue
        key = loader.construct_object(key_node)
        if isinstance(key, typing.Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {seen[key]})", key_node.start_mark)
        if isinstance(key, typing.Hashable):
            seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


#: Bigger than any real manifest (1000 functions take ~200 KB): refused before it is parsed.
MAX_MANIFEST_BYTES = 10 * 2**20
#: Values a manifest may hold once YAML aliases are expanded (1000 functions take ~50k): an alias
#: bomb ("billion laughs": aliases of aliases) stays a few lines of text and expands to billions.
MAX_MANIFEST_VALUES = 1_000_000


def _read_yaml(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: manifest not found", hint="give the path of a YAML manifest") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read the manifest: {error.strerror or error}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SpecError(f"{path}: the manifest is {len(raw) / 2**20:.1f} MiB; cf2run reads manifests of "
                        f"up to {MAX_MANIFEST_BYTES // 2**20} MiB",
                        hint="split the fleet into several manifests")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise SpecError(f"{path}: line {line}, column {column}: byte 0x{raw[error.start]:02x} is not "
                        "UTF-8 text", hint="save the manifest as UTF-8 (the encoding of YAML)") from None
    loader = _StrictLoader(text)  # a SafeLoader subclass: safe
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise SpecError(f"{path}: {where}: invalid YAML: {error.problem or error.context}",
                        hint="check the indentation and quoting around that line") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: invalid YAML: {error}") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """SpecError when the document, with every alias expanded, holds more than MAX_MANIFEST_VALUES
    values, or an alias inside its own anchor (a structure that contains itself). Counted on the
    parsed nodes, where an alias is the anchored node itself: nothing is expanded to count."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            mark = node.start_mark
            raise SpecError(f"{path}: line {mark.line + 1}: a YAML alias refers to the anchor it is "
                            "inside of, so the value would contain itself",
                            hint="write the value out, or anchor a value outside it")
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_MANIFEST_VALUES:
            raise SpecError(f"{path}: with its YAML aliases (*name) expanded, the manifest holds more "
                            f"than {MAX_MANIFEST_VALUES:,} values; aliases of aliases multiply "
                            "(an alias bomb), and cf2run refuses it before expanding it",
                            hint="use `defaults:` for shared settings instead of nested aliases")
        return total

    size(root)


def _explain(error: ValidationError, shown: str, data: Mapping[str, Any]) -> str:
    """One line per problem: ``FILE: functions[1] (orders-api).memory: what is wrong; what to do``."""
    lines = []
    for problem in error.errors():
        loc = problem["loc"]
        lines.append(f"{shown}: {_where(loc, data)}: {_message(problem)}")
    return "\n".join(lines)


def _where(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    text = ""
    functions = data.get("functions")
    for position, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
            if position == 1 and loc[0] == "functions" and isinstance(functions, list):
                item = functions[part] if part < len(functions) else None
                name = item.get("name") if isinstance(item, Mapping) else None
                if isinstance(name, str) and name:
                    text += f" ({name})"
        else:
            text += f".{part}" if text else str(part)
    return text or "manifest"


def _message(problem: Any) -> str:
    kind, loc, value = problem["type"], problem["loc"], problem.get("input")
    field = loc[-1] if loc else "?"
    if kind == "value_error":
        return str(problem["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        if tuple(loc) == ("functions",):
            return ("the manifest has no `functions:` list; add one with at least one function "
                    "(name, source, runtime, entry_point)")
        where = " (to the function or to defaults)" if len(loc) == 3 and loc[0] == "functions" else ""
        return f"required field `{field}` is missing; add it{where}"
    if kind == "extra_forbidden":
        model = _model_at(Manifest, loc[:-1])
        hint = _did_you_mean(str(field), model) if model else ""
        return f"unknown field {field!r}{hint}"
    if kind == "too_short" and tuple(loc) == ("functions",):
        return "`functions` is empty; list at least one function to migrate"
    if kind == "string_type" and isinstance(value, int | float | bool):
        return _quote_it(loc, value)
    if kind in ("model_type", "dict_type"):
        model = _model_at(Manifest, loc)
        names = [info.alias or name for name, info in model.model_fields.items()] if model else []
        fields = f" ({', '.join(names[:4])}, ...)" if names else ""
        return f"must be a mapping of fields{fields}, not {value!r}"
    if kind == "list_type":
        return f"must be a list (one `- item` per line), not {value!r}"
    message = str(problem["msg"])
    if isinstance(value, str | int | float | bool) or value is None:
        message += f" (got {value!r})"
    return message


def _quote_it(loc: Sequence[int | str], value: int | float | bool) -> str:
    """What to write when YAML read a number or a boolean where the manifest wants text."""
    field = str(loc[-1])
    if field == "memory" and not isinstance(value, bool):
        return (f"memory {value} has no unit; write it with one, e.g. '{value}Mi' (MiB) or '1Gi' "
                "(gen1's availableMemoryMb is in MiB)")
    shown = yaml.safe_dump(value).removesuffix("\n...\n").strip()
    kind = "a boolean" if isinstance(value, bool) else "a number"
    return (f"{field} must be text, but YAML reads {shown} as {kind}; quote it: "
            f'{field}: "{shown}"')


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class found by following `loc` (field names; list indexes skipped) from `model`."""
    current = model
    skip_key = False
    for part in loc:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        models = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(models) == 1:
            annotation = models[0]  # an optional model
        if typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) is dict:
            annotation, skip_key = typing.get_args(annotation)[1], True
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return current


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    return names | {field.alias for field in model.model_fields.values() if field.alias}


#: Names users write for a field, by meaning rather than spelling: gen1's own (gcloud's and the
#: Cloud Functions API's camelCase), and what other tools call it.
MEANT = {
    "expect_code": "expect_status", "status": "expect_status", "status_code": "expect_status",
    "expected_status": "expect_status", "code": "expect_status", "expect": "expect_body",
    "body_contains": "expect_body", "entrypoint": "entry_point", "entryPoint": "entry_point",
    "function_target": "entry_point", "target": "entry_point", "availableMemoryMb": "memory",
    "memory_mb": "memory", "timeout": "timeout_s", "environmentVariables": "env",
    "environment": "env", "env_vars": "env", "buildEnvironmentVariables": "build_env",
    "build_env_vars": "build_env", "maxInstances": "max_instances", "minInstances": "min_instances",
    "serviceAccountEmail": "service_account", "vpcConnector": "vpc_connector",
    "vpcConnectorEgressSettings": "vpc_egress", "ingressSettings": "ingress",
    "secretEnvironmentVariables": "secret_env", "secretVolumes": "secret_volumes",
    "eventTrigger": "trigger", "public": "allow_unauthenticated",
    "allow-unauthenticated": "allow_unauthenticated", "unauthenticated": "allow_unauthenticated",
}


def _did_you_mean(key: str, model: type[BaseModel]) -> str:
    known = _field_names(model)
    meant = MEANT.get(key)
    if meant in known:
        return f"; did you mean {meant!r}?"
    close = difflib.get_close_matches(key, sorted(known), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known fields: {', '.join(sorted(known))}"


def _merge(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """`own` over `defaults`; where both are mappings, merged key by key (own wins)."""
    merged = dict(defaults)
    for key, value in own.items():
        base = merged.get(key)
        merged[key] = _merge(base, value) if isinstance(base, Mapping) and isinstance(value, Mapping) \
            else value
    return merged

