"""The local Cloud Storage (fake-gcs-server started by cf2run.localcloud.storage.emulator), through the
official google-cloud-storage client over a real socket."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core.exceptions import PreconditionFailed
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from cf2run.localcloud.storage.emulator import StorageServer

BUCKET = "test_cloudbuild"


def _client(server: StorageServer) -> storage.Client:
    return storage.Client(project="test", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                          client_options={"api_endpoint": server.url})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with StorageServer(tmp_path_factory.mktemp("storage")) as running:
        running.ensure_bucket(BUCKET)
        yield running


@pytest.fixture
def bucket(server: StorageServer) -> storage.Bucket:
    return _client(server).bucket(BUCKET)


def test_upload_download_round_trip(bucket: storage.Bucket) -> None:
    blob = bucket.blob("source/small.txt")
    blob.upload_from_string(b"hello from cf2run", content_type="text/plain")
    assert blob.generation  # the upload tells the object's generation

    fetched = bucket.get_blob("source/small.txt")
    assert fetched is not None and fetched.generation == blob.generation
    assert fetched.download_as_bytes() == b"hello from cf2run"


def test_large_resumable_upload(bucket: storage.Bucket, tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024)
    path = tmp_path / "big.tgz"
    path.write_bytes(data)
    blob = bucket.blob("source/big.tgz")
    blob.chunk_size = 5 * 1024 * 1024  # forces the resumable (chunked) upload path
    blob.upload_from_filename(str(path))

    assert bucket.blob("source/big.tgz").download_as_bytes() == data


def test_if_generation_match_zero_refuses_an_existing_object(bucket: storage.Bucket) -> None:
    bucket.blob("source/once.tgz").upload_from_string(b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("source/once.tgz").upload_from_string(b"second", if_generation_match=0)
    assert bucket.blob("source/once.tgz").download_as_bytes() == b"first"


def test_ensure_bucket_is_idempotent(server: StorageServer) -> None:
    server.ensure_bucket("twice")
    server.ensure_bucket("twice")
    assert "twice" in {b.name for b in _client(server).list_buckets()}


def test_objects_survive_a_restart(tmp_path: Path) -> None:
    server = StorageServer(tmp_path)
    server.start()
    try:
        server.ensure_bucket("kept")
        _client(server).bucket("kept").blob("a/b.txt").upload_from_string(b"kept bytes")
        server.stop()
        server.start()
        assert _client(server).bucket("kept").blob("a/b.txt").download_as_bytes() == b"kept bytes"
        assert (tmp_path / "fake-gcs-server.log").exists()
    finally:
        server.stop()


def test_serves_hundreds_of_requests(bucket: storage.Bucket) -> None:
    """The wrapper's own start() hangs after ~500 requests (its stderr pipe fills); ours must not."""
    for i in range(300):
        blob = bucket.blob(f"many/{i}")
        blob.upload_from_string(str(i).encode())
        assert blob.download_as_bytes() == str(i).encode()
