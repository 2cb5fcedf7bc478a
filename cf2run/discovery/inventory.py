"""What a project has: its functions listed with the v2 API, each 1st-gen one read with v1.

The v2 API's ListFunctions returns 1st- and 2nd-gen functions alike, each with its
`environment`; the v1 API's CloudFunction is gen1's own shape (sourceArchiveUrl,
httpsTrigger.securityLevel, eventTrigger.failurePolicy, buildWorkerPool, ...). gcloud does the
same: "1st gen and 2nd gen functions will use v1 and v2 APIs respectively"
(https://cloud.google.com/sdk/gcloud/reference/functions/list). Only reads: nothing in the
project changes.

Google's refusals become a `DiscoveryError` naming the permission, the role that has it, or the
API to enable (roles: https://cloud.google.com/functions/docs/reference/iam/roles; the viewer
role lists and reads functions but "Can't get IAM policies or view source code").
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from google.api_core import exceptions
from google.cloud import functions_v1, functions_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2

from cf2run.errors import Cf2RunError

ANY_REGION = "-"
GEN_1 = functions_v2.Environment.GEN_1
GEN_2 = functions_v2.Environment.GEN_2
#: The role that has each permission discover needs (the viewer role lacks the last two).
ROLE_OF = {
    "cloudfunctions.functions.list": "roles/cloudfunctions.viewer",
    "cloudfunctions.functions.get": "roles/cloudfunctions.viewer",
    "cloudfunctions.functions.getIamPolicy": "roles/cloudfunctions.admin",
    "cloudfunctions.functions.sourceCodeGet": "roles/cloudfunctions.developer",
}
ENABLE_API = "gcloud services enable cloudfunctions.googleapis.com --project {project}"


class DiscoveryError(Cf2RunError):
    """Discovery cannot go on (permission, API, project): nothing was written."""


@dataclass(frozen=True)
class Listed:
    """A function as the v2 list shows it."""

    name: str  # projects/P/locations/R/functions/ID
    generation: str  # GEN_1, GEN_2 or ENVIRONMENT_UNSPECIFIED
    update_time: str
    state: str

    @property
    def function_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def region(self) -> str:
        return self.name.split("/")[3]


@dataclass(frozen=True)
class Listing:
    functions: list[Listed]
    unreachable: list[str]  # locations the v2 API could not list


def list_functions(client: functions_v2.FunctionServiceClient, project: str,
                   regions: Sequence[str], name_glob: str | None) -> Listing:
    """The project's functions in `regions` (all when empty) whose id matches `name_glob`,
    sorted by name; DiscoveryError when the list is refused or empty."""
    found: list[Listed] = []
    unreachable: list[str] = []
    for region in regions or [ANY_REGION]:
        parent = f"projects/{project}/locations/{region}"
        try:
            for page in client.list_functions(parent=parent).pages:
                unreachable += page.unreachable
                found += [_listed(function) for function in page.functions]
        except exceptions.GoogleAPICallError as error:
            raise api_error(error, "cloudfunctions.functions.list", parent, project) from None
    where = f"project {project}" + (f", region {', '.join(regions)}" if regions else "")
    if not found:
        raise DiscoveryError(f"no Cloud Functions in {where}",
                             hint="check the project id and --region (gcloud functions list "
                                  f"--project {project})")
    matching = [item for item in found if name_glob is None
                or fnmatch.fnmatchcase(item.function_id, name_glob)]
    if not matching:
        raise DiscoveryError(f"none of the {len(found)} functions in {where} matches --filter "
                             f"{name_glob!r}", hint=f"functions there: "
                             f"{', '.join(sorted({f.function_id for f in found})[:10])}")
    return Listing(sorted(matching, key=lambda item: item.name), sorted(set(unreachable)))


def _listed(function: functions_v2.Function) -> Listed:
    updated = function.update_time.isoformat() if function.update_time else ""
    return Listed(name=function.name, generation=function.environment.name, update_time=updated,
                  state=function.state.name)


def read_function(client: functions_v1.CloudFunctionsServiceClient, name: str
                  ) -> tuple[functions_v1.CloudFunction, policy_pb2.Policy]:
    """A 1st-gen function's definition and IAM policy (v1 GetFunction, GetIamPolicy)."""
    project = name.split("/")[1]
    try:
        function = client.get_function(name=name)
    except exceptions.GoogleAPICallError as error:
        raise api_error(error, "cloudfunctions.functions.get", name, project) from None
    try:
        policy = client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=name))
    except exceptions.GoogleAPICallError as error:
        raise api_error(error, "cloudfunctions.functions.getIamPolicy", name, project) from None
    return function, policy


def api_error(error: exceptions.GoogleAPICallError, permission: str, resource: str,
              project: str) -> DiscoveryError:
    """Google's refusal of a call needing `permission` on `resource`, with what to do."""
    said = error.message or str(error)
    if _api_disabled(error):
        return DiscoveryError(f"the Cloud Functions API is not enabled in project {project}: {said}",
                              hint=ENABLE_API.format(project=project))
    if isinstance(error, exceptions.PermissionDenied | exceptions.Forbidden):
        role = ROLE_OF.get(permission, "roles/cloudfunctions.viewer")
        also = "" if role == "roles/cloudfunctions.viewer" else \
            " (roles/cloudfunctions.viewer does not have it)"
        return DiscoveryError(f"permission {permission} denied on {resource}: {said}",
                              hint=f"grant your credentials {role}{also}, or a role with "
                                   f"{permission}, on project {project}")
    if isinstance(error, exceptions.Unauthenticated):
        return DiscoveryError(f"Google refused the credentials: {said}",
                              hint="run `gcloud auth application-default login` or set the "
                                   "target's credentials")
    if isinstance(error, exceptions.NotFound):
        return DiscoveryError(f"{resource} not found: {said}",
                              hint="check the project id and region (gcloud functions list "
                                   f"--project {project})")
    return DiscoveryError(f"{resource}: {type(error).__name__}: {said}",
                          hint="nothing was written; try again")


def _api_disabled(error: exceptions.GoogleAPICallError) -> bool:
    """SERVICE_DISABLED (ErrorInfo reason), or Google's words for it in the message."""
    said = error.message or ""
    return getattr(error, "reason", None) == "SERVICE_DISABLED" or (
        "has not been used in project" in said or "it is disabled" in said)
