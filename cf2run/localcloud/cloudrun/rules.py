"""What Cloud Run v2 refuses, and why, as pure functions over the request messages.

Every check raises `RpcError` with the status Google answers and a message in Google's own
shape, ``Violation in <Request>.<field path>: <what is wrong>``, so a caller can tell which
field of its request to fix. The texts quote what Cloud Run answers where it is known:

- service id: pulumi/pulumi-gcp#3167 ("only lowercase, digits, and hyphens; must begin with
  letter, and cannot end with hyphen; must be less than 50 characters."). REFERENCE §4 says
  "letters"; the API refuses upper case, so this does too.
- revision name: pipe-cd/pipecd#5688 (same rule, fewer than 64 characters).
- reserved env names: "The following reserved env names were provided: PORT. These values are
  automatically set by the system." (REFERENCE §4; seen in many deploy logs).
- system annotations: GoogleCloudPlatform/avocano#238 ("Violation in
  CreateServiceRequest.service.template.annotations[autoscaling.knative.dev/maxScale]: system
  annotations are not supported in Cloud Run API v2.").
- cpu/concurrency: nearform/slack-knowledgebase-chatgpt-responder#980 ("Invalid value specified
  for cpu. Total cpu < 1 is not supported with concurrency > 1."); cpu below 1 with CPU always
  allocated (v2: `cpu_idle` false): world-federation-of-advertisers/cross-media-measurement#3832
  ("Invalid value specified for cpu. Total cpu < 1 is not supported with cpu always allocated
  (unthrottled)."); memory ranges per cpu (4 vCPU needs 2 GiB, 6 and 8 need 4 GiB; at most
  4, 8, 16, 24, 32 GiB for 1, 2, 4, 6, 8): https://cloud.google.com/run/docs/configuring/
  services/cpu and .../services/memory-limits; the text: google/osv.dev#2800 ("Invalid value
  specified for container memory. For 1.0 CPU, memory must be between 128Mi and 4Gi
  inclusive.\nFor more troubleshooting guidance, see https://cloud.google.com/run/docs/
  configuring/memory-limits"; GoogleCloudPlatform/community#2105 has the older wording).
- max instances above the region's quota: firebase/friendlyeats-web#291 (a v2 CreateService's
  audit log: INVALID_ARGUMENT "template.containers.resources.limits.cpu: Invalid value
  specified for cpu. For the specified value, maxScale may not exceed 10.\nConsider running
  ..."), googlecodelabs/feedback#1210 (the memory form). The bound is the regional CPU quota
  / the cpu limit and the memory quota / the memory limit
  (https://cloud.google.com/run/docs/configuring/max-instances-limits); an unset
  max_instance_count is Cloud Run's default 100 (run_v2 `RevisionScaling` docs), which counts
  too (nitrictech/nitric#547: refused with the default configuration).
- scaling: goblet/goblet#287 ("...scaling.max_instance_count: must be greater or equal than
  min_instance_count.").
- traffic tags: firebase/firebase-tools#6137 ("traffic tag 'x' and service name 'y' together
  are too long. Combined traffic tag and service name cannot exceed 46 characters.").
- missing revision in traffic: terraform-google-modules/terraform-docs-samples#269 ("Revision
  'x' does not exist or is deleted. Update all traffic to route to currently available
  revisions.").
- revision reused with another template: firebase/firebase-tools#10148 (409 ALREADY_EXISTS,
  "Revision named 'x' with different configuration already exists."; gcloud prints it as
  "ALREADY_EXISTS: Revision named ..."; googleapis/google-cloud-python#11870, #14259). The
  message is the whole status text, without the "Violation in" prefix. What "different" means
  follows Knative Serving, which Cloud Run implements (knative/serving
  pkg/apis/serving/v1/revision_validation.go `VerifyNameChange`, and
  pkg/reconciler/configuration/configuration.go `CheckNameAvailability`): the name the service
  already has must come with the very same template (labels and annotations included); the name
  of an older revision must come with the same revision spec (its labels and annotations may
  differ: "the user may have annotated or labeled the Revision"), and is then reused, no new
  revision made (hashicorp/terraform-provider-google#9438: "with a different spec than the
  existing revision ... this is indeed a 409/conflict").
- etag mismatch: ABORTED, as AIP-154 requires since aip-dev/google.aip.dev#705 (409 Conflict).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation

import grpc
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from cf2run.localcloud.frontend import fieldbehavior
from cf2run.localcloud.frontend.grpcapi import RpcError, invalid
from cf2run.manifest import principals

RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
SYSTEM_NAMESPACES = ("run.googleapis.com", "cloud.googleapis.com", "serving.knative.dev",
                     "autoscaling.knative.dev")
MAX_TAG_AND_SERVICE = 46
DEFAULT_CONCURRENCY = 80
MAX_CONCURRENCY = 1000
DEFAULT_TIMEOUT = timedelta(seconds=300)
MAX_TIMEOUT = timedelta(seconds=3600)
DEFAULT_CPU = "1000m"
DEFAULT_MEMORY = "512Mi"
DEFAULT_PORT = 8080

_DNS_LABEL = r"[a-z](?:[a-z0-9-]*[a-z0-9])?"
_SERVICE_ID = re.compile(rf"^{_DNS_LABEL}$")
_PARENT = re.compile(r"^projects/([a-z0-9][a-z0-9.:-]*)/locations/([a-z0-9-]+)$")
_SERVICE_NAME = re.compile(r"^(projects/[^/]+/locations/[^/]+)/services/([^/]+)$")
_REVISION_NAME = re.compile(r"^(projects/[^/]+/locations/[^/]+/services/[^/]+)/revisions/([^/]+)$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_ENV_NAME = re.compile(r"^[^=]+$")
_SECRET = re.compile(r"^(?:projects/[^/]+/secrets/)?[A-Za-z0-9_-]{1,255}$")
_SECRET_VERSION = re.compile(r"^(?:latest|[1-9][0-9]*|[A-Za-z][A-Za-z0-9_-]{0,62})$")
_CONNECTOR = re.compile(r"^projects/[^/]+/locations/[^/]+/connectors/[^/]+$")

_MEMORY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_MI = 2**20
_GI = 2**30
#: Memory a cpu value allows (Cloud Run "Configure CPU limits"): (least cpu, min, max memory).
_MEMORY_FOR_CPU = (
    (Decimal("8"), 4 * _GI, 32 * _GI),
    (Decimal("6"), 4 * _GI, 24 * _GI),
    (Decimal("4"), 2 * _GI, 16 * _GI),
    (Decimal("2"), 128 * _MI, 8 * _GI),
    (Decimal("1"), 128 * _MI, 4 * _GI),
    (Decimal("0.5"), 128 * _MI, 1 * _GI),
    (Decimal("0.08"), 128 * _MI, 512 * _MI),
)
_WHOLE_CPUS = (Decimal(1), Decimal(2), Decimal(4), Decimal(6), Decimal(8))
#: Cloud Run's max instances when `scaling.max_instance_count` is unset (run_v2 RevisionScaling).
DEFAULT_MAX_INSTANCES = 100
_QUOTA_ADVICE = ("Consider running your workload in a region with greater capacity, decreasing your "
                 "requested {per_instance}, or requesting an increase in quota for this region if "
                 "you are seeing sustained usage near this limit, see "
                 "https://cloud.google.com/run/quotas. Your project may gain access to further "
                 "scaling by adding billing information to your account.")


def violation(field: str, description: str,
              code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> RpcError:
    """The error Cloud Run answers for one field: ``Violation in FIELD: DESCRIPTION``."""
    return RpcError(code, f"Violation in {field}: {description}")


# -- names ---------------------------------------------------------------------------------


def check_parent(parent: str, field: str) -> tuple[str, str]:
    """``projects/P/locations/L`` -> (P, L)."""
    match = _PARENT.match(parent)
    if match is None or match.group(2) == "-":
        raise violation(field, f"{parent!r} is not of the form projects/{{project}}/locations/"
                               "{location} (a Google Cloud region; '-' is not accepted)")
    return match.group(1), match.group(2)


def check_service_id(service_id: str, field: str) -> None:
    if not service_id or len(service_id) >= 50 or not _SERVICE_ID.match(service_id):
        raise violation(field, "only lowercase, digits, and hyphens; must begin with letter, and "
                               f"cannot end with hyphen; must be less than 50 characters (got "
                               f"{service_id!r}).")


def split_service_name(name: str, field: str) -> tuple[str, str]:
    """``projects/P/locations/L/services/S`` -> (``projects/P/locations/L``, S)."""
    match = _SERVICE_NAME.match(name)
    if match is None:
        raise violation(field, f"{name!r} is not of the form "
                               "projects/{project}/locations/{location}/services/{service}")
    check_parent(match.group(1), field)
    return match.group(1), match.group(2)


def split_revision_name(name: str, field: str) -> tuple[str, str]:
    """``.../services/S/revisions/R`` -> (service name, R)."""
    match = _REVISION_NAME.match(name)
    if match is None:
        raise violation(field, f"{name!r} is not of the form projects/{{project}}/locations/"
                               "{location}/services/{service}/revisions/{revision}")
    return match.group(1), match.group(2)


def check_revision_id(revision: str, service_id: str, field: str) -> None:
    if len(revision) >= 64 or not _SERVICE_ID.match(revision):
        raise violation(field, "only lowercase, digits, and hyphens; must begin with letter, and "
                               f"may not end with hyphen; must be less than 64 characters (got "
                               f"{revision!r}).")
    if not revision.startswith(f"{service_id}-") or revision == f"{service_id}-":
        raise violation(field, f"revision name {revision!r} must be prefixed by the name of the "
                               f"enclosing Service with a trailing '-' ({service_id}-...)")


# -- metadata ------------------------------------------------------------------------------


def _is_system_key(key: str) -> bool:
    prefix = key.split("/", 1)[0] if "/" in key else ""
    return any(prefix == ns or prefix.endswith(f".{ns}") for ns in SYSTEM_NAMESPACES)


def check_annotations(annotations: dict[str, str], field: str) -> None:
    for key in annotations:
        if _is_system_key(key):
            raise violation(f"{field}[{key}]",
                            "system annotations are not supported in Cloud Run API v2.")


def check_labels(labels: dict[str, str], field: str) -> None:
    for key, value in labels.items():
        if _is_system_key(key):
            raise violation(f"{field}[{key}]",
                            "system labels are not supported in Cloud Run API v2.")
        if not _LABEL_KEY.match(key):
            raise violation(f"{field}[{key}]", "label keys must start with a lowercase letter "
                                               "and contain only lowercase letters, digits, '_' "
                                               "and '-', at most 63 characters.")
        if not _LABEL_VALUE.match(value):
            raise violation(f"{field}[{key}]", "label values contain only lowercase letters, "
                                               "digits, '_' and '-', at most 63 characters.")


# -- resources -----------------------------------------------------------------------------


def parse_cpu(quantity: str, field: str) -> Decimal:
    """A Kubernetes cpu quantity (``1``, ``0.5``, ``500m``) in vCPU, within Cloud Run's range."""
    match = _QUANTITY.match(quantity.strip())
    if match is None or match.group(2) not in (None, "m"):
        raise violation(field, f"Invalid value specified for cpu: {quantity!r} is not a cpu "
                               "quantity such as '1', '0.5' or '500m'.")
    cpu = Decimal(match.group(1)) / (1000 if match.group(2) == "m" else 1)
    if cpu < Decimal("0.08") or cpu > 8:
        raise violation(field, f"Invalid value specified for cpu: {quantity}. cpu must be between "
                               "0.08 and 8.")
    if cpu > 1 and cpu not in _WHOLE_CPUS:
        raise violation(field, f"Invalid value specified for cpu: {quantity}. Above 1, cpu must "
                               "be one of 1, 2, 4, 6, 8.")
    if cpu < 1 and cpu != cpu.quantize(Decimal("0.001")):
        raise violation(field, f"Invalid value specified for cpu: {quantity}. Below 1, cpu is set "
                               "in increments of 0.001.")
    return cpu


def parse_memory(quantity: str, field: str) -> int:
    """A Kubernetes memory quantity (``512Mi``, ``1Gi``, ``1G``) in bytes."""
    match = _QUANTITY.match(quantity.strip())
    if match is None or match.group(2) == "m":
        raise violation(field, f"Invalid value specified for memory: {quantity!r} is not a memory "
                               "quantity such as '512Mi' or '2Gi'.")
    try:
        return int(Decimal(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""])
    except InvalidOperation:  # pragma: no cover - the regex only lets numbers through
        raise violation(field, f"Invalid value specified for memory: {quantity!r}.") from None


def _memory_text(amount: int) -> str:
    return f"{amount // _GI}Gi" if amount % _GI == 0 else f"{amount // _MI}Mi"


def _cpu_text(cpu: Decimal) -> str:
    """A cpu as Google prints it in messages: ``1.0``, ``4.0``, ``0.5``."""
    return str(float(cpu))


def check_resources(limits: dict[str, str], concurrency: int, field: str,
                    cpu_idle: bool = True) -> None:
    """cpu and memory limits, and what they allow together, with `concurrency` and with CPU
    always allocated (`cpu_idle` false)."""
    for key in limits:
        if key not in ("cpu", "memory", "nvidia.com/gpu"):
            raise violation(f"{field}[{key}]", "only 'cpu', 'memory' and 'nvidia.com/gpu' "
                                               "limits can be set.")
    cpu = parse_cpu(limits.get("cpu", DEFAULT_CPU), f"{field}[cpu]")
    memory = parse_memory(limits.get("memory", DEFAULT_MEMORY), f"{field}[memory]")
    if cpu < 1 and concurrency > 1:
        raise violation(f"{field}[cpu]", "Invalid value specified for cpu. Total cpu < 1 is not "
                                         f"supported with concurrency > 1 (concurrency is "
                                         f"{concurrency}; set max_instance_request_concurrency "
                                         "to 1 or cpu to at least 1).")
    if cpu < 1 and not cpu_idle:
        raise violation(f"{field}[cpu]", "Invalid value specified for cpu. Total cpu < 1 is not "
                                         "supported with cpu always allocated (unthrottled).")
    _, low, high = next(row for row in _MEMORY_FOR_CPU if cpu >= row[0])
    if not low <= memory <= high:
        raise violation(f"{field}[memory]",
                        f"Invalid value specified for container memory. For {_cpu_text(cpu)} CPU, "
                        f"memory must be between {_memory_text(low)} and {_memory_text(high)} "
                        "inclusive.\nFor more troubleshooting guidance, see "
                        "https://cloud.google.com/run/docs/configuring/memory-limits")


def check_instance_quota(template: run_v2.RevisionTemplate, cpu_quota: Decimal,
                         memory_quota: int) -> None:
    """Max instances within what the region's quotas allow for one instance's cpu and memory.

    `template` has passed `check_template`; `cpu_quota` in vCPU, `memory_quota` in bytes. The
    message is Google's, field path included, as a v2 CreateService answers it.
    """
    wanted = template.scaling.max_instance_count or DEFAULT_MAX_INSTANCES
    limits = template.containers[0].resources.limits
    per_instance = (("cpu", cpu_quota / parse_cpu(limits.get("cpu", DEFAULT_CPU), "cpu"),
                     "cpu-per-instance"),
                    ("memory", Decimal(memory_quota) / parse_memory(limits.get("memory", DEFAULT_MEMORY),
                                                                    "memory"),
                     "memory-per-instances"))
    for resource, allowed, what in per_instance:
        most = int(allowed)
        if wanted > most:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"template.containers.resources.limits.{resource}: Invalid value "
                           f"specified for {resource}. For the specified value, maxScale may not "
                           f"exceed {most}.\n" + _QUOTA_ADVICE.format(per_instance=what))


# -- the revision template -----------------------------------------------------------------


def check_container(container: run_v2.Container, concurrency: int, field: str,
                    volumes: frozenset[str] = frozenset()) -> None:
    """One container; `volumes`: the names of the template's volumes its mounts may use."""
    if not container.image:
        raise violation(f"{field}.image", "an image is required (a URL such as "
                                          "REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG).")
    for i, env in enumerate(container.env):
        where = f"{field}.env[{i}].name"
        if env.name in RESERVED_ENV:
            raise violation(where, f"The following reserved env names were provided: "
                                   f"{env.name}. These values are automatically set by the "
                                   "system.")
        if not env.name or not _ENV_NAME.match(env.name):
            raise violation(where, f"{env.name!r} is not a valid environment variable name "
                                   "(non-empty, no '=').")
        if "value_source" in env:
            if env.value:
                raise violation(f"{field}.env[{i}]", "value and value_source cannot both be set.")
            check_secret_ref(env.value_source.secret_key_ref.secret,
                             env.value_source.secret_key_ref.version,
                             f"{field}.env[{i}].value_source.secret_key_ref")
    mounts: set[str] = set()
    for i, mount in enumerate(container.volume_mounts):
        if mount.name not in volumes:
            raise violation(f"{field}.volume_mounts[{i}].name",
                            f"volume {mount.name!r} is not one of the template's volumes.")
        if not mount.mount_path.startswith("/") or mount.mount_path in mounts:
            raise violation(f"{field}.volume_mounts[{i}].mount_path",
                            f"{mount.mount_path!r} must be an absolute path, used once.")
        mounts.add(mount.mount_path)
    for i, port in enumerate(container.ports):
        if not 0 <= port.container_port <= 65535:
            raise violation(f"{field}.ports[{i}].container_port",
                            "must be between 1 and 65535.")
    check_resources(dict(container.resources.limits), concurrency, f"{field}.resources.limits",
                    cpu_idle=container.resources.cpu_idle or "resources" not in container)


def check_template(template: run_v2.RevisionTemplate, service_id: str, field: str) -> None:
    """Everything Cloud Run checks in a revision template (`field`: ``...service.template``)."""
    if template.revision:
        check_revision_id(template.revision, service_id, f"{field}.revision")
    check_labels(dict(template.labels), f"{field}.labels")
    check_annotations(dict(template.annotations), f"{field}.annotations")
    concurrency = template.max_instance_request_concurrency
    if not 0 <= concurrency <= MAX_CONCURRENCY:
        raise violation(f"{field}.max_instance_request_concurrency",
                        f"must be between 1 and {MAX_CONCURRENCY} (got {concurrency}).")
    if "timeout" in template:
        timeout = template.timeout
        if not timedelta(seconds=1) <= timeout <= MAX_TIMEOUT:
            raise violation(f"{field}.timeout", f"must be between 1s and 3600s (got "
                                                f"{timeout.total_seconds():g}s).")
    scaling = template.scaling
    if scaling.min_instance_count < 0 or scaling.max_instance_count < 0:
        raise violation(f"{field}.scaling", "instance counts cannot be negative.")
    if scaling.max_instance_count and scaling.min_instance_count > scaling.max_instance_count:
        raise violation(f"{field}.scaling.max_instance_count",
                        "must be greater or equal than min_instance_count.")
    volumes = check_volumes(list(template.volumes), f"{field}.volumes")
    if "vpc_access" in template:
        check_vpc_access(template.vpc_access, f"{field}.vpc_access")
    if not template.containers:
        raise violation(f"{field}.containers", "exactly one container is required.")
    if len(template.containers) > 1:
        raise violation(f"{field}.containers", "the local cloud runs one container per revision "
                                               "(no sidecars); give exactly one container.")
    check_container(template.containers[0], concurrency or DEFAULT_CONCURRENCY,
                    f"{field}.containers[0]", volumes)


def check_secret_ref(secret: str, version: str, field: str) -> None:
    """A Secret Manager reference: ``SECRET`` or ``projects/P/secrets/SECRET``, and a version."""
    if not _SECRET.match(secret):
        raise violation(f"{field}.secret", f"{secret!r} is not a secret name (SECRET, or "
                                           "projects/PROJECT/secrets/SECRET).")
    if version and not _SECRET_VERSION.match(version):
        raise violation(f"{field}.version", f"{version!r} is not 'latest', a version number or "
                                            "an alias.")


def check_volumes(volumes: list[run_v2.Volume], field: str) -> frozenset[str]:
    """Volume names are unique DNS labels; secret volumes name a secret. Returns the names."""
    names: set[str] = set()
    for i, volume in enumerate(volumes):
        if not _SERVICE_ID.match(volume.name) or volume.name in names:
            raise violation(f"{field}[{i}].name", f"{volume.name!r} must be a unique name of "
                                                  "lowercase letters, digits and hyphens.")
        names.add(volume.name)
        if "secret" in volume:
            check_secret_ref(volume.secret.secret, "", f"{field}[{i}].secret")
            for j, item in enumerate(volume.secret.items):
                check_secret_ref(volume.secret.secret, item.version, f"{field}[{i}].secret.items[{j}]")
                if not item.path or item.path.startswith("/") or ".." in item.path.split("/"):
                    raise violation(f"{field}[{i}].secret.items[{j}].path",
                                    f"{item.path!r} must be a relative path without '..'.")
    return frozenset(names)


def check_vpc_access(vpc: run_v2.VpcAccess, field: str) -> None:
    if vpc.connector and not _CONNECTOR.match(vpc.connector):
        raise violation(f"{field}.connector", f"{vpc.connector!r} is not of the form "
                                              "projects/{project}/locations/{location}/connectors/"
                                              "{connector}.")
    if vpc.egress and not (vpc.connector or vpc.network_interfaces):
        raise violation(f"{field}.egress", "egress needs a connector or network interfaces.")


def with_defaults(template: run_v2.RevisionTemplate) -> run_v2.RevisionTemplate:
    """The template as Cloud Run stores it: defaults filled, so equal templates compare equal."""
    filled = run_v2.RevisionTemplate(template)
    if not filled.max_instance_request_concurrency:
        filled.max_instance_request_concurrency = DEFAULT_CONCURRENCY
    if "timeout" not in filled:
        filled.timeout = DEFAULT_TIMEOUT
    for container in filled.containers:
        limits = container.resources.limits
        limits.setdefault("cpu", DEFAULT_CPU)
        limits.setdefault("memory", DEFAULT_MEMORY)
        if not container.ports:
            container.ports.append(run_v2.ContainerPort(name="http1", container_port=DEFAULT_PORT))
    return filled


def same_configuration(a: run_v2.RevisionTemplate, b: run_v2.RevisionTemplate, *,
                       metadata: bool = True) -> bool:
    """Whether two templates describe the same revision (ignoring its name); with `metadata`
    False, whatever their labels and annotations (Knative's revision *spec* equality)."""
    left, right = with_defaults(a), with_defaults(b)
    left.revision = right.revision = ""
    if not metadata:
        for side in (left, right):
            side.labels.clear()
            side.annotations.clear()
    return bool(left == right)  # message equality: map fields compare as maps, in any order


def revision_name_taken(revision: str) -> RpcError:
    """What Cloud Run answers for a revision name reused with another configuration."""
    return RpcError(grpc.StatusCode.ALREADY_EXISTS,
                    f"Revision named '{revision}' with different configuration already exists.")


# -- traffic -------------------------------------------------------------------------------

LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


@dataclass(frozen=True)
class Target:
    """One traffic target, resolved: `revision` None means the latest ready revision."""

    revision: str | None
    percent: int
    tag: str


def check_traffic(traffic: list[run_v2.TrafficTarget], service_id: str,
                  revisions: set[str], field: str) -> list[Target]:
    """Validate `traffic` against the service's `revisions` (short names); default 100% LATEST."""
    if not traffic:
        return [Target(None, 100, "")]
    targets: list[Target] = []
    tags: set[str] = set()
    for i, target in enumerate(traffic):
        where = f"{field}[{i}]"
        latest = target.type_ == LATEST or (target.type_ != REVISION and not target.revision)
        if latest and target.revision:
            raise violation(f"{where}.revision", "must be empty when type is "
                                                 "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST.")
        if not latest and target.revision not in revisions:
            raise violation(f"{where}.revision", f"Revision '{target.revision}' does not exist or "
                                                 "is deleted. Update all traffic to route to "
                                                 "currently available revisions.")
        if not 0 <= target.percent <= 100:
            raise violation(f"{where}.percent", f"must be between 0 and 100 (got {target.percent}).")
        if target.tag:
            check_tag(target.tag, service_id, f"{where}.tag")
            if target.tag in tags:
                raise violation(f"{where}.tag", f"tag {target.tag!r} is used more than once.")
            tags.add(target.tag)
        targets.append(Target(None if latest else target.revision, target.percent, target.tag))
    total = sum(t.percent for t in targets)
    if total != 100:
        raise violation(field, f"traffic percents must add up to 100 (they add up to {total}).")
    return targets


def check_tag(tag: str, service_id: str, field: str) -> None:
    if not _SERVICE_ID.match(tag):
        raise violation(field, f"traffic tag {tag!r} must be lowercase letters, digits and "
                               "hyphens, begin with a letter and not end with a hyphen.")
    if len(tag) + len(service_id) > MAX_TAG_AND_SERVICE:
        raise violation(field, f"traffic tag '{tag}' and service name '{service_id}' together "
                               f"are too long. Combined traffic tag and service name cannot "
                               f"exceed {MAX_TAG_AND_SERVICE} characters.")


# -- the whole service ---------------------------------------------------------------------


def check_service(service: run_v2.Service, service_id: str, revisions: set[str],
                  field: str) -> list[Target]:
    """Validate a Service of a Create/Update request; returns its resolved traffic targets.

    `revisions` are the short names of the service's existing revisions; the template's own
    revision name counts as existing, since the deploy creates it.
    """
    check_labels(dict(service.labels), f"{field}.labels")
    check_annotations(dict(service.annotations), f"{field}.annotations")
    check_service_settings(service, field)
    if "template" not in service:
        raise violation(f"{field}.template", "a revision template is required.")
    check_template(service.template, service_id, f"{field}.template")
    known = revisions | ({service.template.revision} if service.template.revision else set())
    return check_traffic(list(service.traffic), service_id, known, f"{field}.traffic")


_BINAUTHZ_POLICY = re.compile(r"^projects/[^/]+/platforms/cloudRun/[^/]+$")
MANUAL = run_v2.ServiceScaling.ScalingMode.MANUAL


def check_service_settings(service: run_v2.Service, field: str) -> None:
    """The service-level settings, as their proto documents them (google/cloud/run/v2
    vendor_settings.proto: BinaryAuthorization, ServiceScaling)."""
    if "binary_authorization" in service:
        binauthz = service.binary_authorization
        if binauthz.policy and not _BINAUTHZ_POLICY.match(binauthz.policy):
            raise violation(f"{field}.binary_authorization.policy",
                            f"{binauthz.policy!r} is not of the form "
                            "projects/{project}/platforms/cloudRun/{policy-name}.")
        if binauthz.breakglass_justification and not (binauthz.use_default or binauthz.policy):
            raise violation(f"{field}.binary_authorization.breakglass_justification",
                            "must be empty when use_default is false.")
    scaling = service.scaling
    if min(scaling.min_instance_count, scaling.max_instance_count,
           scaling.manual_instance_count) < 0:
        raise violation(f"{field}.scaling", "instance counts cannot be negative.")
    if scaling.max_instance_count and scaling.min_instance_count > scaling.max_instance_count:
        raise violation(f"{field}.scaling.max_instance_count",
                        "must be greater or equal than min_instance_count.")
    if "manual_instance_count" in scaling and scaling.scaling_mode != MANUAL:
        raise violation(f"{field}.scaling.manual_instance_count",
                        "can only be set when scaling_mode is MANUAL.")



def check_immutable(given: run_v2.Service, current: run_v2.Service, field: str) -> None:
    """An update may not change a field annotated IMMUTABLE (AIP-203: INVALID_ARGUMENT); the
    words are Knative's ("field is immutable"), whose API Cloud Run's descends from. None of
    Service's fields is IMMUTABLE in googleapis today: this holds for those that become so."""
    changed = fieldbehavior.changed_immutable(given, current)
    if changed is not None:
        raise violation(f"{field}.{changed}", "field is immutable.")


def check_etag(given: str, current: str, what: str) -> None:
    """An etag that is given must be the current one (ABORTED otherwise, per AIP-154)."""
    if given and given != current:
        raise RpcError(grpc.StatusCode.ABORTED,
                       f"etag {given} does not match the current etag {current} of {what}: it "
                       "changed since you read it; read it again and retry.")


# -- IAM -----------------------------------------------------------------------------------

#: Google's answer to a member of no form IAM knows (gcloud's output quoted in
#: GoogleCloudPlatform/oss-test-infra#2440 and in hashicorp/terraform-provider-google reports; its
#: BadRequest detail names the field ``policy.bindings.member``).
MEMBER_FORM = 'Policy members must be of the form "<type>:<value>".'
#: What IAM answers for an account it cannot find, which a value that is no email never is
#: (gcloud's "INVALID_ARGUMENT: Invalid service account (EMAIL)." for an empty or line-broken
#: email, "User EMAIL does not exist.", "Group EMAIL does not exist.", quoted in public runbooks).
UNKNOWN_ACCOUNT = {"serviceAccount": "Invalid service account ({}).",
                   "user": "User {} does not exist.", "group": "Group {} does not exist."}


POLICY_VERSIONS = (0, 1, 3)
CONDITIONS_VERSION = 3
WITHCOND = "_withcond_"


def check_policy(policy: policy_pb2.Policy, field: str) -> None:
    """Roles are ``roles/...`` and members IAM principals (``allUsers``, ``user:EMAIL``, ...:
    `check_member`);
    a policy with conditions is version 3, and a role read at a lower version (``..._withcond_
    HASH``) is no role (google/iam/v1/policy.proto `version`: "Any operation that affects
    conditional role bindings must specify version 3"; cloud.google.com/iam/docs/policies#versions).
    """
    if policy.version not in POLICY_VERSIONS:
        raise violation(f"{field}.version", f"{policy.version} is not a policy version: valid "
                                            "values are 0, 1, and 3.")
    conditional = any(binding.HasField("condition") for binding in policy.bindings)
    if conditional and policy.version < CONDITIONS_VERSION:
        raise violation(f"{field}.version", "a policy with conditional role bindings must be "
                                            "version 3 (read it with requested_policy_version=3, "
                                            "keep its version when you set it).")
    for i, binding in enumerate(policy.bindings):
        if not binding.role.startswith(("roles/", "projects/", "organizations/")) \
                or WITHCOND in binding.role:
            raise violation(f"{field}.bindings[{i}].role", f"{binding.role!r} is not a role "
                                                          "(such as 'roles/run.invoker'); a "
                                                          f"'{WITHCOND}' role is a conditional "
                                                          "binding read at a version below 3.")
        for member in binding.members:
            check_member(member)


def check_member(member: str) -> None:
    """A member IAM takes (cf2run/manifest/principals.py has the forms), else INVALID_ARGUMENT in IAM's
    words. A malformed ``domain:`` or principal URI is refused with the form's message: Google's
    own words for those are not known here."""
    parsed = principals.parse(member)
    if parsed is None:
        raise invalid(MEMBER_FORM)
    if not principals.well_formed(parsed):
        answer = UNKNOWN_ACCOUNT.get(parsed.kind)
        raise invalid(answer.format(parsed.value) if answer else MEMBER_FORM)


def policy_at_version(policy: policy_pb2.Policy, requested: int, field: str) -> policy_pb2.Policy:
    """`policy` as GetIamPolicy answers it for `requested_policy_version` (google/iam/v1/
    options.proto; cloud.google.com/iam/docs/policies#versions): version 3 only when it has
    conditional bindings and 3 was asked for; read at a lower version, each conditional binding
    comes without its condition and with its role renamed ``ROLE_withcond_HASH``."""
    if requested not in POLICY_VERSIONS:
        raise violation(field, f"{requested} is not a policy version: valid values are 0, 1, "
                               "and 3.")
    answer = policy_pb2.Policy()
    answer.CopyFrom(policy)
    conditional = any(binding.HasField("condition") for binding in answer.bindings)
    answer.version = CONDITIONS_VERSION if conditional and requested >= CONDITIONS_VERSION else 1
    if conditional and requested < CONDITIONS_VERSION:
        for binding in answer.bindings:
            if binding.HasField("condition"):
                digest = hashlib.sha256(binding.condition.SerializeToString()).hexdigest()[:20]
                binding.role = f"{binding.role}{WITHCOND}{digest}"
                binding.ClearField("condition")
    return answer
