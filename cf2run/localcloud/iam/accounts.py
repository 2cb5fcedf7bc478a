"""Google's token services on 127.0.0.1, so google-auth's own credential classes run unchanged.

- ``oauth2.googleapis.com/token`` is ``POST /token``: a service-account key's signed assertion
  gets an access token for its ``scope`` or an ID token for its ``target_audience``; a user's refresh
  token gets an access token and, when the grant has ``openid``, an ID token whose audience is the
  OAuth client (as Google answers ``gcloud auth application-default login`` credentials);
- ``sts.googleapis.com/v1/token`` is ``POST /v1/token``: workload identity federation's token exchange;
- ``iamcredentials.googleapis.com`` is ``POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken``
  and ``:generateIdToken`` (impersonation).

Every token is minted by the local cloud's `TokenAuthority`, which is what the local services check
them with (gRPC APIs: access tokens; the registry's token exchange: access tokens; Cloud Run URLs:
ID tokens). Who may impersonate whom is not modelled: any valid caller may.

`Accounts` also writes credential files of every type whose URLs point here (`credentials_info`,
``cf2run localcloud credentials``): a service-account key (its ``token_uri``), user ADC, ADC with
impersonation, workload identity federation (``token_url``, ``service_account_impersonation_url``).
google-auth does not read every URL from the file: it compiles ``oauth2.googleapis.com/token`` into
user credentials (google/oauth2/credentials.py ``from_authorized_user_info``: "always overrides") and
``iamcredentials.googleapis.com`` into impersonation (google/auth/iam.py ``_IAM_ENDPOINT``,
``_IAM_IDTOKEN_ENDPOINT``; impersonated_credentials.py takes only the account from the file's URL),
and google.auth.default looks up a federated credential's project at ``cloudresourcemanager.googleapis.com``
(external_account.py ``_CLOUD_RESOURCE_MANAGER``; served here as ``GET /v1/projects/NUMBER``).
`route_google_auth` points those at a local cloud: the only change cf2run's local target makes
to google-auth, for the whole process that uses a local target (so such a process refuses
Google Cloud targets: `Cloud.gcp`).

Error answers are Google's: the token endpoint's ``{"error": "invalid_grant" | "invalid_scope", ...}``
(RFC 6749 §5.2, with the descriptions Google sends), the IAM API's ``{"error": {"code", "message",
"status"}}`` with Google's UNAUTHENTICATED and ACCESS_TOKEN_SCOPE_INSUFFICIENT messages.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cf2run.localcloud.iam.metadata import (
    CLOUD_PLATFORM_SCOPE,
    DEFAULT_PROJECT,
    LoopbackService,
    QuietHandler,
    TokenAuthority,
)

#: The OAuth clients of `gcloud auth application-default login` and of gcloud itself. Cloud Run
#: accepts user ID tokens issued to them besides tokens for the service URL: "Cloud Run trusts the
#: gcloud client IDs as valid aud values" (GoogleCloudPlatform/cloud-run-proxy#8, a Google
#: maintainer); both shown calling Cloud Run in googleapis/google-auth-library-java#469.
ADC_CLIENT_ID = "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com"
GCLOUD_CLIENT_ID = "32555940559.apps.googleusercontent.com"
GCLOUD_CLIENT_IDS = (ADC_CLIENT_ID, GCLOUD_CLIENT_ID)
#: The scopes `gcloud auth application-default login` asks for (gcloud's
#: googlecloudsdk/core/config.py CLOUDSDK_SCOPES plus openid/email for ADC).
ADC_SCOPES = ("openid", "https://www.googleapis.com/auth/userinfo.email", CLOUD_PLATFORM_SCOPE)
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
#: The audience a service-account assertion names, wherever it is sent (google-auth's
#: service_account.py signs it for this URL whatever the key file's token_uri).
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
WIF_AUDIENCE = ("//iam.googleapis.com/projects/000000000000/locations/global/workloadIdentityPools/"
                "local-pool/providers/local-provider")
DEFAULT_ACCOUNT = f"cf2run-local@{DEFAULT_PROJECT}.iam.gserviceaccount.com"
MAX_ASSERTION_LIFETIME_S = 3600

#: google.rpc.Status messages of Google's front end (seen on every googleapis.com API).
UNAUTHENTICATED = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                   "cookie or other valid authentication credential. See "
                   "https://developers.google.com/identity/sign-in/web/devconsole-project.")
MISSING_CREDENTIAL = ("Request is missing required authentication credential. Expected OAuth 2 access "
                      "token, login cookie or other valid authentication credential. See "
                      "https://developers.google.com/identity/sign-in/web/devconsole-project.")
INSUFFICIENT_SCOPES = "Request had insufficient authentication scopes."

Kind = Literal["service_account", "authorized_user", "impersonated_service_account", "external_account"]
KINDS: tuple[Kind, ...] = ("service_account", "authorized_user", "impersonated_service_account",
                           "external_account")
Answer = tuple[int, dict[str, Any]]


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value (None for any other)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def bearer_error(token: str | None, tokens: TokenAuthority, scopes: tuple[str, ...] = (CLOUD_PLATFORM_SCOPE,)
                 ) -> tuple[int, str, str] | None:
    """None when `token` is one of our access tokens with one of `scopes`; else (HTTP status,
    google.rpc status, message) as Google's front end refuses it."""
    if not token:
        return 401, "UNAUTHENTICATED", MISSING_CREDENTIAL
    claims = tokens.access(token)
    if claims is None:
        return 401, "UNAUTHENTICATED", UNAUTHENTICATED
    if not set(str(claims.get("scope", "")).split()) & set(scopes):
        return 403, "PERMISSION_DENIED", INSUFFICIENT_SCOPES
    return None


class Accounts:
    """The token services' logic (no HTTP here): keys, refresh tokens, and the answers."""

    def __init__(self, state_dir: Path, tokens: TokenAuthority, url: str = "") -> None:
        self.dir = Path(state_dir) / "accounts"
        self.tokens = tokens
        self.url = url  # where the token services listen (AccountsServer.start() sets it)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, state_dir: Path) -> Accounts:
        """The accounts of the local cloud serving from `state_dir` (Cf2RunError when none is)."""
        from cf2run.localcloud.endpoints import Endpoints

        url = Endpoints.read(Path(state_dir)).accounts
        return cls(Path(state_dir), TokenAuthority(Path(state_dir)), url)

    # -- credential files ------------------------------------------------------------------------

    def credentials_info(self, kind: Kind, account: str = DEFAULT_ACCOUNT,
                         user: str = "developer@example.com") -> dict[str, Any]:
        """A credentials file's content of `kind` pointing at this server: `account`'s key, `user`'s
        ADC, `user` impersonating `account`, or a federated workload impersonating `account`."""
        if kind == "service_account":
            return self._service_account_key(account)
        if kind == "authorized_user":
            return self._authorized_user(user)
        impersonation = f"{self.url}/v1/projects/-/serviceAccounts/{account}:generateAccessToken"
        if kind == "impersonated_service_account":
            return {"type": kind, "service_account_impersonation_url": impersonation,
                    "source_credentials": self._authorized_user(user), "delegates": []}
        subject_file = self.dir / "subject-tokens" / f"{secrets.token_hex(4)}.jwt"
        subject_file.parent.mkdir(parents=True, exist_ok=True)
        subject_file.write_text(self.tokens.mint(WIF_AUDIENCE, "workload@ci.example.com"))
        return {"type": kind, "audience": WIF_AUDIENCE,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": f"{self.url}/v1/token", "service_account_impersonation_url": impersonation,
                "credential_source": {"file": str(subject_file)}}

    def default_key_file(self) -> Path:
        """The local cloud's own service-account key (``accounts/cf2run-local.json``), what a local
        target uses unless told otherwise; written again when the token endpoint moved."""
        path = self.dir / "cf2run-local.json"
        try:
            info = json.loads(path.read_text())
            if info.get("token_uri") == f"{self.url}/token" and self._public_key(info["private_key_id"]):
                return path
        except (OSError, ValueError, KeyError):
            pass
        write_private(path, json.dumps(self._service_account_key(DEFAULT_ACCOUNT), indent=2))
        return path

    def _service_account_key(self, email: str) -> dict[str, Any]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        (self.dir / "keys").mkdir(parents=True, exist_ok=True)
        (self.dir / "keys" / f"{key_id}.pem").write_bytes(public)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        project = email.split("@", 1)[1].split(".", 1)[0]
        return {"type": "service_account", "project_id": project, "private_key_id": key_id,
                "private_key": private, "client_email": email, "client_id": str(secrets.randbits(64)),
                "token_uri": f"{self.url}/token", "universe_domain": "googleapis.com"}

    def _authorized_user(self, email: str) -> dict[str, Any]:
        refresh_token = "1//local-" + secrets.token_urlsafe(24)
        with self._lock:
            users = self._users()
            users[refresh_token] = {"email": email, "client_id": ADC_CLIENT_ID, "scopes": list(ADC_SCOPES)}
            write_private(self.dir / "users.json", json.dumps(users, indent=2))
        return {"type": "authorized_user", "client_id": ADC_CLIENT_ID, "client_secret": "local-secret",
                "refresh_token": refresh_token, "quota_project_id": DEFAULT_PROJECT,
                "universe_domain": "googleapis.com"}

    def _users(self) -> dict[str, dict[str, Any]]:
        try:
            return dict(json.loads((self.dir / "users.json").read_text()))
        except FileNotFoundError:
            return {}

    def _public_key(self, key_id: str) -> rsa.RSAPublicKey | None:
        if not key_id.isalnum():
            return None
        try:
            key = serialization.load_pem_public_key((self.dir / "keys" / f"{key_id}.pem").read_bytes())
        except OSError:
            return None
        return key if isinstance(key, rsa.RSAPublicKey) else None

    # -- oauth2.googleapis.com/token ---------------------------------------------------------------

    def token(self, form: dict[str, str]) -> Answer:
        grant = form.get("grant_type")
        if grant == JWT_BEARER:
            return self._assertion(form.get("assertion", ""))
        if grant == "refresh_token":
            return self._refresh(form)
        return 400, {"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {grant}"}

    def _assertion(self, assertion: str) -> Answer:
        claims = self._verified_assertion(assertion)
        if claims is None:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int) or exp <= now or \
                exp - iat > MAX_ASSERTION_LIFETIME_S:
            return 400, {"error": "invalid_grant",
                         "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) "
                                              "and in a reasonable timeframe. Check your iat and exp values "
                                              "in the JWT claim."}
        email = str(claims.get("iss", ""))
        if claims.get("target_audience"):
            return 200, {"id_token": self.tokens.mint(str(claims["target_audience"]), email)}
        scopes = str(claims.get("scope", "")).split()
        if not scopes:  # an unscoped key: what google-auth sends for credentials never given scopes
            return 400, {"error": "invalid_scope",
                         "error_description": "Invalid OAuth scope or ID token audience provided."}
        return 200, self._access(email, scopes)

    def _verified_assertion(self, assertion: str) -> dict[str, Any] | None:
        parts = assertion.split(".")
        if len(parts) != 3:
            return None
        try:
            header, claims = (json.loads(_b64decode(part)) for part in parts[:2])
            key = self._public_key(str(header.get("kid", "")))
            if key is None or header.get("alg") != "RS256":
                return None
            key.verify(_b64decode(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())
        except Exception:  # bad base64, JSON or signature: all "Invalid JWT Signature."
            return None
        if claims.get("aud") != GOOGLE_TOKEN_URI:
            return None
        return dict(claims)

    def _refresh(self, form: dict[str, str]) -> Answer:
        user = self._users().get(form.get("refresh_token", ""))
        if user is None or form.get("client_id") != user["client_id"]:
            return 400, {"error": "invalid_grant", "error_description": "Bad Request"}
        granted = list(user["scopes"])
        asked = form.get("scope", "").split() or granted
        if not set(asked) <= set(granted):
            return 400, {"error": "invalid_scope",
                         "error_description": "Some requested scopes were invalid. {invalid=[" +
                                              ", ".join(sorted(set(asked) - set(granted))) + "]}"}
        answer = self._access(user["email"], asked)
        answer["scope"] = " ".join(asked)
        if "openid" in asked:
            answer["id_token"] = self.tokens.mint(user["client_id"], user["email"])
        return 200, answer

    def _access(self, email: str, scopes: list[str]) -> dict[str, Any]:
        token, lifetime = self.tokens.mint_access(email, scopes)
        return {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}

    # -- sts.googleapis.com/v1/token ---------------------------------------------------------------

    def exchange(self, form: dict[str, str]) -> Answer:
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return 400, {"error": "invalid_request", "error_description": "Invalid value for \"grant_type\"."}
        subject = self.tokens.claims(form.get("subject_token", ""))
        if subject is None or subject.get("aud") != form.get("audience"):
            return 400, {"error": "invalid_grant", "error_description":
                         "The audience in ID Token does not match the expected audience."}
        principal = f"principal://iam.googleapis.com/{WIF_AUDIENCE.removeprefix('//iam.googleapis.com/')}" \
                    f"/subject/{subject.get('sub')}"
        scopes = form.get("scope", CLOUD_PLATFORM_SCOPE).split()
        token, lifetime = self.tokens.mint_access(principal, scopes)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": lifetime,
                     "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}

    # -- iamcredentials.googleapis.com -------------------------------------------------------------

    def impersonate(self, caller: str | None, account: str, method: str, body: dict[str, Any]) -> Answer:
        refused = bearer_error(caller, self.tokens, (CLOUD_PLATFORM_SCOPE, IAM_SCOPE))
        if refused is not None:
            status, code, message = refused
            return status, {"error": {"code": status, "message": message, "status": code}}
        if not account.endswith(".gserviceaccount.com"):
            return 404, {"error": {"code": 404, "status": "NOT_FOUND",
                                   "message": f"Not found; Gaia id not found for email {account}"}}
        if method == "generateIdToken":
            if not body.get("audience"):
                return 400, {"error": {"code": 400, "message": "Request contains an invalid argument.",
                                       "status": "INVALID_ARGUMENT"}}
            return 200, {"token": self.tokens.mint(str(body["audience"]), account)}
        scopes = [str(scope) for scope in body.get("scope") or []]
        if not scopes:
            return 400, {"error": {"code": 400, "message": "Request contains an invalid argument.",
                                   "status": "INVALID_ARGUMENT"}}
        lifetime = int(str(body.get("lifetime", "3600s")).removesuffix("s") or 3600)
        token, _ = self.tokens.mint_access(account, scopes, min(lifetime, 3600))
        expires = datetime.fromtimestamp(time.time() + min(lifetime, 3600), UTC)
        return 200, {"accessToken": token, "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}


    # -- cloudresourcemanager.googleapis.com/v1/projects/NUMBER ----------------------------------------

    def project(self, caller: str | None, number: str) -> Answer:
        """What google.auth.default asks of federated credentials: the project of the pool's number."""
        refused = bearer_error(caller, self.tokens)
        if refused is not None:
            status, code, message = refused
            return status, {"error": {"code": status, "message": message, "status": code}}
        return 200, {"projectNumber": number, "projectId": DEFAULT_PROJECT, "lifecycleState": "ACTIVE",
                     "name": DEFAULT_PROJECT}


class AccountsServer(LoopbackService):
    """`Accounts` over HTTP on 127.0.0.1 (see the module doc for the paths)."""

    def __init__(self, accounts: Accounts, port: int = 0) -> None:
        super().__init__(port)
        self.accounts = accounts

    def handler(self) -> type[QuietHandler]:
        return _handler(self.accounts)

    def start(self) -> None:
        super().start()
        self.accounts.url = self.url


def _handler(accounts: Accounts) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith("/v1/projects/") and path.count("/") == 3:
                status, answer = accounts.project(self._bearer(), path.rsplit("/", 1)[1])
            else:
                status, answer = 404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}
            self.send_body(status, json.dumps(answer).encode(), "application/json; charset=utf-8")

        def _bearer(self) -> str | None:
            return bearer_token(self.headers.get("Authorization", ""))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            path = urllib.parse.urlsplit(self.path).path
            if path == "/token":
                status, answer = accounts.token(_form(raw))
            elif path == "/v1/token":
                status, answer = accounts.exchange(_form(raw))
            elif path.startswith("/v1/projects/-/serviceAccounts/") and ":" in path:
                account, _, method = path.removeprefix("/v1/projects/-/serviceAccounts/").rpartition(":")
                try:
                    body = json.loads(raw or "{}")
                except ValueError:
                    body = None
                if method not in ("generateAccessToken", "generateIdToken") or not isinstance(body, dict):
                    status, answer = 400, {"error": {"code": 400, "message": "Invalid JSON payload received.",
                                                     "status": "INVALID_ARGUMENT"}}
                else:
                    status, answer = accounts.impersonate(self._bearer(), urllib.parse.unquote(account),
                                                          method, body)
            else:
                status, answer = 404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}
            self.send_body(status, json.dumps(answer).encode(), "application/json; charset=utf-8")

    return Handler


_routed_to: str | None = None


def routed_to() -> str | None:
    """The local cloud google-auth's token hosts point at in this process (None: Google's)."""
    return _routed_to


def route_google_auth(url: str) -> None:
    """Point the token hosts google-auth compiles in (see the module doc) at the local cloud at `url`,
    for the whole process: the local cloud named last wins, and Google Cloud targets are refused in
    this process from now on (cf2run.gcp.cloud.Cloud.gcp), rather than sending their tokens here."""
    global _routed_to
    _routed_to = url
    import google.auth.external_account
    import google.auth.iam
    import google.oauth2.credentials

    google.oauth2.credentials._GOOGLE_OAUTH2_TOKEN_ENDPOINT = f"{url}/token"  # type: ignore[attr-defined]
    base = f"{url}/v1/projects/-/serviceAccounts/{{}}"
    google.auth.iam._IAM_ENDPOINT = base + ":generateAccessToken"
    google.auth.iam._IAM_IDTOKEN_ENDPOINT = base + ":generateIdToken"
    google.auth.iam._IAM_SIGN_ENDPOINT = base + ":signBlob"
    google.auth.iam._IAM_SIGNJWT_ENDPOINT = base + ":signJwt"
    # google.auth.default asks Resource Manager for a federated credential's project.
    google.auth.external_account._CLOUD_RESOURCE_MANAGER = f"{url}/v1/projects/"


def _form(raw: str) -> dict[str, str]:
    return {key: values[0] for key, values in urllib.parse.parse_qs(raw).items()}


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (keys and refresh tokens), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.touch(mode=0o600)
    tmp.write_text(text)
    tmp.replace(path)
