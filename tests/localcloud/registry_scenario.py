"""One OCI distribution scenario, run against the local registry (test_registry.py) and against
Debian's docker-registry, distribution 2.8 (test_registry_contract.py): what passes on both is
how a real registry behaves.

Image refs stay GCP-shaped (``us-central1-docker.pkg.dev/...``); `RegistryClient.resolve`
sends them to the registry under test, as cf2run does on the local target.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cf2run.errors import RegistryError
from cf2run.gcp.oci import OCI_CONFIG, OCI_LAYER_TAR_GZIP, OCI_MANIFEST, ImageRef, Layer, RegistryClient

HOST = "us-central1-docker.pkg.dev"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Target:
    """A registry under test: its base URL and a client that resolves GCP hosts to it."""

    base_url: str
    client: RegistryClient
    tmp_path: Path

    def ref(self, tag: str | None = "v1") -> ImageRef:
        """A fresh image (its own repository) so scenarios never see each other's state."""
        return ImageRef(HOST, f"proj/repo/img-{uuid.uuid4().hex[:10]}", tag)

    def url(self, ref: ImageRef, path: str) -> str:
        return f"{self.base_url}/v2/{ref.repository}/{path}"


def make_target(base_url: str, tmp_path: Path) -> Target:
    return Target(base_url, RegistryClient(resolve=lambda host: base_url), tmp_path)


def _config(label: str) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "config": {"Labels": {"test": label}},
                       "rootfs": {"type": "layers", "diff_ids": []}}).encode()


def push_pull_by_tag_and_digest(t: Target) -> None:
    ref = t.ref("v1")
    layers = [os.urandom(3000), os.urandom(70_000)]
    digest = t.client.push_image(ref, _config("a"), [Layer(data=data) for data in layers])
    assert digest.startswith("sha256:")

    by_tag = t.client.head_manifest(ref)
    by_digest = t.client.head_manifest(ref.with_digest(digest))
    assert by_tag is not None and by_digest is not None
    assert by_tag.digest == by_digest.digest == digest
    assert by_tag.media_type == OCI_MANIFEST
    assert by_tag.size > 0

    for pull_ref in (ref, ImageRef(ref.host, ref.repository, digest=digest)):
        image = t.client.pull_image(pull_ref)
        assert image.digest == digest
        assert image.config["config"]["Labels"] == {"test": "a"}
        assert image.layers == layers
        assert [layer["mediaType"] for layer in image.manifest["layers"]] == [OCI_LAYER_TAR_GZIP] * 2
        assert image.manifest["config"]["mediaType"] == OCI_CONFIG

    manifest = t.client.get_manifest(ref.with_digest(digest))
    assert sha256(manifest.data) == digest
    assert manifest.media_type == OCI_MANIFEST
    # Pushing the same image again gives the same digest (the blobs are already there).
    assert t.client.push_image(ref, _config("a"), [Layer(data=data) for data in layers]) == digest


def chunked_blob_upload(t: Target) -> None:
    ref = t.ref("big")
    path = t.tmp_path / f"layer-{uuid.uuid4().hex}.tar.gz"
    data = os.urandom(5 * 1024 * 1024 + 123)
    path.write_bytes(data)

    digest = t.client.push_blob_file(ref, path, chunk_size=1024 * 1024)
    assert digest == sha256(data)
    assert t.client.blob_exists(ref, digest)
    assert t.client.get_blob(ref, digest) == data

    image_digest = t.client.push_image(ref, _config("big"), [Layer(path=path)])
    assert t.client.pull_image(ref.with_digest(image_digest)).layers == [data]


def tags_list(t: Target) -> None:
    ref = t.ref()
    for tag in ("b-tag", "a-tag", "v2"):
        t.client.push_image(ref.with_tag(tag), _config(tag), [Layer(data=tag.encode())])
    assert sorted(t.client.list_tags(ref)) == ["a-tag", "b-tag", "v2"]

    with pytest.raises(RegistryError) as err:
        t.client.list_tags(t.ref())
    assert (err.value.status, err.value.code) == (404, "NAME_UNKNOWN")


def unknown_manifest_and_blob(t: Target) -> None:
    ref = t.ref("v1")
    t.client.push_image(ref, _config("x"), [Layer(data=b"x")])
    missing = ref.with_tag("nope")
    assert t.client.head_manifest(missing) is None
    with pytest.raises(RegistryError) as err:
        t.client.get_manifest(missing)
    assert (err.value.status, err.value.code, err.value.transient) == (404, "MANIFEST_UNKNOWN", False)
    assert str(missing) in str(err.value)

    unknown = sha256(b"never pushed")
    assert not t.client.blob_exists(ref, unknown)
    with pytest.raises(RegistryError) as err:
        t.client.get_blob(ref, unknown)
    assert (err.value.status, err.value.code) == (404, "BLOB_UNKNOWN")


def blob_digest_mismatch(t: Target) -> None:
    ref = t.ref()
    with httpx.Client(base_url=t.base_url) as http:
        start = http.post(f"/v2/{ref.repository}/blobs/uploads/")
        assert start.status_code == 202
        location = start.url.join(start.headers["Location"])
        put = http.put(location.copy_merge_params({"digest": sha256(b"other bytes")}), content=b"these bytes")
    assert put.status_code == 400
    assert put.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert not t.client.blob_exists(ref, sha256(b"other bytes"))


def manifest_digest_mismatch(t: Target) -> None:
    ref = t.ref()
    config = _config("m")
    t.client.push_blob(ref, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                           "layers": []}).encode()
    with pytest.raises(RegistryError) as err:
        t.client.put_manifest(ref.with_digest(sha256(manifest + b" ")), manifest, OCI_MANIFEST)
    assert (err.value.status, err.value.code) == (400, "DIGEST_INVALID")
    # The same bytes under their own digest are accepted.
    accepted = t.client.put_manifest(ref.with_digest(sha256(manifest)), manifest, OCI_MANIFEST)
    assert accepted == sha256(manifest)


def manifest_blob_unknown(t: Target) -> None:
    ref = t.ref("v1")
    missing = sha256(b"config never pushed")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": missing, "size": 3},
                           "layers": []}).encode()
    with pytest.raises(RegistryError) as err:
        t.client.put_manifest(ref, manifest, OCI_MANIFEST)
    assert (err.value.status, err.value.code) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert t.client.head_manifest(ref) is None


def upload_protocol(t: Target) -> None:
    """The wire details docker and other clients rely on: headers, Range, streamed bodies.

    (An out-of-order Content-Range is 416 by the OCI spec but accepted by distribution 2.8,
    so that check is local-only, in test_registry.py.)
    """
    ref = t.ref()
    with httpx.Client(base_url=t.base_url) as http:
        ping = http.get("/v2/")
        assert ping.status_code == 200
        assert ping.headers["Docker-Distribution-API-Version"] == "registry/2.0"

        start = http.post(t.url(ref, "blobs/uploads/"))
        assert start.status_code == 202 and start.headers["Docker-Upload-UUID"]
        location = start.url.join(start.headers["Location"])

        # A PATCH with a streamed (chunked transfer-encoding) body, as the docker daemon sends.
        patch = http.patch(location, content=iter([b"hello ", b"world"]),
                           headers={"Content-Type": "application/octet-stream"})
        assert patch.status_code == 202
        assert patch.headers["Range"] == "0-10"
        location = patch.url.join(patch.headers["Location"])

        status = http.get(location)
        assert status.status_code == 204 and status.headers["Range"] == "0-10"

        data = b"hello world!"
        more = http.patch(location, content=b"!", headers={
            "Content-Type": "application/octet-stream", "Content-Range": "11-11"})
        assert more.status_code == 202
        location = more.url.join(more.headers["Location"])
        done = http.put(location.copy_merge_params({"digest": sha256(data)}))
        assert done.status_code == 201
        assert done.headers["Docker-Content-Digest"] == sha256(data)

        blob = http.get(t.url(ref, f"blobs/{sha256(data)}"))
        assert blob.status_code == 200 and blob.content == data
        assert blob.headers["Docker-Content-Digest"] == sha256(data)

        # Single-POST upload: a registry may store it (201) or open a session (202: PUT it there).
        octets = {"Content-Type": "application/octet-stream"}
        digest = {"digest": sha256(b"one shot")}
        monolithic = http.post(t.url(ref, "blobs/uploads/"), params=digest, content=b"one shot",
                               headers=octets)
        assert monolithic.status_code in (201, 202)
        if monolithic.status_code == 202:
            # Merge, not replace, the query: distribution keeps its upload state in the Location's.
            session = monolithic.url.join(monolithic.headers["Location"]).copy_merge_params(digest)
            assert http.put(session, content=b"one shot", headers=octets).status_code == 201
    assert t.client.get_blob(ref, sha256(b"one shot")) == b"one shot"


def cross_repository_mount(t: Target) -> None:
    """A blob pushed to one repository is mounted into another without an upload; a blob the
    registry does not have is not (and the upload the registry opened instead is cancelled)."""
    source, other = t.ref(), t.ref()
    data = os.urandom(10_000)
    digest = t.client.push_blob(source, data)
    assert not t.client.blob_exists(other, digest)
    assert t.client.mount_blob(other, digest, source.repository)
    assert t.client.get_blob(other, digest) == data
    assert not t.client.mount_blob(t.ref(), sha256(b"never pushed"), source.repository)


SCENARIOS: list[Callable[[Target], None]] = [
    push_pull_by_tag_and_digest,
    chunked_blob_upload,
    tags_list,
    unknown_manifest_and_blob,
    blob_digest_mismatch,
    manifest_digest_mismatch,
    manifest_blob_unknown,
    upload_protocol,
    cross_repository_mount,
]
