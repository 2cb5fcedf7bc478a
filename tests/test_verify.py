"""verify_built_image against a real local registry: hand-made images pushed over the OCI API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cf2run.errors import ImageVerificationError
from cf2run.gcp.oci import OCI_INDEX, OCI_MANIFEST, ImageRef, Layer, RegistryClient
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings
from cf2run.results import BuiltImage
from tasks.verify import verify_built_image

HOST = "us-central1-docker.pkg.dev"
WEB = {"type": "web", "command": ["functions-framework"],
       "args": ["--target", "hello", "--signature-type", "http"], "direct": True}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    state: Path = tmp_path_factory.mktemp("registry")
    with RegistryServer(state, FaultInjector(LocalCloudSettings())) as server, \
            RegistryClient(resolve=lambda host: server.url) as client:
        yield client


def new_ref() -> ImageRef:
    return ImageRef(HOST, f"proj/repo/fn-{uuid.uuid4().hex[:8]}", "src-1234")


def config(*, arch: str = "amd64", processes: list[dict[str, Any]] | None = None,
           metadata: bool = True) -> bytes:
    labels = {}
    if metadata:
        labels["io.buildpacks.build.metadata"] = json.dumps(
            {"processes": [WEB] if processes is None else processes, "buildpacks": []})
    return json.dumps({"os": "linux", "architecture": arch, "config": {"Labels": labels},
                       "rootfs": {"type": "layers", "diff_ids": []}}).encode()


def push(registry: RegistryClient, ref: ImageRef, **kwargs: Any) -> str:
    return registry.push_image(ref, config(**kwargs), [Layer(data=uuid.uuid4().bytes)])


def built(ref: ImageRef, digest: str) -> BuiltImage:
    return BuiltImage(image=str(ref), digest=digest, build_id="b-1", cached=False)


def test_good_image_is_verified_by_digest(registry: RegistryClient) -> None:
    ref = new_ref()
    digest = push(registry, ref)
    verified = verify_built_image(registry, built(ref, digest))
    assert verified.digest == digest
    assert verified.image == f"{ref.name}@{digest}"
    assert verified.platform == "linux/amd64"
    assert verified.web_process == "functions-framework --target hello --signature-type http"


def test_legacy_string_command_is_read(registry: RegistryClient) -> None:
    ref = new_ref()
    digest = push(registry, ref, processes=[{"type": "web", "command": "node server.js", "args": []}])
    assert verify_built_image(registry, built(ref, digest)).web_process == "'node server.js'"


def test_tag_moved_names_both_digests(registry: RegistryClient) -> None:
    ref = new_ref()
    reported = push(registry, ref)
    moved = push(registry, ref)  # someone pushed the tag again after the build
    with pytest.raises(ImageVerificationError) as raised:
        verify_built_image(registry, built(ref, reported))
    assert reported in str(raised.value) and moved in str(raised.value)
    assert "rebuild" in str(raised.value)


def test_missing_tag_is_reported(registry: RegistryClient) -> None:
    ref = new_ref()
    with pytest.raises(ImageVerificationError, match="not in the registry"):
        verify_built_image(registry, built(ref, "sha256:" + "0" * 64))


def test_arm64_image_is_refused(registry: RegistryClient) -> None:
    ref = new_ref()
    digest = push(registry, ref, arch="arm64")
    with pytest.raises(ImageVerificationError, match="linux/arm64, Cloud Run runs linux/amd64"):
        verify_built_image(registry, built(ref, digest))


def test_image_without_web_process_is_refused(registry: RegistryClient) -> None:
    ref = new_ref()
    digest = push(registry, ref, processes=[{"type": "worker", "command": ["run"]}])
    with pytest.raises(ImageVerificationError, match=r"no 'web' process \(processes: worker\)"):
        verify_built_image(registry, built(ref, digest))


def test_image_not_built_by_buildpacks_is_refused(registry: RegistryClient) -> None:
    ref = new_ref()
    digest = push(registry, ref, metadata=False)
    with pytest.raises(ImageVerificationError, match=r"no io\.buildpacks\.build\.metadata label"):
        verify_built_image(registry, built(ref, digest))


def push_index(registry: RegistryClient, ref: ImageRef, archs: list[str]) -> str:
    entries = []
    for arch in archs:
        digest = push(registry, ref.with_tag(f"only-{arch}"), arch=arch)
        manifest = registry.get_manifest(ref.with_tag(f"only-{arch}"))
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest.data),
                        "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return registry.put_manifest(ref, index, OCI_INDEX)


def test_index_uses_its_linux_amd64_entry(registry: RegistryClient) -> None:
    ref = new_ref()
    digest = push_index(registry, ref, ["arm64", "amd64"])
    verified = verify_built_image(registry, built(ref, digest))
    assert (verified.digest, verified.platform) == (digest, "linux/amd64")


def test_index_without_linux_amd64_is_refused(registry: RegistryClient) -> None:
    ref = new_ref()
    digest = push_index(registry, ref, ["arm64"])
    with pytest.raises(ImageVerificationError, match=r"no linux/amd64 entry \(it has: linux/arm64\)"):
        verify_built_image(registry, built(ref, digest))
