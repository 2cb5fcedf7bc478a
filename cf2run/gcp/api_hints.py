"""What to do about a Google API error that retrying will not fix, for every API the pipeline
calls: one table, read by `explain` where a step's error becomes the migration's message.

A step's own errors (cf2run/errors.py) already carry a hint naming the field, file or
repository; this is for what reaches the user raw from a client library: PERMISSION_DENIED and
UNAUTHENTICATED (which role, on what), SERVICE_DISABLED (which API to enable), and an INTERNAL or
UNAVAILABLE that outlasted the step's retries (Google's side: run again later). The roles are
the predefined ones Google documents for each call (https://cloud.google.com/iam/docs/roles-permissions).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

from cf2run.errors import Cf2RunError


@dataclass(frozen=True)
class Api:
    """One Google API: its name, the role the pipeline's calls need, on what, and its service."""

    name: str
    role: str
    on: str
    service: str


STORAGE = Api("Cloud Storage", "roles/storage.objectAdmin (roles/storage.admin to create the bucket)",
              "the staging bucket", "storage.googleapis.com")
BUILD = Api("Cloud Build", "roles/cloudbuild.builds.editor", "the project", "cloudbuild.googleapis.com")
REGISTRY = Api("Artifact Registry", "roles/artifactregistry.writer", "the repository",
               "artifactregistry.googleapis.com")
RUN = Api("Cloud Run", "roles/run.admin, and roles/iam.serviceAccountUser on the runtime service "
          "account", "the project or service", "run.googleapis.com")
FUNCTIONS = Api("Cloud Functions", "roles/cloudfunctions.viewer (roles/cloudfunctions.developer to "
                "download sources)", "the project", "cloudfunctions.googleapis.com")
SECRET_MANAGER = Api("Secret Manager", "roles/secretmanager.viewer", "the secrets the manifest names",
                     "secretmanager.googleapis.com")
IAM_CREDENTIALS = Api("IAM Credentials", "roles/iam.serviceAccountTokenCreator",
                      "the impersonated service account", "iamcredentials.googleapis.com")

#: The API each pipeline step calls (the registry's errors carry their own hints: cf2run/gcp/oci.py).
API_OF_STEP: dict[str, Api] = {
    "package": STORAGE, "build": BUILD, "verify": REGISTRY, "deploy": RUN, "smoke": RUN,
    "parity": FUNCTIONS, "promote": RUN, "credentials": IAM_CREDENTIALS, "secrets": SECRET_MANAGER,
}

DENIED = (api_exceptions.PermissionDenied, api_exceptions.Unauthenticated, api_exceptions.Forbidden,
          api_exceptions.Unauthorized)
GOOGLES_SIDE = (api_exceptions.InternalServerError, api_exceptions.ServiceUnavailable,
                api_exceptions.BadGateway, api_exceptions.GatewayTimeout, api_exceptions.Unknown)


def hint_for(error: BaseException, api: Api) -> str | None:
    """What to do about `error` from `api`; None when the table has nothing to say."""
    if isinstance(error, auth_exceptions.RefreshError):
        return f"the credentials could not get a token: check them, and {IAM_CREDENTIALS.role} on " \
               f"{IAM_CREDENTIALS.on} if the target impersonates one"
    if not isinstance(error, api_exceptions.GoogleAPICallError):
        return None
    if getattr(error, "reason", None) == "SERVICE_DISABLED":
        return f"enable the {api.name} API: gcloud services enable {api.service} --project=PROJECT"
    if isinstance(error, DENIED):
        return f"the credentials need {api.role} on {api.on} ({api.name} refused the call)"
    if isinstance(error, GOOGLES_SIDE):
        return (f"{api.name} failed on Google's side and kept failing through the step's retries; "
                "run again later (a rerun picks up where this one stopped), and see "
                "https://status.cloud.google.com if it persists")
    if isinstance(error, api_exceptions.NotFound):
        return f"check the name in the message exists in the target project ({api.name})"
    return None


def explain(error: BaseException, step: str | None) -> str:
    """`error` as the migration's message: with the table's hint when it has none of its own."""
    if isinstance(error, Cf2RunError) and error.hint:
        return str(error)
    api = API_OF_STEP.get(step or "")
    hint = hint_for(error, api) if api is not None else None
    return f"{error} ({hint})" if hint else str(error)
