"""The shapes of Cloud Functions resources, as the API answers them: names, the fields the service
fills in (OUTPUT_ONLY and defaults), and a 1st-gen function in the v2 API's shape.

Everything here works on the API's JSON (protobuf JSON, camelCase), the form seeds and the store
keep; `functions_v1.CloudFunction.from_json` / `functions_v2.Function.from_json` read it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

Json = dict[str, Any]

#: gcloud's rule for a function id (googlecloudsdk/api_lib/functions/v1/util.py,
#: ``_FUNCTION_NAME_RE``): a letter, then letters, digits, ``-`` and ``_``, at most 63, not ending
#: in ``-`` or ``_``.
FUNCTION_ID_RE = re.compile(r"^[A-Za-z](?:[-_A-Za-z0-9]{0,61}[A-Za-z0-9])?$")
NAME_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/functions/([^/]+)$")
#: The Artifact Registry repository gen1 builds into, one per project and region ("GCF will
#: create and use a default Artifact Registry repository named 'gcf-artifacts' in the region",
#: google/cloud/functions/v1/functions.proto, CloudFunction.docker_repository).
GEN1_REPOSITORY = "gcf-artifacts"
#: What a 1st-gen function gets when its definition leaves them out (functions.proto: "Defaults to
#: 60 seconds", "Defaults to 256MB"; IngressSettings "If unspecified, ALLOW_ALL will be used";
#: HttpsTrigger.SecurityLevel "If unspecified, SECURE_OPTIONAL will be used"; DockerRegistry "If
#: unspecified, it defaults to ARTIFACT_REGISTRY").
GEN1_DEFAULTS: Json = {"timeout": "60s", "availableMemoryMb": 256, "ingressSettings": "ALLOW_ALL",
                       "dockerRegistry": "ARTIFACT_REGISTRY"}
_STATES = {"ACTIVE": "ACTIVE", "OFFLINE": "FAILED", "DEPLOY_IN_PROGRESS": "DEPLOYING",
           "DELETE_IN_PROGRESS": "DELETING", "UNKNOWN": "UNKNOWN"}


def project_number(project: str) -> str:
    """The local cloud's project number of `project`: twelve digits derived from the id, the same
    in every run (a real project's number comes from Resource Manager)."""
    return str(int(hashlib.sha256(project.encode()).hexdigest(), 16) % 10**12).rjust(12, "1")


def split_name(name: str) -> tuple[str, str, str]:
    """(project, region, function id) of ``projects/P/locations/R/functions/F``; ValueError else."""
    match = NAME_RE.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not projects/PROJECT/locations/REGION/functions/FUNCTION")
    return match[1], match[2], match[3]


def sources_bucket(project: str, region: str) -> str:
    """The bucket gen1 keeps deployed sources in, ``gcf-sources-PROJECT_NUMBER-REGION``, objects
    ``ID-UUID/version-N/function-source.zip`` (seen in a failed gen1 build's message,
    firebase/firebase-functions#1425)."""
    return f"gcf-sources-{project_number(project)}-{region}"


def gen1_image(project: str, region: str, function_id: str, version: int) -> str:
    """The image of a gen1 function's version in its region's gcf-artifacts repository (the image
    and tag naming is the local cloud's: Google's is not documented)."""
    return f"{region}-docker.pkg.dev/{project}/{GEN1_REPOSITORY}/{function_id.lower()}:version_{version}"


def activate_gen1(function: Json, *, version: int, build_id: str, update_time: str,
                  url: str | None) -> Json:
    """`function` (a v1 CloudFunction) as the API answers it once deployed: status ACTIVE, its
    version, build and update time, the HTTPS trigger's URL, the service account and the
    defaults of what it left out."""
    project, region, _ = split_name(function["name"])
    done = {**GEN1_DEFAULTS, **function}
    done.setdefault("serviceAccountEmail", f"{project}@appspot.gserviceaccount.com")  # proto's default
    done.update(status="ACTIVE", versionId=str(version), updateTime=update_time, buildId=build_id,
                buildName=f"projects/{project_number(project)}/locations/{region}/builds/{build_id}")
    if "httpsTrigger" in done:
        done["httpsTrigger"] = {"securityLevel": "SECURE_OPTIONAL", **done["httpsTrigger"]}
        if url is not None:
            done["httpsTrigger"]["url"] = url
    return done


def activate_gen2(function: Json, *, update_time: str) -> Json:
    """`function` (a v2 Function) as the API answers it: ACTIVE, GEN_2, its update time."""
    return {**function, "state": "ACTIVE", "environment": "GEN_2", "updateTime": update_time,
            "createTime": function.get("createTime", update_time)}


def archive_location(function: Json) -> tuple[str, str] | None:
    """(bucket, object) of a v1 function's ``sourceArchiveUrl`` (``gs://BUCKET/OBJECT``), if any."""
    url = function.get("sourceArchiveUrl", "")
    if not url.startswith("gs://") or "/" not in url[5:]:
        return None
    bucket, _, name = url[5:].partition("/")
    return bucket, name


def v2_of_gen1(function: Json, source: tuple[str, str] | None) -> Json:
    """A 1st-gen function (v1 JSON) as the v2 API lists it: environment GEN_1, its build settings
    in buildConfig, its runtime settings in serviceConfig (the v2 API lists both generations,
    firebase/firebase-tools#5001; the field by field mapping is the local cloud's reading of the
    two protos, not checked against Google's answer)."""
    build: Json = {key: function[old] for old, key in (
        ("runtime", "runtime"), ("entryPoint", "entryPoint"), ("buildEnvironmentVariables",
        "environmentVariables"), ("buildWorkerPool", "workerPool"), ("dockerRegistry", "dockerRegistry"),
        ("dockerRepository", "dockerRepository"), ("buildName", "build")) if old in function}
    if source is not None:
        build["source"] = {"storageSource": {"bucket": source[0], "object": source[1]}}
    service: Json = {key: function[old] for old, key in (
        ("environmentVariables", "environmentVariables"), ("maxInstances", "maxInstanceCount"),
        ("minInstances", "minInstanceCount"), ("vpcConnector", "vpcConnector"),
        ("vpcConnectorEgressSettings", "vpcConnectorEgressSettings"), ("ingressSettings", "ingressSettings"),
        ("serviceAccountEmail", "serviceAccountEmail")) if old in function}
    if "timeout" in function:
        service["timeoutSeconds"] = int(float(function["timeout"].rstrip("s")))
    if "availableMemoryMb" in function:
        service["availableMemory"] = f"{function['availableMemoryMb']}M"
    if "secretEnvironmentVariables" in function:
        service["secretEnvironmentVariables"] = function["secretEnvironmentVariables"]
    if "secretVolumes" in function:
        service["secretVolumes"] = function["secretVolumes"]
    https = function.get("httpsTrigger")
    if https is not None:
        service["securityLevel"] = https.get("securityLevel", "SECURE_OPTIONAL")
        if "url" in https:
            service["uri"] = https["url"]
    shaped: Json = {"name": function["name"], "buildConfig": build, "serviceConfig": service,
                    "state": _STATES.get(function.get("status", ""), "STATE_UNSPECIFIED"),
                    "environment": "GEN_1"}
    for key in ("description", "labels", "updateTime", "kmsKeyName"):
        if key in function:
            shaped[key] = function[key]
    if https is not None and "url" in https:
        shaped["url"] = https["url"]
    event = function.get("eventTrigger")
    if event is not None:
        retry = "retry" in event.get("failurePolicy", {})
        policy = "RETRY_POLICY_RETRY" if retry else "RETRY_POLICY_DO_NOT_RETRY"
        shaped["eventTrigger"] = {"eventType": event.get("eventType", ""), "retryPolicy": policy}
    return shaped
