"""Token authentication, as Artifact Registry does it, through cf2run.gcp.oci.RegistryClient.

The local registry with ``auth=`` answers 401 and a Bearer challenge until the client brings a
token from ``/v2/token``, which it gets for Basic ``oauth2accesstoken:<access token>`` (what
Cloud.gcp sends). Real sockets, no mocks: this is the only place the client's token exchange runs.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from registry_scenario import (
    HOST,
    Target,
    chunked_blob_upload,
    manifest_blob_unknown,
    manifest_digest_mismatch,
    push_pull_by_tag_and_digest,
    tags_list,
    unknown_manifest_and_blob,
)

from cf2run.errors import RegistryError
from cf2run.gcp.oci import ImageRef, Layer, RegistryClient
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.settings import Fault, FaultInjector, LocalCloudSettings

SECRET = "ya29.local-access-token"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _accepts(username: str, password: str) -> bool:
    return (username, password) == ("oauth2accesstoken", SECRET)


def _server(state_dir: Path, *faults: Fault, token_ttl: float = 300.0) -> RegistryServer:
    server = RegistryServer(state_dir, FaultInjector(LocalCloudSettings(faults=list(faults))),
                            auth=_accepts, token_ttl=token_ttl)
    server.start()
    return server


def _client(server: RegistryServer, secret: str | None = SECRET) -> RegistryClient:
    auth = (lambda: basic("oauth2accesstoken", secret)) if secret is not None else None
    return RegistryClient(resolve=lambda host: server.url, auth=auth)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = _server(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


# The scenarios that go through RegistryClient only (the others speak raw HTTP without a token).
@pytest.mark.parametrize("scenario", [
    push_pull_by_tag_and_digest, chunked_blob_upload, tags_list, unknown_manifest_and_blob,
    manifest_digest_mismatch, manifest_blob_unknown,
], ids=lambda s: s.__name__)
def test_scenario_with_token_auth(registry: RegistryServer, tmp_path: Path,
                                  scenario: Callable[[Target], None]) -> None:
    scenario(Target(registry.url, _client(registry), tmp_path))


def test_challenge_token_and_bearer_on_the_wire(registry: RegistryServer) -> None:
    address = registry.address
    realm = f'Bearer realm="http://{address}/v2/token",service="{address}"'
    good, bad = ({"Authorization": basic("oauth2accesstoken", secret)} for secret in (SECRET, "x"))
    with httpx.Client(base_url=registry.url) as http:
        ping = http.get("/v2/")
        assert ping.status_code == 401
        assert ping.headers["WWW-Authenticate"] == realm  # no repository: no scope

        denied = http.get("/v2/proj/repo/wire/tags/list", headers=good)  # Basic is not enough
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"] == realm + ',scope="repository:proj/repo/wire:pull,push"'
        assert denied.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        error = denied.json()["errors"][0]
        assert error["code"] == "UNAUTHORIZED"
        assert error["detail"] == [{"Type": "repository", "Name": "proj/repo/wire", "Action": "pull"},
                                   {"Type": "repository", "Name": "proj/repo/wire", "Action": "push"}]

        params = {"service": address, "scope": "repository:proj/repo/wire:pull,push"}
        refused = http.get("/v2/token", params=params, headers=bad)
        assert refused.status_code == 401
        assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert http.get("/v2/token", params=params).status_code == 401  # anonymous

        granted = http.get("/v2/token", params=params, headers=good)
        assert granted.status_code == 200
        body = granted.json()
        assert body["token"] and body["access_token"] == body["token"]
        assert body["expires_in"] == 300
        bearer = {"Authorization": f"Bearer {body['token']}"}

        assert http.get("/v2/", headers=bearer).status_code == 200
        opened = http.get("/v2/proj/repo/wire/tags/list", headers=bearer)
        assert opened.status_code == 404 and opened.json()["errors"][0]["code"] == "NAME_UNKNOWN"

        # A token for one repository does not open another: 401, insufficient_scope (distribution).
        other = http.get("/v2/proj/repo/other/tags/list", headers=bearer)
        assert other.status_code == 401
        assert other.headers["WWW-Authenticate"] == (
            realm + ',scope="repository:proj/repo/other:pull,push",error="insufficient_scope"')

        forged = http.get("/v2/proj/repo/wire/tags/list", headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 401
        assert forged.headers["WWW-Authenticate"].endswith(',error="invalid_token"')

        # A pull-only token may not push.
        pull_only = http.get("/v2/token", params={**params, "scope": "repository:proj/repo/wire:pull"},
                             headers=good).json()["token"]
        headers = {"Authorization": f"Bearer {pull_only}"}
        assert http.get("/v2/proj/repo/wire/tags/list", headers=headers).status_code == 404
        push = http.post("/v2/proj/repo/wire/blobs/uploads/", headers=headers)
        assert push.status_code == 401
        assert push.headers["WWW-Authenticate"].endswith(',error="insufficient_scope"')


def test_wrong_secret_is_401_naming_the_ref_and_not_transient(registry: RegistryServer) -> None:
    client = _client(registry, secret="expired-token")
    ref = ImageRef.parse(f"{HOST}/proj/repo/denied:v1")
    for call in (lambda: client.head_manifest(ref),
                 lambda: client.push_image(ref, b"{}", [Layer(data=b"layer")])):
        with pytest.raises(RegistryError) as err:
            call()
        assert err.value.status == 401
        assert not err.value.transient
        assert str(ref) in str(err.value)
        assert err.value.hint and "credentials" in err.value.hint


def test_no_credentials_is_401(registry: RegistryServer) -> None:
    client = _client(registry, secret=None)
    ref = ImageRef.parse(f"{HOST}/proj/repo/anonymous:v1")
    with pytest.raises(RegistryError) as err:
        client.pull_image(ref)
    assert err.value.status == 401
    assert not err.value.transient
    assert str(ref) in str(err.value)


def test_one_token_per_repository_is_reused(registry: RegistryServer) -> None:
    client = _client(registry)
    ref = ImageRef.parse(f"{HOST}/proj/repo/reuse:v1")
    before = registry.token_requests
    digest = client.push_image(ref, b'{"n":1}', [Layer(data=os.urandom(1000)), Layer(data=b"two")])
    for _ in range(5):
        found = client.head_manifest(ref)
        assert found is not None and found.digest == digest
        assert client.pull_image(ref).digest == digest
    assert client.list_tags(ref) == ["v1"]
    assert registry.token_requests == before + 1

    other = ImageRef.parse(f"{HOST}/proj/repo/reuse-other:v1")
    client.push_image(other, b'{"n":2}', [Layer(data=b"other")])
    client.pull_image(other)
    client.pull_image(ref)
    assert registry.token_requests == before + 2


def test_an_expired_token_is_replaced(tmp_path: Path) -> None:
    server = _server(tmp_path, token_ttl=0.5)
    try:
        client = _client(server)
        ref = ImageRef.parse(f"{HOST}/proj/repo/expiring:v1")
        digest = client.push_image(ref, b"{}", [Layer(data=b"layer")])
        fetched = server.token_requests
        time.sleep(0.6)
        found = client.head_manifest(ref)
        assert found is not None and found.digest == digest
        assert server.token_requests == fetched + 1
    finally:
        server.stop()


def test_a_failing_token_endpoint_is_transient(tmp_path: Path) -> None:
    server = _server(tmp_path, Fault(method="Registry.GetToken", code="UNAVAILABLE", first_n=1))
    try:
        client = _client(server)
        ref = ImageRef.parse(f"{HOST}/proj/repo/flaky:v1")
        with pytest.raises(RegistryError) as err:
            client.head_manifest(ref)
        assert (err.value.status, err.value.transient) == (503, True)
        assert str(ref) in str(err.value)
        assert client.head_manifest(ref) is None
    finally:
        server.stop()


def test_concurrent_pushes_to_one_repository_with_tokens(registry: RegistryServer) -> None:
    client = _client(registry)
    base = os.urandom(50_000)
    before = registry.token_requests

    def push(i: int) -> tuple[ImageRef, str]:
        ref = ImageRef(HOST, "proj/repo/concurrent-auth", f"t{i}")
        return ref, client.push_image(ref, f'{{"i":{i}}}'.encode(), [Layer(data=base)])

    with ThreadPoolExecutor(max_workers=8) as pool:
        pushed = list(pool.map(push, range(16)))
    for ref, digest in pushed:
        assert client.pull_image(ref).digest == digest
    # Threads racing on the first challenge may each fetch one; never one per call.
    assert registry.token_requests - before <= 8


def test_without_auth_the_registry_stays_open(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path, FaultInjector(LocalCloudSettings()))
    with server, httpx.Client(base_url=server.url) as http:
        assert http.get("/v2/").status_code == 200
        assert http.get("/v2/token").status_code == 404
        assert "WWW-Authenticate" not in http.get("/v2/proj/repo/open/tags/list").headers
    assert server.tokens is None and server.token_requests == 0
