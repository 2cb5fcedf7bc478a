"""What the fault knob reaches: every call a caller makes (Cloud Storage's front end included,
as Google's JSON API answers a 503), counted, and never the local cloud's own traffic (Cloud
Build's push and Cloud Run's pull carry the internal key and pass)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from google.api_core.exceptions import ServiceUnavailable

from cf2run.errors import RegistryError
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import ImageRef, Layer, RegistryClient
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import INTERNAL_HEADER, Fault, FaultInjector, LocalCloudSettings


def test_storage_uploads_fail_as_the_json_api_answers_then_succeed(
        localcloud: LocalCloud, cloud: Cloud, knobs: LocalCloudSettings) -> None:
    bucket = cloud.storage.create_bucket(f"faults-{uuid.uuid4().hex[:8]}")
    knobs.faults = [Fault(method="Storage.POST", code="UNAVAILABLE", first_n=1, message="backend down")]
    before = localcloud.faults.calls["Storage.POST"]
    blob = bucket.blob("a.txt")
    with pytest.raises(ServiceUnavailable, match="backend down"):
        blob.upload_from_string(b"hello", retry=None)
    blob.upload_from_string(b"hello", retry=None)
    assert bucket.blob("a.txt").download_as_bytes() == b"hello"
    assert localcloud.faults.calls["Storage.POST"] - before == 2


def test_the_local_clouds_own_registry_traffic_is_exempt_from_faults(tmp_path: Path) -> None:
    faults = FaultInjector(LocalCloudSettings(faults=[Fault(method="*", code="UNAVAILABLE")]))
    server = RegistryServer(tmp_path, faults)
    server.start()
    ref = ImageRef.parse("us-central1-docker.pkg.dev/proj/repo/img:v1")
    try:
        internal = RegistryClient(resolve=lambda host: server.url,
                                  headers={INTERNAL_HEADER: faults.internal_key})
        digest = internal.push_image(ref, b"{}", [Layer(data=b"layer")])
        assert internal.head_manifest(ref) is not None
        assert faults.calls.total() == 0, "internal calls were counted as the caller's"

        caller = RegistryClient(resolve=lambda host: server.url, headers={INTERNAL_HEADER: "guessed"})
        with pytest.raises(RegistryError) as error:
            caller.get_manifest(ref)
        assert error.value.transient and faults.injected["Registry.GetManifest"] == 1
        assert digest
    finally:
        server.stop()
