"""The OCI distribution API, as a small synchronous client (httpx).

Artifact Registry speaks it at ``REGION-docker.pkg.dev``; the local cloud's registry and
Debian's ``docker-registry`` speak it too. Image references stay GCP-shaped everywhere:
`RegistryClient.resolve` decides where a host really is.

    client = RegistryClient(resolve=lambda host: "http://127.0.0.1:5000")
    digest = client.push_image(ImageRef.parse("us-central1-docker.pkg.dev/p/r/img:v1"),
                               config_bytes, [Layer(data=tgz)])
    image = client.pull_image(ImageRef.parse("us-central1-docker.pkg.dev/p/r/img:v1"))
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from cf2run.errors import RegistryError, SpecError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])

#: Grammar of github.com/distribution/reference (repository path components, tags, digests).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024


def sha256_digest(data: bytes) -> str:
    """The OCI digest (``sha256:<hex>``) of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def https(host: str) -> str:
    """The default `RegistryClient.resolve`: the registry at ``https://host``."""
    return f"https://{host}"


@dataclass(frozen=True)
class ImageRef:
    """``host/repository[:tag][@digest]``, e.g. ``us-central1-docker.pkg.dev/p/r/img:v1``."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse an image reference. The host is required (Artifact Registry refs always have one)."""
        rest, _, digest = text.strip().partition("@")
        host, sep, path = rest.partition("/")
        if not sep or not ("." in host or ":" in host or host == "localhost"):
            raise SpecError(f"image reference {text!r} has no registry host",
                            hint="write it as REGION-docker.pkg.dev/PROJECT/REPO/IMAGE[:TAG]")
        repository, tag = path, None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            repository, _, tag = path.rpartition(":")
        ref = cls(host=host, repository=repository, tag=tag, digest=digest or None)
        ref.validate(text)
        return ref

    def validate(self, text: str | None = None) -> None:
        shown = text if text is not None else str(self)
        if not REPOSITORY_RE.match(self.repository):
            raise SpecError(f"image reference {shown!r}: invalid repository {self.repository!r}",
                            hint="lowercase letters, digits and separators (. _ -), components joined by /")
        if self.tag is not None and not TAG_RE.match(self.tag):
            raise SpecError(f"image reference {shown!r}: invalid tag {self.tag!r}",
                            hint="letters, digits, _ . -, at most 128 characters, not starting with . or -")
        if self.digest is not None and not DIGEST_RE.match(self.digest):
            raise SpecError(f"image reference {shown!r}: invalid digest {self.digest!r}",
                            hint="a digest is sha256: followed by 64 lowercase hex digits")

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``host/repository``, without tag or digest."""
        return f"{self.host}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the manifest URL names: the digest if there is one, else the tag (``latest`` if none)."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageRef:
        ref = replace(self, digest=digest)
        ref.validate()
        return ref

    def with_tag(self, tag: str) -> ImageRef:
        ref = replace(self, tag=tag)
        ref.validate()
        return ref


@dataclass(frozen=True)
class Descriptor:
    """What a manifest HEAD tells: its media type, digest and size."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes (the digest is over them), its media type and digest."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


@dataclass(frozen=True)
class Layer:
    """One image layer: its bytes, or a file holding them (pushed in chunks)."""

    data: bytes | None = None
    path: Path | None = None
    media_type: str = OCI_LAYER_TAR_GZIP

    def __post_init__(self) -> None:
        if (self.data is None) == (self.path is None):
            raise ValueError("a Layer has either data or a path")


@dataclass(frozen=True)
class PulledImage:
    digest: str
    config: dict[str, Any]
    layers: list[bytes]
    manifest: dict[str, Any] = field(default_factory=dict)


def _error_detail(response: httpx.Response) -> tuple[str | None, str]:
    """The first spec error (code, message) of a registry answer, or (None, a body excerpt)."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return str(first.get("code")), str(first.get("message") or "")
    except (ValueError, AttributeError, IndexError, TypeError):
        return None, response.text[:200].strip()


#: Artifact Registry's Docker hosts: ``LOCATION-docker.pkg.dev`` (us-central1, europe-west1, us, ...).
_ARTIFACT_REGISTRY_HOST = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev(?::\d+)?$")
#: The role that may pull and push (https://cloud.google.com/artifact-registry/docs/access-control#roles).
WRITER_ROLE = "roles/artifactregistry.writer"


@dataclass(frozen=True)
class ArtifactRepository:
    """The Artifact Registry repository an image lives in: ``LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE``,
    a domain-scoped project ``example.com:proj`` written ``example.com/proj``
    (https://cloud.google.com/artifact-registry/docs/docker/names)."""

    project: str
    repository: str
    location: str | None  #: None when the host is not ``LOCATION-docker.pkg.dev``

    @classmethod
    def of(cls, host: str, path: str) -> ArtifactRepository | None:
        """From a host and an image path; None when the path names no repository and image in it."""
        parts = path.split("/")
        if "." in parts[0] and len(parts) > 1:  # project ids have no '.': the first part is a domain
            parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
        if len(parts) < 3:
            return None
        match = _ARTIFACT_REGISTRY_HOST.match(host.strip().lower())
        return cls(project=parts[0], repository=parts[1], location=match.group("location") if match else None)

    @property
    def resource(self) -> str:
        return f"projects/{self.project}/locations/{self.location or '-'}/repositories/{self.repository}"

    @property
    def create_command(self) -> str:
        return (f"gcloud artifacts repositories create {self.repository} --repository-format=docker "
                f"--location={self.location or 'LOCATION'} --project={self.project}")

    def access_hint(self, who: str = "the credentials") -> str:
        """What to check when Artifact Registry denies access: it answers a repository that does not
        exist exactly as one it may not be used (403 "... (or it may not exist)")."""
        return (f"check that the Artifact Registry repository {self.resource} exists (create it: "
                f"{self.create_command}) and that {who} may push to it ({WRITER_ROLE} on the "
                "repository or the project)")


def _hint(status: int, code: str | None, ref: ImageRef | None = None) -> str | None:
    repository = ArtifactRepository.of(ref.host, ref.repository) if ref is not None else None
    if status == 403 and repository is not None:
        return repository.access_hint()
    if status in (401, 403):
        return "check the registry credentials and that they may read/write this repository"
    if code == "NAME_UNKNOWN":
        return "check that the repository exists (Artifact Registry: gcloud artifacts repositories create)"
    if status == 429 or status >= 500:
        return "the registry is busy or failing; retrying may help"
    return None


@dataclass
class _Challenge:
    realm: str
    params: dict[str, str]


def _parse_bearer_challenge(header: str) -> _Challenge | None:
    """``Bearer realm="...",service="...",scope="..."`` -> its realm and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    realm = params.pop("realm", None)
    return _Challenge(realm, params) if realm else None


def basic_access_token(token: str) -> str:
    """The Basic credentials Artifact Registry's token exchange takes: user ``oauth2accesstoken``,
    an OAuth access token as the password (cloud.google.com/artifact-registry/docs/docker/authentication)."""
    return "Basic " + base64.b64encode(f"oauth2accesstoken:{token}".encode()).decode()


class RegistryClient:
    """OCI distribution API client. One httpx.Client per instance; safe to share between threads."""

    def __init__(self, resolve: Callable[[str], str] = https,
                 auth: Callable[[], str | None] | None = None,
                 *, timeout: float = 60.0, headers: Mapping[str, str] | None = None) -> None:
        self._resolve = resolve
        self._auth = auth
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True,
                                  headers=dict(headers or {}))
        self._tokens: dict[tuple[str, str], str] = {}  # (host, repository) -> "Bearer ..."
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifests -----------------------------------------------------------------------------

    def head_manifest(self, ref: ImageRef) -> Descriptor | None:
        """The manifest's descriptor, or None when the tag or digest is not there."""
        response = self._request("HEAD", ref, f"manifests/{ref.reference}", "HEAD manifest",
                                 headers={"Accept": MANIFEST_ACCEPT}, ok=(200, 404))
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest") or ref.digest
        if not digest:
            # Some registries leave the digest out of HEAD answers: then GET tells.
            return self._descriptor(self.get_manifest(ref))
        return Descriptor(media_type=response.headers.get("Content-Type", "").split(";")[0],
                          digest=digest, size=int(response.headers.get("Content-Length", 0)))

    def get_manifest(self, ref: ImageRef) -> Manifest:
        response = self._request("GET", ref, f"manifests/{ref.reference}", "GET manifest",
                                 headers={"Accept": MANIFEST_ACCEPT})
        data = response.content
        digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"GET manifest {ref}: the registry sent a manifest whose digest is {digest}",
                                status=response.status_code, code="DIGEST_INVALID")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            media_type = json.loads(data).get("mediaType") or media_type
        except (ValueError, AttributeError):
            raise RegistryError(f"GET manifest {ref}: the registry sent a manifest that is not JSON",
                                status=response.status_code, code="MANIFEST_INVALID") from None
        return Manifest(data=data, media_type=media_type, digest=digest)

    def put_manifest(self, ref: ImageRef, data: bytes, media_type: str) -> str:
        """Store a manifest under ref's tag (or digest); returns its digest."""
        response = self._request("PUT", ref, f"manifests/{ref.reference}", "PUT manifest",
                                 headers={"Content-Type": media_type}, content=data, ok=(201, 200))
        return response.headers.get("Docker-Content-Digest") or sha256_digest(data)

    def list_tags(self, ref: ImageRef) -> list[str]:
        tags: list[str] = []
        url: str | None = self._url(ref, "tags/list")
        while url:
            response = self._request("GET", ref, url, "list tags")
            tags.extend(response.json().get("tags") or [])
            next_link = response.links.get("next", {}).get("url")
            url = self._follow(response, ref, next_link) if next_link else None
        return tags

    # -- blobs ---------------------------------------------------------------------------------

    def blob_exists(self, ref: ImageRef, digest: str) -> bool:
        response = self._request("HEAD", ref, f"blobs/{digest}", f"HEAD blob {digest}", ok=(200, 404))
        return response.status_code == 200

    def get_blob(self, ref: ImageRef, digest: str) -> bytes:
        """A blob's bytes, checked against its digest."""
        data = self._request("GET", ref, f"blobs/{digest}", f"GET blob {digest}").content
        actual = sha256_digest(data)
        if actual != digest:
            raise RegistryError(f"GET blob {digest} from {ref.name}: the bytes received hash to {actual}",
                                code="DIGEST_INVALID")
        return data

    def mount_blob(self, ref: ImageRef, digest: str, from_repository: str) -> bool:
        """Link blob `digest` from another repository of the same registry into ref's (the OCI
        cross-repository mount); False when the registry did not (then upload it as usual)."""
        response = self._request("POST", ref, f"blobs/uploads/?mount={digest}&from={from_repository}",
                                 f"mount {digest} from {from_repository}", content=b"", ok=(201, 202))
        if response.status_code == 201:
            return True
        location = response.headers.get("Location")  # not mounted: an upload was started instead
        if location:
            self._request("DELETE", ref, self._follow(response, ref, location), "cancel upload",
                          ok=(204, 404))
        return False

    def push_blob(self, ref: ImageRef, data: bytes) -> str:
        """Upload a blob in one request (POST, then PUT with the digest); returns its digest."""
        digest = sha256_digest(data)
        location = self._start_upload(ref)
        self._request("PUT", ref, self._with_digest(location, digest), f"PUT blob {digest}",
                      headers={"Content-Type": "application/octet-stream"}, content=data, ok=(201,))
        return digest

    def push_blob_file(self, ref: ImageRef, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
        """Upload a file as a blob in chunks (POST, PATCH each chunk, PUT); returns its digest."""
        hasher = hashlib.sha256()
        location = self._start_upload(ref)
        offset = 0
        for chunk in _read_chunks(path, chunk_size):
            hasher.update(chunk)
            response = self._request(
                "PATCH", ref, location, f"PATCH upload of {path.name}",
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
                content=chunk, ok=(202,))
            location = self._location(response, ref, "PATCH upload")
            offset += len(chunk)
        digest = "sha256:" + hasher.hexdigest()
        self._request("PUT", ref, self._with_digest(location, digest), f"PUT blob {digest}",
                      headers={"Content-Type": "application/octet-stream"}, content=b"", ok=(201,))
        return digest

    # -- images --------------------------------------------------------------------------------

    def push_image(self, ref: ImageRef, config: bytes, layers: list[Layer]) -> str:
        """Push config and layers (skipping blobs already there) and an OCI image manifest.

        The manifest goes to ref's tag (or digest); returns the manifest digest.
        """
        descriptors = [self._ensure_blob(ref, layer) for layer in layers]
        config_digest = sha256_digest(config)
        if not self.blob_exists(ref, config_digest):
            self.push_blob(ref, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": descriptors,
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        return self.put_manifest(ref, data, OCI_MANIFEST)

    def pull_image(self, ref: ImageRef, platform: str = "linux/amd64") -> PulledImage:
        """Manifest, config and layers of an image, every blob checked against its digest.

        For an index (multi-platform image) the manifest for `platform` is used (else the first);
        `digest` is always the digest ref resolves to.
        """
        digest, body = self.image_manifest(ref, platform)
        config = json.loads(self.get_blob(ref, body["config"]["digest"]))
        layers = [self.get_blob(ref, layer["digest"]) for layer in body.get("layers", [])]
        return PulledImage(digest=digest, config=config, layers=layers, manifest=body)

    def image_manifest(self, ref: ImageRef, platform: str = "linux/amd64") -> tuple[str, dict[str, Any]]:
        """(the digest ref resolves to, the image manifest for `platform`), blobs left unfetched:
        for a puller that already holds some of the layers. An index is resolved as in `pull_image`."""
        top = self.get_manifest(ref)
        manifest = top
        if top.media_type in INDEX_MEDIA_TYPES:
            chosen = _pick_platform(top.json(), platform)
            if chosen is None:
                raise RegistryError(f"pull {ref}: the image index lists no manifests",
                                    code="MANIFEST_INVALID")
            manifest = self.get_manifest(replace(ref, digest=chosen))
        return top.digest, manifest.json()

    # -- plumbing ------------------------------------------------------------------------------

    def _ensure_blob(self, ref: ImageRef, layer: Layer) -> dict[str, Any]:
        if layer.data is not None:
            digest, size = sha256_digest(layer.data), len(layer.data)
            if not self.blob_exists(ref, digest):
                self.push_blob(ref, layer.data)
        else:
            assert layer.path is not None
            digest, size = _file_digest(layer.path), layer.path.stat().st_size
            if not self.blob_exists(ref, digest):
                self.push_blob_file(ref, layer.path)
        return {"mediaType": layer.media_type, "digest": digest, "size": size}

    @staticmethod
    def _descriptor(manifest: Manifest) -> Descriptor:
        return Descriptor(media_type=manifest.media_type, digest=manifest.digest, size=len(manifest.data))

    def _start_upload(self, ref: ImageRef) -> str:
        response = self._request("POST", ref, "blobs/uploads/", "start upload", content=b"", ok=(202,))
        return self._location(response, ref, "start upload")

    def _location(self, response: httpx.Response, ref: ImageRef, what: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{what} for {ref.name}: the registry answered without a Location",
                                status=response.status_code)
        return self._follow(response, ref, location)

    def _follow(self, response: httpx.Response, ref: ImageRef, link: str) -> str:
        """Where a Location or Link of `response` points. A registry that writes absolute URLs from
        the Host it was sent (distribution does) names ref's host: that goes where `resolve` puts it."""
        url = response.url.join(link)
        resolved = httpx.URL(self._resolve(ref.host))
        if url.netloc.decode() == ref.host and resolved.netloc != url.netloc:
            url = url.copy_with(scheme=resolved.scheme, netloc=resolved.netloc)
        return str(url)

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        return str(httpx.URL(location).copy_merge_params({"digest": digest}))

    def _named_host(self, ref: ImageRef, url: str) -> dict[str, str]:
        """``Host: ref.host`` for a request to where `resolve` put ref's host, when that is another
        address (the local cloud's registry): the registry learns the location from it, as
        Artifact Registry's own host names it. Nothing when the URL's host is ref's (Google)."""
        resolved = httpx.URL(self._resolve(ref.host)).netloc.decode()
        target = httpx.URL(url).netloc.decode()
        return {"Host": ref.host} if target == resolved and resolved != ref.host else {}

    def _url(self, ref: ImageRef, path: str) -> str:
        return f"{self._resolve(ref.host).rstrip('/')}/v2/{ref.repository}/{path}"

    def _request(self, method: str, ref: ImageRef, path_or_url: str, what: str, *,
                 headers: dict[str, str] | None = None, content: bytes | None = None,
                 ok: tuple[int, ...] = (200,)) -> httpx.Response:
        """One API call, authenticated, with a Bearer token exchange on a 401 challenge."""
        url = path_or_url if "://" in path_or_url else self._url(ref, path_or_url)
        headers = {**self._named_host(ref, url), **(headers or {})}
        key = (ref.host, ref.repository)
        for attempt in range(2):
            authorization = self._tokens.get(key) or (self._auth() if self._auth else None)
            if authorization:
                headers["Authorization"] = authorization
            try:
                response = self._http.request(method, url, headers=headers, content=content)
            except httpx.HTTPError as exc:
                raise RegistryError(
                    f"{what} for {ref}: cannot reach the registry at {url}: {exc}", transient=True,
                    hint="check the network and the registry address") from exc
            challenge = _parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
            if response.status_code == 401 and challenge and attempt == 0:
                token = self._fetch_token(challenge, ref)
                with self._lock:
                    self._tokens[key] = token
                continue
            break
        if response.status_code not in ok:
            code, message = _error_detail(response)
            raise RegistryError(
                f"{what} for {ref}: HTTP {response.status_code}" + (f" {code}" if code else "")
                + (f": {message}" if message else ""),
                status=response.status_code, code=code, hint=_hint(response.status_code, code, ref),
                registry_message=message)
        return response

    def _fetch_token(self, challenge: _Challenge, ref: ImageRef) -> str:
        """Exchange our credentials for a Bearer token at the challenge's realm, as docker does."""
        # Only service and scope go to the token server (a challenge's error= is for us), each scope
        # its own parameter; merged into the realm's own query (httpx's params= would replace it).
        scope = challenge.params.get("scope") or f"repository:{ref.repository}:pull,push"
        params: list[tuple[str, str | int | float | bool | None]] = [("scope", s) for s in scope.split()]
        if challenge.params.get("service"):
            params.insert(0, ("service", challenge.params["service"]))
        url = httpx.URL(challenge.realm).copy_merge_params(params)
        headers = self._named_host(ref, str(url))
        basic = self._auth() if self._auth else None
        if basic:
            headers["Authorization"] = basic
        try:
            response = self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise RegistryError(f"token request for {ref} to {challenge.realm} failed: {exc}",
                                transient=True) from exc
        if response.status_code != 200:
            code, message = _error_detail(response)
            raise RegistryError(f"token request for {ref}: HTTP {response.status_code}: {message}",
                                status=response.status_code, code=code,
                                hint=_hint(response.status_code, code, ref), registry_message=message)
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise RegistryError(f"token request for {ref}: the answer from {challenge.realm} has no token",
                                status=response.status_code)
        return f"Bearer {token}"


def _pick_platform(index: dict[str, Any], platform: str) -> str | None:
    manifests = index.get("manifests") or []
    os_name, _, arch = platform.partition("/")
    for entry in manifests:
        plat = entry.get("platform") or {}
        if plat.get("os") == os_name and plat.get("architecture") == arch:
            return str(entry["digest"])
    return str(manifests[0]["digest"]) if manifests else None


def _read_chunks(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    for chunk in _read_chunks(path, 1024 * 1024):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()
