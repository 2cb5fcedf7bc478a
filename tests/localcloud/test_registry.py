"""The local Artifact Registry (cf2run.localcloud.registry.distribution) through
cf2run.gcp.oci.RegistryClient.

The scenarios in registry_scenario.py run here and, unchanged, against distribution 2.8 in
test_registry_contract.py. The tests below them are about the local registry only: fault
injection, many concurrent pushes, and a restart on the same state directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from registry_scenario import HOST, SCENARIOS, Target, make_target

from cf2run.errors import RegistryError, SpecError
from cf2run.gcp.oci import ImageRef, Layer, RegistryClient
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.settings import Fault, FaultInjector, LocalCloudSettings


def _server(state_dir: Path, *faults: Fault) -> RegistryServer:
    server = RegistryServer(state_dir, FaultInjector(LocalCloudSettings(faults=list(faults))))
    server.start()
    return server


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = _server(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(registry: RegistryServer, tmp_path: Path, scenario: Callable[[Target], None]) -> None:
    scenario(make_target(registry.url, tmp_path))


def test_injected_fault_is_transient_once_then_succeeds(tmp_path: Path) -> None:
    server = _server(tmp_path, Fault(method="Registry.HeadManifest", code="UNAVAILABLE", first_n=1))
    try:
        client = RegistryClient(resolve=lambda host: server.url)
        ref = ImageRef.parse(f"{HOST}/proj/repo/img:v1")
        digest = client.push_image(ref, b"{}", [Layer(data=b"layer")])

        with pytest.raises(RegistryError) as err:
            client.head_manifest(ref)
        assert err.value.transient
        assert err.value.status == 503  # a HEAD answer has no body, so no error code
        assert str(ref) in str(err.value)

        found = client.head_manifest(ref)
        assert found is not None and found.digest == digest
    finally:
        server.stop()


def test_concurrent_pushes_of_images_sharing_layers(registry: RegistryServer) -> None:
    """8 threads x 10 images, one shared base layer, one client: well over 500 requests."""
    client = RegistryClient(resolve=lambda host: registry.url)
    base = os.urandom(200_000)

    def push(worker: int) -> list[tuple[ImageRef, str, bytes]]:
        pushed = []
        for i in range(10):
            ref = ImageRef(HOST, f"proj/repo/concurrent-{i % 3}", f"w{worker}-{i}")
            own = os.urandom(1000)
            digest = client.push_image(ref, f'{{"w":{worker},"i":{i}}}'.encode(),
                                       [Layer(data=base), Layer(data=own)])
            pushed.append((ref, digest, own))
        return pushed

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [item for batch in pool.map(push, range(8)) for item in batch]

    for ref, digest, own in results:
        found = client.head_manifest(ref)
        assert found is not None and found.digest == digest
        assert client.pull_image(ref.with_digest(digest)).layers == [base, own]
    tags = {tag for i in range(3) for tag in client.list_tags(ImageRef(HOST, f"proj/repo/concurrent-{i}"))}
    assert len(tags) == 80


def test_images_survive_a_restart_on_the_same_state_dir(tmp_path: Path) -> None:
    server = _server(tmp_path)
    client = RegistryClient(resolve=lambda host: server.url)
    ref = ImageRef.parse(f"{HOST}/proj/repo/kept:v1")
    digest = client.push_image(ref, b'{"kept":true}', [Layer(data=b"kept layer")])
    server.stop()

    server = _server(tmp_path)
    try:
        image = client.pull_image(ref)
        assert image.digest == digest
        assert image.config == {"kept": True}
        assert image.layers == [b"kept layer"]
        assert client.list_tags(ref) == ["v1"]
    finally:
        server.stop()


def test_out_of_order_chunk_is_refused_with_416(registry: RegistryServer) -> None:
    """OCI distribution spec: a chunk that does not continue the upload gets 416 (stricter than
    distribution 2.8, which appends it)."""
    with httpx.Client(base_url=registry.url) as http:
        start = http.post("/v2/proj/repo/ooo/blobs/uploads/")
        location = start.headers["Location"]
        first = http.patch(location, content=b"hello", headers={"Content-Range": "0-4"})
        assert first.status_code == 202 and first.headers["Range"] == "0-4"
        late = http.patch(location, content=b"!", headers={"Content-Range": "2-2"})
        assert late.status_code == 416
        assert late.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        assert http.get(location).headers["Range"] == "0-4"


def test_injected_fault_answers_the_spec_error_body(tmp_path: Path) -> None:
    server = _server(tmp_path, Fault(method="Registry.ListTags", code="RESOURCE_EXHAUSTED"))
    try:
        client = RegistryClient(resolve=lambda host: server.url)
        with pytest.raises(RegistryError) as err:
            client.list_tags(ImageRef.parse(f"{HOST}/proj/repo/img"))
        assert (err.value.status, err.value.code, err.value.transient) == (429, "TOOMANYREQUESTS", True)
    finally:
        server.stop()


def test_a_stopped_registry_answers_no_more_even_on_open_connections(tmp_path: Path) -> None:
    server = _server(tmp_path)
    client = RegistryClient(resolve=lambda host: server.url)
    ref = ImageRef.parse(f"{HOST}/proj/repo/img:v1")
    client.push_image(ref, b"{}", [Layer(data=b"layer")])  # leaves a keep-alive connection open
    server.stop()
    with pytest.raises(RegistryError) as err:
        client.head_manifest(ref)
    assert err.value.transient
    assert "cannot reach the registry" in str(err.value)


@pytest.mark.parametrize(("text", "host", "repository", "tag", "digest"), [
    (f"{HOST}/proj/repo/img:v1", HOST, "proj/repo/img", "v1", None),
    (f"{HOST}/proj/repo/img@sha256:" + "a" * 64, HOST, "proj/repo/img", None, "sha256:" + "a" * 64),
    ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000", "a/b", "t", None),
    ("localhost:5000/a/b:t@sha256:" + "0" * 64, "localhost:5000", "a/b", "t", "sha256:" + "0" * 64),
    ("gcr.io/proj/img", "gcr.io", "proj/img", None, None),
])
def test_image_ref_parse_and_str(text: str, host: str, repository: str, tag: str | None,
                                 digest: str | None) -> None:
    ref = ImageRef.parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repository, tag, digest)
    assert str(ref) == text
    assert ImageRef.parse(str(ref)) == ref


def test_image_ref_with_tag_and_digest() -> None:
    ref = ImageRef.parse("us-central1-docker.pkg.dev/proj/repo/img:v1")
    digest = "sha256:" + "b" * 64
    assert str(ref.with_digest(digest)) == f"us-central1-docker.pkg.dev/proj/repo/img:v1@{digest}"
    assert ref.with_digest(digest).reference == digest
    assert ref.with_tag("v2").reference == "v2"
    assert ImageRef.parse("gcr.io/proj/img").reference == "latest"


@pytest.mark.parametrize("text", [
    "img:v1",  # no registry host
    "us-central1-docker.pkg.dev/Proj/repo/img",  # uppercase
    "us-central1-docker.pkg.dev/proj/repo/img:-bad",
    "us-central1-docker.pkg.dev/proj/repo/img@sha256:short",
])
def test_image_ref_rejects_invalid_references(text: str) -> None:
    with pytest.raises(SpecError, match="image reference"):
        ImageRef.parse(text)
