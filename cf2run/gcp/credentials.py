"""Google credentials for a target, and the ID token each kind of them can get.

Access (every API call): a prefect-gcp ``GcpCredentials`` block (key file, key info, or none =
ADC), else Application Default Credentials, scoped to cloud-platform (an unscoped service-account
key is refused by Google's token endpoint with ``invalid_scope``), then, with
``impersonate_service_account``, impersonated as gcloud's ``--impersonate-service-account`` does.

Identity (the smoke test's ``Authorization: Bearer ID_TOKEN`` for a private Cloud Run URL): google-auth's
``id_token.fetch_id_token`` only reads a key file or the metadata server, so each kind gets its own way:

- a service-account key: ``service_account.IDTokenCredentials`` (the token endpoint, ``target_audience``);
- user ADC (``authorized_user``): a refresh with the ``openid`` scope, as ``gcloud auth
  print-identity-token`` does (its audience is the OAuth client, which Cloud Run accepts);
- an impersonated service account: ``impersonated_credentials.IDTokenCredentials`` (generateIdToken);
- workload identity federation: the same, as the service account it impersonates;
- the metadata server (GCE, Cloud Run, GKE): ``compute_engine.IDTokenCredentials`` (its identity endpoint).

`IdTokens.for_credentials` says before anything is changed when none of these applies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import google.auth
import google.auth.transport.requests
from google.auth import compute_engine, external_account, impersonated_credentials, jwt
from google.auth import credentials as auth_credentials
from google.auth.exceptions import DefaultCredentialsError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from cf2run.errors import Cf2RunError

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
OPENID_SCOPES = ["openid", "https://www.googleapis.com/auth/userinfo.email"]
#: An ID token is used again for another call until this long before it expires.
ID_TOKEN_MARGIN_S = 300
NO_CREDENTIALS_HINT = ("run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
                       "to a key file, or name a GcpCredentials block in the target's credentials_block")


class CredentialsMissing(Cf2RunError):
    """No Google credentials could be found for a target."""


def application_default() -> auth_credentials.Credentials:
    """ADC, as google.auth.default finds them, scoped to cloud-platform."""
    try:
        found, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    except DefaultCredentialsError as error:
        raise CredentialsMissing(f"no Google credentials found ({_first_line(error)})",
                                 hint=NO_CREDENTIALS_HINT) from None
    return found  # type: ignore[no-any-return]


def from_block(name: str) -> auth_credentials.Credentials:
    """The credentials of the prefect-gcp GcpCredentials block `name` (its key file, its key info,
    or, with neither, ADC)."""
    from prefect_gcp import GcpCredentials

    try:
        block = GcpCredentials.load(name)
    except ValueError as error:
        raise CredentialsMissing(f"no GcpCredentials block named {name!r}: {_first_line(error)}",
                                 hint="create it in the Prefect UI (Blocks) or fix "
                                      "target.credentials_block") from None
    try:
        return block.get_credentials_from_service_account()  # type: ignore[no-any-return]
    except DefaultCredentialsError as error:
        raise CredentialsMissing(f"GcpCredentials block {name!r} has no key and no Google credentials were "
                                 f"found ({_first_line(error)})", hint=NO_CREDENTIALS_HINT) from None


def resolve(base: Callable[[], auth_credentials.Credentials], impersonate: str | None = None
            ) -> auth_credentials.Credentials:
    """`base()` scoped to cloud-platform, impersonating `impersonate` when given."""
    found = auth_credentials.with_scopes_if_required(base(), [CLOUD_PLATFORM])
    if impersonate:
        return impersonated_credentials.Credentials(source_credentials=found, target_principal=impersonate,
                                                    target_scopes=[CLOUD_PLATFORM])
    return found


def kind_of(found: auth_credentials.Credentials) -> str:
    """What a user would call these credentials."""
    if isinstance(found, service_account.Credentials):
        return f"a service-account key ({found.service_account_email})"
    if isinstance(found, user_credentials.Credentials):
        return "user credentials (authorized_user, from `gcloud auth application-default login`)"
    if isinstance(found, impersonated_credentials.Credentials):
        return f"service-account impersonation ({found.signer_email})"
    if isinstance(found, external_account.Credentials):
        return "workload identity federation (external_account)"
    if isinstance(found, compute_engine.Credentials):
        return "the metadata server's service account (compute_engine)"
    return f"{type(found).__module__}.{type(found).__name__}"


class IdTokens:
    """ID tokens for one set of credentials, one per audience, reused until near their expiry."""

    def __init__(self, mint: Callable[[str], str]) -> None:
        self._mint = mint
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_credentials(cls, found: auth_credentials.Credentials) -> IdTokens:
        """How `found` gets ID tokens; Cf2RunError naming the kind and the fix when it cannot."""
        request = google.auth.transport.requests.Request()

        def refreshed(source: auth_credentials.Credentials) -> str:
            source.refresh(request)
            return str(source.token)

        if isinstance(found, service_account.Credentials):
            return cls(lambda audience: refreshed(service_account.IDTokenCredentials(
                found.signer, found.service_account_email, found._token_uri, target_audience=audience)))
        if isinstance(found, user_credentials.Credentials):
            return cls(lambda audience: _user_id_token(found, request))
        if isinstance(found, impersonated_credentials.Credentials):
            return cls(lambda audience: refreshed(impersonated_credentials.IDTokenCredentials(
                found, target_audience=audience, include_email=True)))
        if isinstance(found, external_account.Credentials):
            if not found.service_account_email:
                raise Cf2RunError(
                    "cannot get an ID token for the smoke test from workload identity federation without "
                    "service-account impersonation",
                    hint="add service_account_impersonation_url to the credential configuration (gcloud iam "
                         "workload-identity-pools create-cred-config --service-account=SA), or set the "
                         "target's impersonate_service_account")
            impersonated = found._initialize_impersonated_credentials()
            return cls(lambda audience: refreshed(impersonated_credentials.IDTokenCredentials(
                impersonated, target_audience=audience, include_email=True)))
        if isinstance(found, compute_engine.Credentials):
            return cls(lambda audience: refreshed(compute_engine.IDTokenCredentials(
                request, target_audience=audience, use_metadata_identity_endpoint=True)))
        raise Cf2RunError(f"cannot get an ID token for the smoke test from {kind_of(found)}",
                          hint="use a service-account key, user ADC, or set the target's "
                               "impersonate_service_account to an account you may impersonate")

    def __call__(self, audience: str) -> str:
        with self._lock:
            cached = self._cache.get(audience)
        if cached is not None and cached[1] - time.time() > ID_TOKEN_MARGIN_S:
            return cached[0]
        token = self._mint(audience)
        expiry = float(jwt.decode(token, verify=False).get("exp", 0))
        with self._lock:
            self._cache[audience] = (token, expiry)
        return token


def _user_id_token(found: user_credentials.Credentials,
                   request: google.auth.transport.requests.Request) -> str:
    """The ID token of a refresh asking for openid, as `gcloud auth print-identity-token` prints. A
    copy is refreshed: `found` may be scoped to cloud-platform only, which brings no ID token."""
    copy = user_credentials.Credentials(
        token=None, refresh_token=found.refresh_token, token_uri=found.token_uri, client_id=found.client_id,
        client_secret=found.client_secret, scopes=OPENID_SCOPES, quota_project_id=found.quota_project_id)
    copy.refresh(request)
    if not copy.id_token:
        raise Cf2RunError("the user credentials' refresh brought no ID token (their grant lacks the openid "
                          "scope)", hint="run `gcloud auth application-default login` again, or set the "
                                         "target's impersonate_service_account")
    return str(copy.id_token)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
