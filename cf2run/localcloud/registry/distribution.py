"""Artifact Registry, locally: an OCI distribution server on 127.0.0.1.

Two parts, kept apart (as fake-gcs-server keeps its transport from its backend):

- `BlobStore`: content-addressed storage on disk. Everything is written to a temp file in the
  target directory and moved into place with ``os.replace``, so a crash or two concurrent
  pushes never leave a half-written blob, manifest or tag.

      STATE/blobs/sha256/ab/abcdef...           blob (and manifest) bytes, named by digest
      STATE/uploads/<uuid>                      an upload in progress
      STATE/repositories/<name>/_blobs/<hex>    blob linked into repository <name>
      STATE/repositories/<name>/_manifests/<hex>  manifest of <name>; holds its media type
      STATE/repositories/<name>/_tags/<tag>     tag -> manifest digest

  (``_`` keeps these apart from repository path components, which cannot start with it.)

- `RegistryServer`: the HTTP API of the distribution spec, on the stdlib's
  ``ThreadingHTTPServer`` in a daemon thread, with HTTP/1.1 keep-alive and spec error bodies.
  Every call first asks the `FaultInjector` about ``Registry.<Verb>``.

- `TokenAuth` (only with ``RegistryServer(auth=...)``): token authentication as Artifact Registry
  does it (distribution's token auth spec). A /v2/ call without a valid ``Bearer`` token gets 401
  and ``WWW-Authenticate: Bearer realm="http://ADDRESS/v2/token",service="ADDRESS",
  scope="repository:NAME:pull,push"``; ``GET /v2/token?service=..&scope=..`` with Basic
  credentials that ``auth(username, password)`` accepts (Artifact Registry: ``oauth2accesstoken``
  and an OAuth access token) answers ``{"token", "access_token", "expires_in"}``. A token opens
  the repositories of its scopes only, until it expires; a token that does not (any more) gets
  401 with ``error="invalid_token"`` or ``error="insufficient_scope"``, as distribution answers.

- Repositories (only with ``RegistryServer(repositories=...)``; the LocalCloud's registry has
  them): as on Artifact Registry, an image goes only into a repository created beforehand
  (`cf2run.localcloud.registry.repositories`). The token endpoint and every ``/v2/NAME/...`` call for a
  repository that does not exist answer 403 ``DENIED`` with Google's text; the location is the
  one the request's ``Host`` names (``LOCATION-docker.pkg.dev``; any location for a bare address).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cf2run.gcp.oci import (
    DIGEST_RE,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    REPOSITORY_RE,
    TAG_RE,
    ArtifactRepository,
)
from cf2run.localcloud.iam.metadata import TrackingServer
from cf2run.localcloud.registry.repositories import DockerRepositories, denied_message
from cf2run.localcloud.settings import FAULT_HTTP_STATUS, INTERNAL_HEADER, FaultInjector

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST})
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_IO_CHUNK = 1024 * 1024

#: The registry error code answered for each injectable fault code (distribution's errcode names).
_FAULT_ERROR_CODE = {
    "UNAVAILABLE": "UNAVAILABLE",
    "RESOURCE_EXHAUSTED": "TOOMANYREQUESTS",
    "PERMISSION_DENIED": "DENIED",
    "UNAUTHENTICATED": "UNAUTHORIZED",
    "NOT_FOUND": "NAME_UNKNOWN",
}


class ApiError(Exception):
    """An answer in the spec's error format: ``{"errors": [{"code", "message", "detail"}]}``."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()


# -- storage ---------------------------------------------------------------------------------------


def _hex(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise ApiError(400, "DIGEST_INVALID", f"invalid digest {digest!r}", {"digest": digest})
    return digest.split(":", 1)[1]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_IO_CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


class BlobStore:
    """Content-addressed blobs, uploads in progress, and per-repository links and tags on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._uploads = root / "uploads"
        self._uploads.mkdir(parents=True, exist_ok=True)
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    # blobs
    def blob_path(self, digest: str) -> Path:
        hexdigest = _hex(digest)
        return self.root / "blobs" / "sha256" / hexdigest[:2] / hexdigest

    def has_blob(self, repo: str, digest: str) -> bool:
        return (self._repo(repo) / "_blobs" / _hex(digest)).exists() and self.blob_path(digest).exists()

    def link_blob(self, repo: str, digest: str) -> None:
        link = self._repo(repo) / "_blobs" / _hex(digest)
        if not link.exists():
            _atomic_write(link, b"")

    # uploads
    def new_upload(self) -> str:
        upload_id = str(uuid.uuid4())
        (self._uploads / upload_id).touch()
        return upload_id

    def upload_size(self, upload_id: str) -> int:
        try:
            return self._upload_path(upload_id).stat().st_size
        except FileNotFoundError:
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", f"blob upload {upload_id} unknown") from None

    def append(self, upload_id: str, chunks: Iterable[bytes]) -> int:
        """Append to an upload; returns its new size."""
        path = self._upload_path(upload_id)
        self.upload_size(upload_id)  # 404 if unknown
        with path.open("ab") as f:
            for chunk in chunks:
                f.write(chunk)
            return f.tell()

    def commit(self, repo: str, upload_id: str, digest: str) -> None:
        """Move a finished upload into the store if its bytes hash to `digest`; link it into repo."""
        path = self._upload_path(upload_id)
        target = self.blob_path(digest)
        actual = _file_sha256(path)
        if actual != digest:
            self.cancel(upload_id)
            raise ApiError(400, "DIGEST_INVALID", "provided digest did not match uploaded content",
                           {"digest": digest, "actual": actual})
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        self.link_blob(repo, digest)

    def cancel(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._upload_path(upload_id).unlink()

    def _upload_path(self, upload_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f-]{36}", upload_id):
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", f"blob upload {upload_id} unknown")
        return self._uploads / upload_id

    # manifests and tags
    def put_manifest(self, repo: str, data: bytes, media_type: str) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = self.blob_path(digest)
        if not blob.exists():
            _atomic_write(blob, data)
        _atomic_write(self._repo(repo) / "_manifests" / _hex(digest), media_type.encode())
        return digest

    def get_manifest(self, repo: str, digest: str) -> tuple[bytes, str] | None:
        try:
            media_type = (self._repo(repo) / "_manifests" / _hex(digest)).read_text()
            return self.blob_path(digest).read_bytes(), media_type
        except FileNotFoundError:
            return None

    def has_manifest(self, repo: str, digest: str) -> bool:
        return (self._repo(repo) / "_manifests" / _hex(digest)).exists()

    def tag(self, repo: str, tag: str, digest: str) -> None:
        _atomic_write(self._repo(repo) / "_tags" / tag, digest.encode())

    def resolve(self, repo: str, reference: str) -> str | None:
        """The manifest digest a tag or digest names in repo, or None."""
        if ":" in reference:
            return reference if self.has_manifest(repo, reference) else None
        try:
            return (self._repo(repo) / "_tags" / reference).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def tags(self, repo: str) -> list[str] | None:
        """Sorted tags of repo, or None when it has never had one."""
        directory = self._repo(repo) / "_tags"
        if not directory.is_dir():
            return None
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))

    def _repo(self, repo: str) -> Path:
        return self.root / "repositories" / repo


# -- token auth ------------------------------------------------------------------------------------

TOKEN_PATH = "/v2/token"
_ACTIONS = frozenset({"pull", "push"})


class TokenAuth:
    """Bearer tokens, in memory: each grants actions on the repositories of its scopes until it expires."""

    def __init__(self, check: Callable[[str, str], bool], ttl: float = 300.0) -> None:
        self.check = check
        self.ttl = ttl
        self.requests = 0  # token requests answered, granted or not
        self._tokens: dict[str, tuple[float, dict[str, frozenset[str]]]] = {}  # token -> (expiry, grants)
        self._lock = threading.Lock()

    def grant(self, username: str | None, password: str | None, scopes: Iterable[str]) -> str | None:
        """A new token for ``repository:NAME:ACTIONS`` scopes, or None when the credentials are refused."""
        with self._lock:
            self.requests += 1
        if username is None or password is None or not self.check(username, password):
            return None
        grants: dict[str, frozenset[str]] = {}
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and REPOSITORY_RE.match(name):
                grants[name] = grants.get(name, frozenset()) | (_ACTIONS & set(actions.split(",")))
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._tokens = {t: entry for t, entry in self._tokens.items() if entry[0] > now}
            self._tokens[token] = (now + self.ttl, grants)
        return token

    def verify(self, token: str, name: str, action: str) -> str | None:
        """None when `token` allows `action` on repository `name` (any valid token: the base
        endpoint, name ""); else the challenge's error, ``invalid_token`` or ``insufficient_scope``."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[0] <= time.monotonic():
            return "invalid_token"
        if name and action not in entry[1].get(name, frozenset()):
            return "insufficient_scope"
        return None


# -- HTTP ------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # streamed instead of body (blob downloads)


Handler = Callable[["_RequestHandler", str, str], Response]


def _check_name(name: str) -> str:
    if not REPOSITORY_RE.match(name):
        raise ApiError(400, "NAME_INVALID", f"invalid repository name {name!r}", {"name": name})
    return name


def _json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data).encode(),
                    {"Content-Type": "application/json", **(headers or {})})


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections are dropped after this
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("registry %s - " + format, self.address_string(), *args)

    # -- request plumbing

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        self.query_lists = urllib.parse.parse_qs(split.query)
        self.query = {k: v[-1] for k, v in self.query_lists.items()}
        try:
            response = self._route(method, path)
        except ApiError as exc:
            response = Response(exc.status, exc.body(), {"Content-Type": "application/json", **exc.headers})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        except Exception:
            log.exception("registry: %s %s failed", method, self.path)
            self.close_connection = True  # the request body may be half read
            response = Response(500, ApiError(500, "UNKNOWN", "internal error").body(),
                                {"Content-Type": "application/json"})
        self._send(response, head=method == "HEAD")

    def _route(self, method: str, path: str) -> Response:
        tokens = self.server.tokens
        if tokens is not None and path == TOKEN_PATH:
            if method != "GET":
                raise ApiError(405, "UNSUPPORTED", f"{method} is not supported on {path}")
            self._check_fault("GetToken")
            return _token(self, tokens)
        for pattern, handlers in _ROUTES:
            match = pattern.fullmatch(path)
            if not match:
                continue
            entry = handlers.get(method)
            if entry is None:
                raise ApiError(405, "UNSUPPORTED", f"{method} is not supported on {path}")
            verb, handler = entry
            groups = match.groupdict()
            if tokens is not None:
                self._authorize(tokens, _check_name(groups["name"]) if "name" in groups else "", method)
            self._check_fault(verb)
            name = _check_name(groups["name"]) if "name" in groups else ""
            if name:
                self.check_repository(name, push=method not in ("GET", "HEAD"))
            return handler(self, name, groups.get("ref", ""))
        raise ApiError(404, "NOT_FOUND", f"no such endpoint: {path}")

    def check_repository(self, name: str, push: bool) -> None:
        """403 DENIED, as Artifact Registry answers, when image `name`'s repository does not exist
        (in the location the request's Host names); nothing when the server does not check."""
        repositories = self.server.repositories
        if repositories is None:
            return
        repository = ArtifactRepository.of(self.headers.get("Host", ""), name)
        if repository is not None and repositories.exists(repository.project, repository.repository,
                                                          repository.location):
            return
        # Google's body has the one error and no detail (go-containerregistry prints "DENIED: "
        # and the message alone: GoogleContainerTools/skaffold#6743).
        raise ApiError(403, "DENIED", denied_message(
            repository or ArtifactRepository(project=name, repository="-", location=None), push))

    def _check_fault(self, verb: str) -> None:
        if self.headers.get(INTERNAL_HEADER) == self.server.faults.internal_key:
            return  # the local cloud's own push or pull: not the caller's traffic
        fault = self.server.faults.check(f"Registry.{verb}")
        if fault is not None:
            status = FAULT_HTTP_STATUS.get(fault.code, 500)
            raise ApiError(status, _FAULT_ERROR_CODE.get(fault.code, "UNKNOWN"), fault.message)

    def _authorize(self, tokens: TokenAuth, name: str, method: str) -> None:
        """Pass with a Bearer token good for this call; else 401 with distribution's challenge."""
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        error = None
        if scheme.lower() == "bearer" and token.strip():
            error = tokens.verify(token.strip(), name, "pull" if method in ("GET", "HEAD") else "push")
            if error is None:
                return
        address = self.server.address
        challenge = f'Bearer realm="http://{address}{TOKEN_PATH}",service="{address}"'
        detail = None
        if name:
            challenge += f',scope="repository:{name}:pull,push"'
            detail = [{"Type": "repository", "Name": name, "Action": action} for action in ("pull", "push")]
        if error:
            challenge += f',error="{error}"'
        raise ApiError(401, "UNAUTHORIZED", "authentication required", detail,
                       headers={"WWW-Authenticate": challenge})

    def _send(self, response: Response, head: bool) -> None:
        self._drain()
        size = response.file.stat().st_size if response.file else len(response.body)
        self.send_response(response.status)
        headers = {"Docker-Distribution-API-Version": "registry/2.0", **response.headers}
        if response.status != 204:  # a 204 has no body and no Content-Length (RFC 9110)
            headers["Content-Length"] = str(size)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        if response.file is not None:
            with response.file.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, _IO_CHUNK)
        else:
            self.wfile.write(response.body)

    def body_chunks(self) -> Iterator[bytes]:
        """The request body, as it arrives (Content-Length or chunked transfer encoding)."""
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            yield from self._read_chunked()
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            data = self.rfile.read(min(remaining, _IO_CHUNK))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            remaining -= len(data)
            yield data

    def body(self, limit: int) -> bytes:
        data = bytearray()
        for chunk in self.body_chunks():
            data += chunk
            if len(data) > limit:
                self.close_connection = True
                raise ApiError(413, "SIZE_INVALID", f"body larger than {limit} bytes")
        return bytes(data)

    def _read_chunked(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection mid-body")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            remaining = size
            while remaining > 0:
                data = self.rfile.read(min(remaining, _IO_CHUNK))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                remaining -= len(data)
                yield data
            self.rfile.readline()

    def _drain(self) -> None:
        """Read an unread request body so the connection stays usable for the next request."""
        if not self._body_read and not self.close_connection:
            try:
                for _ in self.body_chunks():
                    pass
            except (ConnectionError, TimeoutError, ValueError):
                self.close_connection = True

    @property
    def store(self) -> BlobStore:
        return self.server.store


# -- endpoints -------------------------------------------------------------------------------------


def _ping(req: _RequestHandler, name: str, ref: str) -> Response:
    return _json_response(200, {})


def _token(req: _RequestHandler, tokens: TokenAuth) -> Response:
    """``GET /v2/token?service=..&scope=..`` with Basic credentials: a Bearer token for the scopes."""
    username = password = None
    scheme, _, value = req.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):  # bad base64 (binascii.Error) or not UTF-8
            username, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            if not sep:
                username = password = None
    scopes = [scope for param in req.query_lists.get("scope", []) for scope in param.split()]
    token = tokens.grant(username, password, scopes)
    if token is None:
        raise ApiError(401, "UNAUTHORIZED", "invalid username or password",
                       headers={"WWW-Authenticate": f'Basic realm="{req.server.address}"'})
    for scope in scopes:  # Artifact Registry refuses a token for a repository that does not exist
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            req.check_repository(name, push="push" in actions.split(","))
    return _json_response(200, {"token": token, "access_token": token,
                                "expires_in": max(1, round(tokens.ttl))})


def _blob(req: _RequestHandler, name: str, digest: str) -> Response:
    if not req.store.has_blob(name, digest):
        raise ApiError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
    return Response(200, headers={"Content-Type": "application/octet-stream",
                                  "Docker-Content-Digest": digest},
                    file=req.store.blob_path(digest))


def _blob_created(name: str, digest: str) -> Response:
    return Response(201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _upload_status(status: int, name: str, upload_id: str, size: int) -> Response:
    return Response(status, headers={
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Docker-Upload-UUID": upload_id,
        "Range": f"0-{max(size - 1, 0)}",
    })


def _start_upload(req: _RequestHandler, name: str, ref: str) -> Response:
    mount, source = req.query.get("mount"), req.query.get("from")
    if mount and source and REPOSITORY_RE.match(source) and req.store.has_blob(source, mount):
        req.store.link_blob(name, mount)
        return _blob_created(name, mount)
    upload_id = req.store.new_upload()
    digest = req.query.get("digest")
    if digest:  # monolithic upload: POST ?digest= with the whole blob
        _hex(digest)
        req.store.append(upload_id, req.body_chunks())
        req.store.commit(name, upload_id, digest)
        return _blob_created(name, digest)
    return _upload_status(202, name, upload_id, 0)


def _patch_upload(req: _RequestHandler, name: str, upload_id: str) -> Response:
    size = req.store.upload_size(upload_id)
    content_range = req.headers.get("Content-Range")
    if content_range:
        match = re.fullmatch(r"(?:bytes )?(\d+)-(\d+)", content_range.strip())
        if not match or int(match.group(1)) != size or int(match.group(2)) < int(match.group(1)):
            raise ApiError(416, "BLOB_UPLOAD_INVALID",
                           f"Content-Range {content_range} does not continue the upload at {size}")
    size = req.store.append(upload_id, req.body_chunks())
    return _upload_status(202, name, upload_id, size)


def _put_upload(req: _RequestHandler, name: str, upload_id: str) -> Response:
    digest = req.query.get("digest")
    if not digest:
        raise ApiError(400, "DIGEST_INVALID", "digest query parameter missing")
    _hex(digest)
    req.store.append(upload_id, req.body_chunks())
    req.store.commit(name, upload_id, digest)
    return _blob_created(name, digest)


def _get_upload(req: _RequestHandler, name: str, upload_id: str) -> Response:
    return _upload_status(204, name, upload_id, req.store.upload_size(upload_id))


def _cancel_upload(req: _RequestHandler, name: str, upload_id: str) -> Response:
    req.store.upload_size(upload_id)  # 404 if unknown
    req.store.cancel(upload_id)
    return Response(204)


def _get_manifest(req: _RequestHandler, name: str, reference: str) -> Response:
    digest = req.store.resolve(name, reference)
    found = req.store.get_manifest(name, digest) if digest else None
    if digest is None or found is None:
        raise ApiError(404, "MANIFEST_UNKNOWN", "manifest unknown", {"name": name, "reference": reference})
    data, media_type = found
    return Response(200, data, {"Content-Type": media_type, "Docker-Content-Digest": digest})


def _put_manifest(req: _RequestHandler, name: str, reference: str) -> Response:
    data = req.body(MAX_MANIFEST_BYTES)
    is_digest = ":" in reference
    if is_digest:
        _hex(reference)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != reference:
            raise ApiError(400, "DIGEST_INVALID", "manifest digest did not match the reference",
                           {"digest": reference, "actual": actual})
    elif not TAG_RE.match(reference):
        raise ApiError(400, "TAG_INVALID", f"invalid tag {reference!r}", {"tag": reference})
    manifest, media_type = _parse_manifest(data, req.headers.get("Content-Type", ""))
    _check_references(req.store, name, manifest, media_type)
    digest = req.store.put_manifest(name, data, media_type)
    if not is_digest:
        req.store.tag(name, reference, digest)
    return Response(201, headers={"Location": f"/v2/{name}/manifests/{digest}",
                                  "Docker-Content-Digest": digest})


def _parse_manifest(data: bytes, content_type: str) -> tuple[dict[str, Any], str]:
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise ApiError(400, "MANIFEST_INVALID", f"manifest is not a JSON object: {exc}") from None
    declared = manifest.get("mediaType")
    header = content_type.split(";")[0].strip()
    if declared and header and header != declared:
        raise ApiError(400, "MANIFEST_INVALID",
                       f"mediaType {declared} does not match Content-Type {header}")
    media_type = declared or header
    if media_type not in MANIFEST_MEDIA_TYPES or manifest.get("schemaVersion") != 2:
        raise ApiError(400, "MANIFEST_INVALID", f"unsupported manifest media type {media_type!r}",
                       {"mediaType": media_type})
    return manifest, media_type


def _check_references(store: BlobStore, name: str, manifest: dict[str, Any], media_type: str) -> None:
    """Every blob (or, for an index, every manifest) a manifest names must already be in repo."""
    try:
        if media_type in INDEX_MEDIA_TYPES:
            missing = [m["digest"] for m in manifest.get("manifests") or []
                       if not store.has_manifest(name, m["digest"])]
        else:
            layers = manifest.get("layers") or []
            digests = [manifest["config"]["digest"], *(layer["digest"] for layer in layers)]
            missing = [d for d in digests if not store.has_blob(name, d)]
    except (KeyError, TypeError) as exc:
        raise ApiError(400, "MANIFEST_INVALID", f"manifest lacks a field: {exc}") from None
    if missing:
        raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", {"digest": missing[0]})


def _list_tags(req: _RequestHandler, name: str, ref: str) -> Response:
    tags = req.store.tags(name)
    if tags is None:
        raise ApiError(404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name})
    last = req.query.get("last")
    if last:
        tags = [t for t in tags if t > last]
    headers = {}
    limit = req.query.get("n")
    if limit and limit.isdigit() and int(limit) < len(tags):
        tags = tags[: int(limit)]
        headers["Link"] = f'</v2/{name}/tags/list?n={limit}&last={tags[-1]}>; rel="next"'
    return _json_response(200, {"name": name, "tags": tags}, headers)


_NAME = r"/v2/(?P<name>.+)"
_ROUTES: list[tuple[re.Pattern[str], dict[str, tuple[str, Handler]]]] = [
    (re.compile(r"/v2/?"), {"GET": ("Ping", _ping)}),
    (re.compile(_NAME + r"/tags/list"), {"GET": ("ListTags", _list_tags)}),
    (re.compile(_NAME + r"/manifests/(?P<ref>[^/]+)"), {
        "GET": ("GetManifest", _get_manifest),
        "HEAD": ("HeadManifest", _get_manifest),
        "PUT": ("PutManifest", _put_manifest)}),
    (re.compile(_NAME + r"/blobs/uploads/?"), {"POST": ("StartUpload", _start_upload)}),
    (re.compile(_NAME + r"/blobs/uploads/(?P<ref>[^/]+)"), {
        "GET": ("GetUpload", _get_upload),
        "PATCH": ("PatchUpload", _patch_upload),
        "PUT": ("PutUpload", _put_upload),
        "DELETE": ("CancelUpload", _cancel_upload)}),
    (re.compile(_NAME + r"/blobs/(?P<ref>[^/]+)"), {
        "GET": ("GetBlob", _blob),
        "HEAD": ("HeadBlob", _blob)}),
]


class _HTTPServer(TrackingServer):
    """The registry's listener (open connections tracked: stopping also ends idle keep-alive ones)."""

    request_queue_size = 128

    def __init__(self, port: int, store: BlobStore, faults: FaultInjector,
                 tokens: TokenAuth | None = None, repositories: DockerRepositories | None = None) -> None:
        self.store = store
        self.faults = faults
        self.tokens = tokens
        self.repositories = repositories
        super().__init__(("127.0.0.1", port), _RequestHandler)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class RegistryServer:
    """The local Artifact Registry: ``start()``, ``address`` (``127.0.0.1:PORT``), ``stop()``.

    With `auth` (``auth(username, password)`` decides a token request's Basic credentials), it
    wants Bearer tokens as Artifact Registry does; tokens live `token_ttl` seconds. Without, open.
    With `repositories`, images go only into repositories created there (403 DENIED for the
    rest, as Artifact Registry answers); without, into any.
    """

    def __init__(self, state_dir: Path, faults: FaultInjector, port: int = 0, *,
                 auth: Callable[[str, str], bool] | None = None, token_ttl: float = 300.0,
                 repositories: DockerRepositories | None = None) -> None:
        self.store = BlobStore(Path(state_dir))
        self.tokens = TokenAuth(auth, token_ttl) if auth is not None else None
        self.repositories = repositories
        self._faults = faults
        self._fixed_port = port
        self._port = port
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a daemon thread. A restart reuses the previous port when it is still free."""
        if self._server is not None:
            return
        try:
            self._server = _HTTPServer(self._port, self.store, self._faults, self.tokens, self.repositories)
        except OSError:
            if not self._port or self._fixed_port:
                raise
            self._server = _HTTPServer(0, self.store, self._faults, self.tokens, self.repositories)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="localcloud-registry",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.end_connections(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def port(self) -> int:
        """The port it listens on (or last listened on); 0 before the first start()."""
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def token_requests(self) -> int:
        """How many token requests (granted or refused) it has answered; 0 without `auth`."""
        return self.tokens.requests if self.tokens is not None else 0

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

