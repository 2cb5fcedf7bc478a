"""ID tokens for private local services, and a metadata-server lookalike that hands them out.

On GCP a caller of a private Cloud Run service sends ``Authorization: Bearer ID_TOKEN`` whose
audience is the service URL; code on Google infrastructure gets that token from the metadata
server. The local cloud does the same with its own signing key (one per state dir):

    curl -H 'Metadata-Flavor: Google' \\
      'http://METADATA/computeMetadata/v1/instance/service-accounts/default/identity?audience=URL'

google-auth's ``google.oauth2.id_token.fetch_id_token`` finds this server too when the
environment sets ``GCE_METADATA_HOST`` and ``GCE_METADATA_IP`` to its ``host:port`` (before
google-auth is imported). The tokens are JWTs signed with HS256: only the local cloud verifies them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ISSUER = "https://accounts.localcloud.cf2run"  # Google's is https://accounts.google.com
DEFAULT_EMAIL = "local-caller@local-project.iam.gserviceaccount.com"
DEFAULT_PROJECT = "local-project"
TOKEN_LIFETIME_S = 3600
CLOCK_SKEW_S = 60
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_HEADER = {"alg": "HS256", "typ": "JWT", "kid": "cf2run-localcloud"}
#: Google's access tokens start with ``ya29.``; ours say they are local, so one is never mistaken
#: for the other in a log.
ACCESS_PREFIX = "ya29.local."


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _same_audience(a: str, b: str) -> bool:
    """Cloud Run accepts its URL with or without a trailing slash."""
    return a.rstrip("/") == b.rstrip("/")


class TokenAuthority:
    """Mints and verifies the local cloud's ID tokens with a secret kept in the state dir.

    The secret is created once (``STATE_DIR/metadata/signing.key``, mode 0600), so tokens
    minted before a restart of a persistent local cloud stay valid after it.
    """

    def __init__(self, state_dir: Path) -> None:
        self._key = _load_or_create_key(Path(state_dir) / "metadata" / "signing.key")

    def mint(self, audience: str, email: str = DEFAULT_EMAIL, lifetime_s: int = TOKEN_LIFETIME_S) -> str:
        """An ID token for `audience` (a service or tag URL, or an OAuth client id), valid for one hour."""
        now = int(time.time())
        return self._seal({"iss": ISSUER, "aud": audience, "azp": email, "sub": email, "email": email,
                           "email_verified": True, "iat": now, "exp": now + lifetime_s})

    def mint_access(self, email: str, scopes: Iterable[str], lifetime_s: int = TOKEN_LIFETIME_S
                    ) -> tuple[str, int]:
        """(an OAuth 2.0 access token of `email` for `scopes`, its lifetime in seconds). Like
        Google's ``ya29.`` tokens it is opaque to callers; only the local cloud reads it."""
        now = int(time.time())
        claims = {"iss": ISSUER, "typ": "access", "sub": email, "scope": " ".join(scopes), "iat": now,
                  "exp": now + lifetime_s}
        return ACCESS_PREFIX + self._seal(claims), lifetime_s

    def access(self, token: str) -> dict[str, Any] | None:
        """The claims of one of our unexpired access tokens (``sub``, ``scope``), else None."""
        if not token.startswith(ACCESS_PREFIX):
            return None
        claims = self.claims(token.removeprefix(ACCESS_PREFIX))
        return claims if claims is not None and claims.get("typ") == "access" else None

    def _seal(self, claims: dict[str, Any]) -> str:
        signing_input = ".".join(_b64encode(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (_HEADER, claims))
        return f"{signing_input}.{self._sign(signing_input)}"

    def verify(self, token: str, audiences: str | Iterable[str]) -> bool:
        """True when `token` is ours, unexpired, and its audience is one of `audiences`."""
        claims = self.claims(token)
        if claims is None:
            return False
        wanted = [audiences] if isinstance(audiences, str) else list(audiences)
        aud = claims.get("aud")
        if claims.get("typ") == "access":
            return False
        return isinstance(aud, str) and any(_same_audience(aud, a) for a in wanted)

    def claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token whose signature, issuer and lifetime check out, else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign(signing_input), parts[2]):
            return None
        try:
            header = json.loads(_b64decode(parts[0]))
            claims = json.loads(_b64decode(parts[1]))
        except ValueError:
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return None
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            return None
        if claims.get("iss") != ISSUER or exp <= now or iat > now + CLOCK_SKEW_S:
            return None
        return claims

    def _sign(self, signing_input: str) -> str:
        return _b64encode(hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest())


def _load_or_create_key(path: Path) -> bytes:
    """Read the signing key, creating it (0600, atomically, once) if it is not there."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key first: then theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


class QuietHandler(BaseHTTPRequestHandler):
    """Base handler of the local cloud's HTTP listeners: HTTP/1.1, no access log on stderr."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_body(self, status: int, body: bytes, content_type: str,
                  headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class TrackingServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its open connections, so that stopping it also ends idle
    keep-alive ones (`end_connections`), as a stopped process's would end."""

    daemon_threads = True

    def server_bind(self) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().server_bind()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error while serving %s", client_address, exc_info=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def end_connections(self, how: int = socket.SHUT_RD) -> None:
        """Stop reading from every open connection (`how`): an idle keep-alive connection ends
        (the client's next request on it goes to a new connection, which is refused), a request
        whose answer is being written still gets it (unless `how` is SHUT_RDWR)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(how)


class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.server = TrackingServer(("127.0.0.1", port), handler)
        self.port: int = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"http-{self.port}",
                                        kwargs={"poll_interval": 0.25}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting requests, end idle connections and close the socket (requests in flight
        may finish)."""
        self.server.shutdown()
        self.server.end_connections()
        self.server.server_close()


class LoopbackService:
    """An HTTP API of the local cloud: `handler()` served on 127.0.0.1 from `start()` to `stop()`."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._listener: LoopbackServer | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> None:
        if self._listener is None:
            self._listener = LoopbackServer(self.handler(), self._port)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the server must be started)."""
        if self._listener is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._listener.url


class MetadataServer(LoopbackService):
    """The parts of the GCE/Cloud Run metadata server that callers of private services need."""

    def __init__(self, tokens: TokenAuthority, port: int = 0, *, project_id: str = DEFAULT_PROJECT,
                 email: str = DEFAULT_EMAIL) -> None:
        super().__init__(port)
        self.tokens = tokens
        self.project_id = project_id
        self.email = email

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _metadata_handler(self)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the value for ``GCE_METADATA_HOST``."""
        return self.url.removeprefix("http://")

    def __enter__(self) -> MetadataServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, path: str, query: dict[str, list[str]], flavor: str | None) -> tuple[int, str, str]:
        """(status, content type, body) for a GET of `path`, as the metadata server answers."""
        if path in ("/", ""):
            return 200, "application/text", "computeMetadata/\n"
        if not path.startswith("/computeMetadata/v1/"):
            return 404, "text/html", google_error_page(404, path)
        if flavor != "Google":
            return 403, "text/html", google_error_page(
                403, path, "Missing Metadata-Flavor:Google header.")
        item = path.removeprefix("/computeMetadata/v1/").rstrip("/")
        account_prefix = "instance/service-accounts/"
        if item == "project/project-id":
            return 200, "application/text", self.project_id
        if item.startswith(account_prefix):
            account, _, attribute = item.removeprefix(account_prefix).partition("/")
            if account not in ("default", self.email):
                return 404, "text/html", google_error_page(404, path)
            if attribute == "identity":
                audience = (query.get("audience") or [""])[0]
                if not audience:
                    return 400, "text/html", "non-empty audience parameter required"
                return 200, "text/plain", self.tokens.mint(audience, self.email)
            if attribute == "token":  # what compute_engine.Credentials refresh from
                asked = (query.get("scopes") or [""])[0]
                token, lifetime = self.tokens.mint_access(self.email, asked.split(",") if asked
                                                          else [CLOUD_PLATFORM_SCOPE])
                return 200, "application/json", json.dumps(
                    {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})
            if attribute == "email":
                return 200, "application/text", self.email
            if attribute == "":
                info = {"aliases": ["default"], "email": self.email,
                        "scopes": [CLOUD_PLATFORM_SCOPE]}
                return 200, "application/json", json.dumps(info)
        return 404, "text/html", google_error_page(404, path)


def _metadata_handler(server: MetadataServer) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            status, content_type, body = server.answer(
                url.path, urllib.parse.parse_qs(url.query), self.headers.get("Metadata-Flavor"))
            self.send_body(status, body.encode(), content_type,
                           [("Metadata-Flavor", "Google"), ("Server", "Metadata Server for VM")])

    return Handler


def google_error_page(status: int, path: str, detail: str = "") -> str:
    """The HTML error page Google's front ends answer 401, 403 and 404 with."""
    code = f"<code>{html.escape(path)}</code>"
    if status == 403:
        reason = "Forbidden"
        what = f"Your client does not have permission to get URL {code} from this server."
    elif status == 401:  # Cloud Run, a refused ID token (google/adk-python#3814)
        reason = "Unauthorized"
        what = f"Your client does not have permission to the requested URL {code}."
    else:
        reason, what = "Not Found", f"The requested URL {code} was not found on this server."
    return (f"<html><head>\n<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n"
            f"<title>{status} {reason}</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n"
            f"<h1>Error: {reason}</h1>\n<h2>{what}</h2>\n<h2>{html.escape(detail)}</h2>\n</body></html>\n")
