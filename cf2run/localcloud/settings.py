"""Knobs of the local cloud: the things tests and benchmarks need and Google does not give.

One settings object, readable from the environment (prefix ``CF2RUN_LOCALCLOUD_``;
lists and objects as JSON), mutable at run time by whoever holds the `LocalCloud`:

    CF2RUN_LOCALCLOUD_BUILD_LATENCY_S=3
    CF2RUN_LOCALCLOUD_MAX_CONCURRENT_BUILDS=10
    CF2RUN_LOCALCLOUD_FORK_SERVER=0
    CF2RUN_LOCALCLOUD_SCALE_TO_ZERO_AFTER_S=60
    CF2RUN_LOCALCLOUD_CALLER_IN_VPC=1
    CF2RUN_LOCALCLOUD_FUNCTIONS_API_DISABLED=1
    CF2RUN_LOCALCLOUD_FAULTS='[{"method": "CloudBuild.CreateBuild", "code": "UNAVAILABLE", "first_n": 1}]'
"""

from __future__ import annotations

import random
import re
import secrets
import threading
from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: gRPC status code names a fault may use, and the HTTP status the registry answers for each.
FAULT_HTTP_STATUS = {
    "UNAVAILABLE": 503,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "DEADLINE_EXCEEDED": 504,
    "UNKNOWN": 500,
    "ABORTED": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 400,
    "INVALID_ARGUMENT": 400,
}


class Fault(BaseModel):
    """Make calls of one method fail.

    `method` is ``Service.Method`` as the API names it: ``CloudBuild.CreateBuild``,
    ``CloudBuild.GetBuild``, ``Services.CreateService``, ``Services.UpdateService``,
    ``Revisions.ListRevisions``, ``Operations.GetOperation``, ``CloudFunctionsService.GetFunction``
    (v1), ``FunctionService.ListFunctions`` (v2), or
    for the registry ``Registry.<Verb>`` with Verb one of ``GetManifest HeadManifest PutManifest
    GetBlob HeadBlob StartUpload PatchUpload PutUpload GetUpload CancelUpload ListTags Ping
    GetToken``, or for Cloud Storage's JSON API ``Storage.<HTTP method>`` (``Storage.POST``: an
    upload, ``Storage.GET``...), and ``Storage.SignedGET`` for a signed URL's download (e.g. the
    one Cloud Functions' GenerateDownloadUrl returns). Secret Manager's methods
    (``SecretManagerService.GetSecretVersion``, ``.GetSecret``...) go through the same gRPC layer
    as every API. ``*`` matches every method.
    Without `first_n` and `probability` every call fails.
    """

    method: str = Field(description="Service.Method to fail, or '*' for all.")
    code: str = Field(default="UNAVAILABLE", description="gRPC status code name to answer.")
    first_n: int | None = Field(default=None, ge=1, description="Fail only the first N calls.")
    probability: float | None = Field(default=None, ge=0, le=1,
                                      description="Fail each call with this probability.")
    message: str = Field(default="injected fault", description="Error message to answer.")
    after_effect: bool = Field(
        default=False, description="Let the call take effect, then answer the error: a response lost "
                                   "on its way back, so the caller cannot tell the call happened (gRPC "
                                   "methods only).")


class BuildFault(BaseModel):
    """Make builds of matching images end as Cloud Build's own failures end them, not the
    source's: ``INTERNAL_ERROR`` ("Build or step failed due to an internal cause",
    google/devtools/cloudbuild/v1/cloudbuild.proto, Build.Status) or ``TIMEOUT`` (a worker that
    stalled until the build's timeout; the local build ends so at once). The build ends when its
    pack step starts. Without `first_n` every matching build fails."""

    image: str = Field(default=".*", description="Regex on the image name.")
    status: Literal["INTERNAL_ERROR", "TIMEOUT"] = Field(default="INTERNAL_ERROR",
                                                         description="How the build ends.")
    first_n: int | None = Field(default=None, ge=1, description="Fail only the first N matching builds.")


class LocalCloudSettings(BaseSettings):
    """Everything about the local cloud that is not how Google behaves, in one place."""

    model_config = SettingsConfigDict(env_prefix="CF2RUN_LOCALCLOUD_", validate_assignment=True)

    build_latency_s: float = Field(
        default=0.0, ge=0, description="Seconds every build stays WORKING at least, its real work "
                                       "and push included (as a remote build of that length would).")
    deploy_latency_s: float = Field(default=0.0, ge=0,
                                    description="Extra seconds every Cloud Run write takes.")
    max_concurrent_builds: int = Field(default=10, ge=1,
                                       description="Builds over this wait QUEUED, as on Cloud Build.")
    ready_deadline_s: float = Field(default=60.0, gt=0,
                                    description="How long a revision may take to answer its probe.")
    fail_builds_matching: str | None = Field(
        default=None, description="Regex on the image name: matching builds fail (FAILURE).")
    never_ready_matching: str | None = Field(
        default=None, description="Regex on the service name: its new revisions never get ready.")
    run_cpu_quota: float = Field(
        default=1000, gt=0, description="vCPU of the region's Cloud Run CPU quota: a service's max "
                                        "instances x its cpu may not exceed it (Google's example "
                                        "baseline; real projects differ, new ones have less).")
    run_memory_quota_gib: float = Field(
        default=2000, gt=0, description="GiB of the region's Cloud Run memory quota: max instances x "
                                        "memory may not exceed it (Google's example baseline).")
    faults: list[Fault] = Field(default_factory=list, description="Injected RPC failures.")
    build_faults: list[BuildFault] = Field(
        default_factory=list, description="Builds ended by Cloud Build's own failures (INTERNAL_ERROR, "
                                          "TIMEOUT), not by their source.")
    caller_in_vpc: bool = Field(
        default=False, description="Every caller of the service and tag URLs counts as inside the "
                                   "services' VPC network, so services with ingress internal-only or "
                                   "internal-and-gclb let it in (false: callers come from the internet "
                                   "and those services answer 404, as Cloud Run does).")
    functions_denied: bool = Field(
        default=False, description="The caller lacks every Cloud Functions permission (no "
                                   "roles/cloudfunctions.viewer): each Cloud Functions API call answers "
                                   "PERMISSION_DENIED naming the permission, as Google does.")
    functions_api_disabled: bool = Field(
        default=False, description="The Cloud Functions API is not enabled in any project: each call "
                                   "answers PERMISSION_DENIED, reason SERVICE_DISABLED, as Google does.")
    secrets_denied: bool = Field(
        default=False, description="The caller lacks every Secret Manager permission (no "
                                   "roles/secretmanager.viewer): each Secret Manager API call answers "
                                   "PERMISSION_DENIED naming the permission, as Google does.")
    scale_to_zero_after_s: float = Field(
        default=900.0, gt=0,
        description="Seconds a revision's (or 1st-gen function's) instance stays up without a request "
                    "before it stops; the next request starts one again (a cold start). Min instances "
                    "keep theirs. Default: the 15 minutes Cloud Run keeps an idle instance at most "
                    "(cloud.google.com/run/docs/about-instance-autoscaling).")
    fork_server: bool = Field(
        default=True, description="Fork Python revisions from a zygote that imported their dependency set "
                                  "once (false: a new interpreter per revision).")


#: Header the local cloud's own registry client sends (Cloud Build's push, Cloud Run's pull):
#: its value is `FaultInjector.internal_key`, and calls carrying it skip the fault knob, as a
#: caller's fault knob has no say over Google's internal traffic.
INTERNAL_HEADER = "X-Cf2run-Localcloud-Internal"


class FaultInjector:
    """Decides, call by call, whether an injected fault fires. Thread-safe.

    `calls` counts every call asked about, by ``Service.Method`` (the local cloud's own internal
    traffic is never asked about): what a caller made the local cloud do."""

    def __init__(self, settings: LocalCloudSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._fired: dict[int, int] = {}
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.internal_key = secrets.token_hex(16)

    def check(self, method: str) -> Fault | None:
        """The fault to answer for this call of `method` (``Service.Method``), if any."""
        with self._lock:
            self.calls[method] += 1
            for fault in self._settings.faults:
                if fault.method not in ("*", method):
                    continue
                fired = self._fired.get(id(fault), 0)
                if fault.first_n is not None and fired >= fault.first_n:
                    continue
                if fault.probability is not None and random.random() >= fault.probability:
                    continue
                self._fired[id(fault)] = fired + 1
                self.injected[method] += 1
                return fault
        return None

    def build_fault(self, image: str) -> BuildFault | None:
        """The build fault that ends this build of `image`, if any (counted as fired)."""
        with self._lock:
            for fault in self._settings.build_faults:
                fired = self._fired.get(id(fault), 0)
                if re.search(fault.image, image) and (fault.first_n is None or fired < fault.first_n):
                    self._fired[id(fault)] = fired + 1
                    return fault
        return None

    def build_should_fail(self, image: str) -> bool:
        pattern = self._settings.fail_builds_matching
        return bool(pattern and re.search(pattern, image))

    def never_ready(self, service: str) -> bool:
        pattern = self._settings.never_ready_matching
        return bool(pattern and re.search(pattern, service))
