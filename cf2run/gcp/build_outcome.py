"""What a Cloud Build build that did not succeed means: whose fault it is, so whether it is retried.

Read from the build's ``status`` and ``failure_info.type`` (google/devtools/cloudbuild/v1/
cloudbuild.proto, ``Build.Status`` and ``Build.FailureInfo.FailureType``):

| the build ended | whose cause | retried | the user is told |
|---|---|---|---|
| INTERNAL_ERROR ("failed due to an internal cause") | Cloud Build's | yes | nothing to fix |
| EXPIRED (queued longer than its ``queue_ttl``) | Cloud Build's queue | yes | nothing to fix |
| FAILURE, LOGGING_FAILURE ("Backend logging failures. Should retry.") | Cloud Build's | yes | ditto |
| TIMEOUT, the first for this image | a stalled worker, as likely as a slow build | once | ditto |
| TIMEOUT again (an earlier build of this image timed out too) | the build's | no | raise `build_timeout_s` |
| FAILURE, PUSH_FAILED | the repository's access | no | the repository and who must write to it |
| FAILURE otherwise | the source's or build settings' | no | the log's errors, what to change |
| CANCELLED ("canceled by a user") | someone's decision | no | run again |

A build whose worker went away (Google's INTERNAL_ERROR; the local cloud's when it was stopped
or killed mid-build) is thus built again, by the step's retry or by the rerun.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from google.cloud.devtools import cloudbuild_v1

from cf2run.errors import BuildFailed, BuildInfrastructureFailed, Cf2RunError
from cf2run.gcp.build_log import DEFAULT_HINT
from cf2run.gcp.oci import ArtifactRepository, ImageRef

Status = cloudbuild_v1.Build.Status
FailureType = cloudbuild_v1.Build.FailureInfo.FailureType

#: Who pushes a build's `images` unless the build names a service account
#: (https://cloud.google.com/build/docs/cloud-build-service-account).
BUILD_PUSHER = "the build's service account (PROJECT_NUMBER@cloudbuild.gserviceaccount.com by default)"
#: What the user can do about Cloud Build's own failures: nothing but wait, if they last.
NOT_YOUR_SOURCE = ("Cloud Build failed for a cause of its own, not the source; cf2run builds it "
                   "again. If it keeps happening, see https://status.cloud.google.com")


def build_error(build: cloudbuild_v1.Build, function: str, image: str,
                earlier: Sequence[cloudbuild_v1.Build] = (),
                explain: Callable[[], tuple[Sequence[str], str]] | None = None) -> Cf2RunError:
    """The error for `build` of `image` (function `function`), which did not succeed; `earlier`:
    the image's builds before this one (a second timeout is the build's own). `explain()`, asked
    only for a failure of the source's: the log's error lines and what to change
    (cf2run/gcp/build_log.py)."""
    # Google leaves status_detail empty on failed builds and says what failed in failure_info
    # (google/oss-rebuild#1604).
    detail = build.status_detail or build.failure_info.detail or "no detail"
    message = f"build {build.id} of {function} ended {build.status.name}: {detail}; log: {build.log_url}"
    status, failure = build.status, build.failure_info.type_
    if status in (Status.INTERNAL_ERROR, Status.EXPIRED) or (
            status == Status.FAILURE and failure == FailureType.LOGGING_FAILURE):
        return BuildInfrastructureFailed(message, hint=NOT_YOUR_SOURCE)
    if status == Status.TIMEOUT:
        timeout = build.timeout.total_seconds()
        if not any(before.status == Status.TIMEOUT for before in earlier):
            return BuildInfrastructureFailed(
                message, hint=f"a stalled Cloud Build worker times out too, so cf2run builds it once "
                              f"more; if that also takes over {timeout:g}s, it fails for good")
        return BuildFailed(f"{message}; an earlier build of the same image timed out too",
                           hint=f"raise build_timeout_s (now {timeout:g}) if the build needs longer, "
                                "or read the log for a step that hangs")
    if status == Status.CANCELLED:
        return BuildFailed(message, hint="someone cancelled the build; run again to build it")
    ref = ImageRef.parse(image)
    repository = ArtifactRepository.of(ref.host, ref.repository)
    if failure == FailureType.PUSH_FAILED and repository:
        return BuildFailed(f"{message}; the push of {image} was refused",
                           hint=repository.access_hint(BUILD_PUSHER))
    lines, hint = explain() if explain is not None else ((), DEFAULT_HINT)
    if lines:
        message = (f"build {build.id} of {function} ended {build.status.name}: {'; '.join(lines)}; "
                   f"log: {build.log_url}")
    return BuildFailed(message, hint=hint)
