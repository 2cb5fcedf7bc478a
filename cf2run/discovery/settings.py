"""A gen1 function's settings -> its manifest entry, one pure function per setting (REFERENCE §5).

Each function reads the v1 `CloudFunction` (and, for who may invoke it, its IAM policy) and
returns the manifest value with where it came from, which `manifest_writer` prints as the
line's comment (``memory: 512Mi  # availableMemoryMb: 512``). A setting Cloud Run cannot carry
is a `NotCarried` (a comment in the entry and a line in the report, each saying what to do); a
function that cannot be migrated at all raises `CannotMigrate`.

Defaults of unset fields are the v1 API's own (google/cloud/functions/v1/functions.proto,
CloudFunction): timeout "Defaults to 60 seconds", availableMemoryMb "Defaults to 256MB",
serviceAccountEmail "defaults to {project_id}@appspot.gserviceaccount.com", entryPoint
"Defaults to the resource name suffix", HttpsTrigger.securityLevel "If unspecified,
SECURE_OPTIONAL will be used", FailurePolicy "If empty, then defaults to ignoring failures".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, get_args

from google.cloud import functions_v1
from google.iam.v1 import policy_pb2

from cf2run.manifest.spec import DERIVED_BUILD_ENV, RESERVED_ENV, Runtime
from cf2run.manifest.spec_parts import GEN1_EVENT_TYPES, PUBSUB_CLOUDEVENT

CloudFunction = functions_v1.CloudFunction
Ingress = CloudFunction.IngressSettings
Egress = CloudFunction.VpcConnectorEgressSettings
SecurityLevel = functions_v1.HttpsTrigger.SecurityLevel

SUPPORTED_RUNTIMES: tuple[str, ...] = get_args(Runtime)
INVOKER_ROLE = "roles/cloudfunctions.invoker"
PUBLIC = "allUsers"
#: gcloud adds it to every function it deploys (googlecloudsdk/command_lib/functions/v1/deploy/
#: labels_util.py, SetFunctionLabels: labels_to_update['deployment-tool'] = 'cli-gcloud'); it
#: describes how the old function was deployed, not the new service.
GCLOUD_LABEL = "deployment-tool"
DEFAULT_TIMEOUT_S = 60
DEFAULT_MEMORY_MB = 256
INGRESS = {Ingress.ALLOW_ALL: "all", Ingress.ALLOW_INTERNAL_ONLY: "internal-only",
           Ingress.ALLOW_INTERNAL_AND_GCLB: "internal-and-gclb"}
EGRESS = {Egress.PRIVATE_RANGES_ONLY: "private-ranges-only", Egress.ALL_TRAFFIC: "all-traffic"}
#: "Cloud Run redirects all HTTP requests to HTTPS"
#: (https://cloud.google.com/run/docs/triggering/https-request, "HTTP to HTTPS redirects").
HTTPS_REDIRECT_DOC = "https://cloud.google.com/run/docs/triggering/https-request"
#: Eventarc retries with Pub/Sub's exponential backoff (10 s to 600 s) for the message retention,
#: 24 hours by default (https://cloud.google.com/eventarc/docs/retry-events).
EVENTARC_RETRY_DOC = "https://cloud.google.com/eventarc/docs/retry-events"
RUNTIME_SUPPORT_DOC = "https://cloud.google.com/functions/docs/runtime-support"


@dataclass(frozen=True)
class Setting:
    """One manifest field of the entry, and where its value came from."""

    field: str
    value: Any
    origin: str


@dataclass(frozen=True)
class NotCarried:
    """A gen1 setting the new service does not get, and what to do about it."""

    setting: str
    advice: str


class CannotMigrate(Exception):
    """The function cannot be migrated by cf2run: `reason`, and what to do instead."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"{reason}; {advice}")
        self.reason = reason
        self.advice = advice


def function_id(fn: CloudFunction) -> str:
    return fn.name.rsplit("/", 1)[-1]


def project_of(fn: CloudFunction) -> str:
    return fn.name.split("/")[1]


def region_of(fn: CloudFunction) -> str:
    return fn.name.split("/")[3]


def is_http(fn: CloudFunction) -> bool:
    return "https_trigger" in fn


# -- what is built --------------------------------------------------------------------------


def runtime(fn: CloudFunction) -> Setting:
    """`runtime` when cf2run builds it; CannotMigrate (other languages, retired versions)."""
    if fn.runtime in SUPPORTED_RUNTIMES:
        return Setting("runtime", fn.runtime, f"runtime: {fn.runtime}")
    language = re.sub(r"[0-9]+$", "", fn.runtime)
    if language in ("python", "nodejs"):
        raise CannotMigrate(
            f"runtime {fn.runtime}: cf2run builds {', '.join(SUPPORTED_RUNTIMES)} (Google's "
            f"buildpacks have no builder for older versions; see {RUNTIME_SUPPORT_DOC})",
            f"upgrade the function to a supported runtime first (gcloud functions deploy "
            f"{function_id(fn)} --runtime {_newest(language)} ...), test it, and discover again")
    raise CannotMigrate(
        f"runtime {fn.runtime or '(none)'}: cf2run builds Python and Node.js functions only",
        f"migrate it with Google's own `gcloud functions upgrade {function_id(fn)}` (HTTP and "
        "Pub/Sub functions) or deploy it with `gcloud run deploy --source`")


def _newest(language: str) -> str:
    return max((r for r in SUPPORTED_RUNTIMES if r.startswith(language)),
               key=lambda r: int(r.removeprefix(language)))


def entry_point(fn: CloudFunction) -> Setting:
    if fn.entry_point:
        return Setting("entry_point", fn.entry_point, f"entryPoint: {fn.entry_point}")
    return Setting("entry_point", function_id(fn), "entryPoint: unset, gen1 calls the function "
                                                   "named like the function id")


def signature_type(fn: CloudFunction, registered: str | None) -> Setting:
    """http for an HTTPS trigger; event (gen1's background (data, context) call) for an event
    trigger, unless the source registers the entry point as a CloudEvent function, which the
    Functions Framework then serves as one whatever the platform asks (`registered`)."""
    if is_http(fn):
        return Setting("signature_type", "http", "httpsTrigger: an HTTP function")
    if registered == "cloudevent":
        return Setting("signature_type", "cloudevent", "eventTrigger, and the source registers "
                                                       "the entry point as a CloudEvent function")
    return Setting("signature_type", "event", "eventTrigger: gen1 calls it as a background "
                                              "function (data, context)")


def build_env(fn: CloudFunction) -> tuple[Setting, list[NotCarried]]:
    kept = {k: v for k, v in sorted(fn.build_environment_variables.items()) if k not in DERIVED_BUILD_ENV}
    dropped = [NotCarried(f"buildEnvironmentVariables.{key}",
                          f"cf2run sets {key} itself from the manifest's `{DERIVED_BUILD_ENV[key]}`; "
                          f"set `{DERIVED_BUILD_ENV[key]}` instead")
               for key in sorted(fn.build_environment_variables) if key in DERIVED_BUILD_ENV]
    return Setting("build_env", kept, _count("buildEnvironmentVariables", kept)), dropped


def _count(field: str, values: dict[str, Any] | list[Any]) -> str:
    return f"{field}: {len(values)}" if values else f"{field}: none"


# -- how it runs ----------------------------------------------------------------------------


def memory(fn: CloudFunction) -> Setting:
    """The gen1 tier in MiB (or GiB); cpu stays unset, so the service gets gen1's CPU for it."""
    mb = fn.available_memory_mb or DEFAULT_MEMORY_MB
    quantity = f"{mb // 1024}Gi" if mb % 1024 == 0 else f"{mb}Mi"
    origin = f"availableMemoryMb: {fn.available_memory_mb}" if fn.available_memory_mb else \
        f"availableMemoryMb: unset, gen1's default {DEFAULT_MEMORY_MB}"
    return Setting("memory", quantity, origin + " (cpu unset: gen1's CPU for this memory)")


def timeout(fn: CloudFunction) -> Setting:
    seconds = int(fn.timeout.total_seconds()) if fn.timeout else 0
    if seconds:
        return Setting("timeout_s", seconds, f"timeout: {seconds}s")
    return Setting("timeout_s", DEFAULT_TIMEOUT_S, f"timeout: unset, gen1's default {DEFAULT_TIMEOUT_S}s")


def concurrency(fn: CloudFunction) -> Setting:
    return Setting("concurrency", 1, "gen1 served one request at a time per instance")


def min_instances(fn: CloudFunction) -> Setting:
    return Setting("min_instances", fn.min_instances,
                   f"minInstances: {fn.min_instances}" if fn.min_instances else "minInstances: unset")


def max_instances(fn: CloudFunction) -> Setting:
    if fn.max_instances:
        return Setting("max_instances", fn.max_instances, f"maxInstances: {fn.max_instances}")
    return Setting("max_instances", None, "maxInstances: unset, cf2run keeps gen1's default 3000")


def env(fn: CloudFunction) -> tuple[Setting, list[NotCarried]]:
    kept = {k: v for k, v in sorted(fn.environment_variables.items()) if k not in RESERVED_ENV}
    dropped = [NotCarried(f"environmentVariables.{key}", f"Cloud Run sets {key} itself; read "
                                                         "Cloud Run's value instead")
               for key in sorted(fn.environment_variables) if key in RESERVED_ENV]
    return Setting("env", kept, _count("environmentVariables", kept)), dropped


def _secret_project(project: str, fn: CloudFunction) -> str | None:
    """A secret's project, unless it is the function's own (then the target's is meant)."""
    return None if not project or project == project_of(fn) else project


def secret_env(fn: CloudFunction) -> Setting:
    values: dict[str, Any] = {}
    for item in sorted(fn.secret_environment_variables, key=lambda s: s.key):
        project = _secret_project(item.project_id, fn)
        version = item.version or "latest"
        values[item.key] = ({"secret": item.secret, "version": version, "project": project}
                            if project else f"{item.secret}:{version}")
    return Setting("secret_env", values, _count("secretEnvironmentVariables", values)
                   + (" (references; values are never read)" if values else ""))


def secret_volumes(fn: CloudFunction) -> Setting:
    volumes = []
    for volume in fn.secret_volumes:
        entry: dict[str, Any] = {"mount_path": volume.mount_path, "secret": volume.secret}
        project = _secret_project(volume.project_id, fn)
        if project:
            entry["project"] = project
        if volume.versions:
            entry["versions"] = [{"path": v.path.lstrip("/"), "version": v.version or "latest"}
                                 for v in volume.versions]
        volumes.append(entry)
    return Setting("secret_volumes", volumes, _count("secretVolumes", volumes))


def vpc_connector(fn: CloudFunction) -> Setting:
    if fn.vpc_connector:
        return Setting("vpc_connector", fn.vpc_connector, "vpcConnector")
    return Setting("vpc_connector", None, "vpcConnector: unset")


def vpc_egress(fn: CloudFunction) -> Setting:
    egress = EGRESS.get(fn.vpc_connector_egress_settings)
    if egress and fn.vpc_connector:
        return Setting("vpc_egress", egress, f"vpcConnectorEgressSettings: "
                                             f"{fn.vpc_connector_egress_settings.name}")
    return Setting("vpc_egress", "private-ranges-only",
                   "vpcConnectorEgressSettings: unset, gen1's default PRIVATE_RANGES_ONLY")


def network(fn: CloudFunction) -> NotCarried | None:
    if not fn.network:
        return None
    return NotCarried(f"network: {fn.network}", "a deprecated gen1 field with no Cloud Run "
                      "equivalent; reach the network through a Serverless VPC Access connector "
                      "(set vpc_connector)")


def ingress(fn: CloudFunction) -> Setting:
    value = INGRESS.get(fn.ingress_settings)
    if value:
        return Setting("ingress", value, f"ingressSettings: {fn.ingress_settings.name}")
    return Setting("ingress", "all", "ingressSettings: unset, gen1's default ALLOW_ALL")


def labels(fn: CloudFunction) -> Setting:
    kept = {k: v for k, v in sorted(fn.labels.items()) if k != GCLOUD_LABEL}
    origin = _count("labels", kept)
    if GCLOUD_LABEL in fn.labels:
        origin += f" ({GCLOUD_LABEL}, which gcloud sets on what it deploys, left out)"
    return Setting("labels", kept, origin)


def service_account(fn: CloudFunction) -> Setting:
    if fn.service_account_email:
        return Setting("service_account", fn.service_account_email,
                       "serviceAccountEmail")
    email = f"{project_of(fn)}@appspot.gserviceaccount.com"
    return Setting("service_account", email, "serviceAccountEmail: unset, gen1's default")


# -- who may call it ------------------------------------------------------------------------


def _invoker_members(policy: policy_pb2.Policy) -> list[str]:
    return sorted({member for binding in policy.bindings
                   if binding.role == INVOKER_ROLE and not binding.condition.expression
                   for member in binding.members})


def allow_unauthenticated(policy: policy_pb2.Policy) -> Setting:
    public = PUBLIC in _invoker_members(policy)
    return Setting("allow_unauthenticated", public,
                   f"IAM: {INVOKER_ROLE} {'has' if public else 'has no'} {PUBLIC}")


def invokers(policy: policy_pb2.Policy) -> Setting:
    members = [member for member in _invoker_members(policy) if member != PUBLIC]
    return Setting("invokers", members, f"IAM: {INVOKER_ROLE} members"
                   + ("" if members else ": none") + " (they get roles/run.invoker at promote)")


def other_bindings(policy: policy_pb2.Policy) -> list[NotCarried]:
    """Roles other than the invoker's, and conditional bindings: Cloud Run has its own roles."""
    kept = []
    for binding in policy.bindings:
        members = ", ".join(binding.members)
        if binding.condition.expression:
            kept.append(NotCarried(f"IAM: {binding.role} for {members} under condition "
                                   f"{binding.condition.expression!r}",
                                   "conditional bindings are not carried; grant the Cloud Run role "
                                   "with the same condition on the service after promote"))
        elif binding.role != INVOKER_ROLE:
            kept.append(NotCarried(f"IAM: {binding.role} for {members}",
                                   "Cloud Functions roles do not apply to Cloud Run; grant the "
                                   "matching Cloud Run role (roles/run.developer, roles/run.admin, "
                                   "roles/run.viewer) on the service"))
    return kept


def security_level(fn: CloudFunction) -> NotCarried | None:
    """SECURE_ALWAYS is what Cloud Run does anyway; SECURE_OPTIONAL (plain HTTP served) is not."""
    if not is_http(fn) or fn.https_trigger.security_level == SecurityLevel.SECURE_ALWAYS:
        return None
    shown = fn.https_trigger.security_level.name if fn.https_trigger.security_level else \
        "unset (SECURE_OPTIONAL)"
    return NotCarried(f"httpsTrigger.securityLevel: {shown}",
                      f"gen1 answered plain http:// requests; Cloud Run redirects them to https:// "
                      f"({HTTPS_REDIRECT_DOC}), which drops a POST body for many clients: move "
                      "callers to https://")


# -- events ---------------------------------------------------------------------------------


def trigger(fn: CloudFunction) -> Setting | None:
    """The event trigger as the manifest's `trigger`; CannotMigrate for event types cf2run
    cannot route to a legacy event function (everything but Pub/Sub and Cloud Storage)."""
    if is_http(fn) or "event_trigger" not in fn:
        return None
    event_type, resource = fn.event_trigger.event_type, fn.event_trigger.resource
    origin = f"eventTrigger: {event_type} on {resource}"
    if event_type not in GEN1_EVENT_TYPES:
        raise CannotMigrate(
            f"eventTrigger {event_type} on {resource}: cf2run migrates Pub/Sub and Cloud Storage "
            "triggers (google.pubsub.topic.publish, google.storage.object.*)",
            "a legacy type such as providers/cloud.storage/eventTypes/object.change: redeploy the "
            "function on its google.storage.object.* equivalent first; Firestore, Firebase and "
            "others: move it with `gcloud functions deploy --gen2` and an Eventarc trigger")
    if GEN1_EVENT_TYPES[event_type] == PUBSUB_CLOUDEVENT:
        topic = resource.removeprefix(f"projects/{project_of(fn)}/topics/")
        return Setting("trigger", {"event_type": event_type, "topic": topic}, origin)
    bucket = resource.rsplit("/buckets/", 1)[-1]
    return Setting("trigger", {"event_type": event_type, "bucket": bucket}, origin)


def retry_policy(fn: CloudFunction) -> NotCarried | None:
    if is_http(fn) or "event_trigger" not in fn:
        return None
    if "retry" in fn.event_trigger.failure_policy:
        return NotCarried("eventTrigger.failurePolicy.retry: gen1 retried a failed event for up "
                          "to 7 days", "Eventarc has its own: it retries with backoff (10 s to "
                          "600 s) for the message retention, 24 h by default "
                          f"({EVENTARC_RETRY_DOC}); set the retention and a dead-letter topic on "
                          "the trigger's Pub/Sub subscription if you need longer")
    return NotCarried("eventTrigger.failurePolicy: unset, gen1 did not retry a failed event",
                      f"Eventarc retries failed deliveries for 24 h by default ({EVENTARC_RETRY_DOC}): "
                      "make the function idempotent, or limit the delivery attempts (a dead-letter "
                      "topic) on the trigger's Pub/Sub subscription")


# -- how it is checked ----------------------------------------------------------------------


def parity(fn: CloudFunction) -> Setting:
    """What the new revision is compared with: the old URL (HTTP) or the old function (events)."""
    if is_http(fn):
        return Setting("parity", {"old_url": fn.https_trigger.url},
                       "httpsTrigger.url: the smoke request also goes to the old function")
    return Setting("parity", {"old_function": fn.name},
                   "the smoke event also goes to the old function (CallFunction)")


# -- build and platform settings Cloud Run or cf2run do not have ----------------------------


def platform_settings(fn: CloudFunction) -> list[NotCarried]:
    """CMEK, the build's worker pool, repository and account, runtime update policy."""
    found = []
    if fn.kms_key_name:
        found.append(NotCarried(f"kmsKeyName: {fn.kms_key_name}",
                                "cf2run does not set a customer-managed key: the image and the "
                                "service use Google-managed encryption; set the key with `gcloud "
                                f"run services update SERVICE --key {fn.kms_key_name}` (and an "
                                "Artifact Registry repository with that key) if you must"))
    if fn.build_worker_pool:
        found.append(NotCarried(f"buildWorkerPool: {fn.build_worker_pool}",
                                "cf2run builds on Cloud Build's default pool; a build that needs "
                                "the private pool's network (private dependencies) fails there"))
    if fn.docker_repository:
        found.append(NotCarried(f"dockerRepository: {fn.docker_repository}",
                                "cf2run pushes to target.repository; set it to that repository's "
                                "name if it is in the target project and region"))
    if fn.build_service_account:
        found.append(NotCarried(f"buildServiceAccount: {fn.build_service_account}",
                                "cf2run's builds run as Cloud Build's default service account; "
                                "give it what this account could read"))
    if "on_deploy_update_policy" in fn:
        found.append(NotCarried("onDeployUpdatePolicy (runtime updates only on deploy)",
                                "the new image keeps its base until cf2run rebuilds it, as before"))
    elif "automatic_update_policy" in fn:
        found.append(NotCarried("automaticUpdatePolicy (gen1 patched the runtime base image)",
                                "the new image keeps its base until rebuilt: migrate again "
                                "(cf2run fleet) to pick up security patches"))
    return found


def description(fn: CloudFunction) -> str | None:
    return f"description: {fn.description}" if fn.description else None
