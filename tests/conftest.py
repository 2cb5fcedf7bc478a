"""Shared fixtures: one local cloud per test session, reached through the official clients."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

# Everything the session creates lives under one temporary directory: local clouds' state,
# tmp_path, and PREFECT_HOME (results = the cross-run cache, and the database), so tests neither
# see nor leave a user's cache, and leaked processes can be found by their paths. Set before
# any import of prefect.
SESSION_TMP = tempfile.mkdtemp(prefix="cf2run-tests-")
os.environ["TMPDIR"] = tempfile.tempdir = SESSION_TMP
os.environ["PREFECT_HOME"] = os.path.join(SESSION_TMP, "prefect-home")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# As the CLI does: tests that call tasks' functions outside a flow (a rate limit) start Prefect's
# ephemeral API, whose start can outlast Prefect's default 20 s on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402

from cf2run.gcp.cloud import Cloud  # noqa: E402
from cf2run.localcloud.settings import LocalCloudSettings  # noqa: E402

if TYPE_CHECKING:
    from cf2run.localcloud.server import LocalCloud


@pytest.fixture(scope="session")
def localcloud() -> Iterator[LocalCloud]:
    """A running local cloud (ephemeral state dir) shared by the whole session."""
    from cf2run.localcloud.server import LocalCloud

    with LocalCloud(settings=LocalCloudSettings()) as cloud:
        yield cloud


@pytest.fixture
def knobs(localcloud: LocalCloud) -> Iterator[LocalCloudSettings]:
    """The session cloud's settings, put back as they were after the test."""
    saved = localcloud.settings.model_dump()
    yield localcloud.settings
    for name, value in LocalCloudSettings(**saved):
        setattr(localcloud.settings, name, value)


@pytest.fixture(scope="session")
def cloud(localcloud: LocalCloud) -> Cloud:
    """The official Google clients, pointed at the session's local cloud."""
    return Cloud.local(localcloud.endpoints)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server for tests that run flows (about 10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _session_processes() -> set[int]:
    """Live processes (other than pytest) running in or on this session's temporary directory:
    revisions (their working directory is an unpacked image), fake-gcs-server (its state),
    `cf2run localcloud serve`, Prefect servers and workers started by tests."""
    found = set()
    marker = SESSION_TMP.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd").encode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (marker in cmdline or cwd.startswith(marker)):
            found.add(int(proc.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """After the whole suite, no revision or storage emulator process started by it is left."""
    yield
    deadline = time.monotonic() + 10
    while (leaked := _session_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leaked, f"processes outlived the test session (local cloud, servers): {sorted(leaked)}"


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    """A Prefect client of the test's server (with `prefect_api`)."""
    with get_client(sync_client=True) as client:
        yield client


@pytest.fixture
def limit(client: SyncPrefectClient) -> Iterator[str]:
    """A concurrency limit of one slot, only this test's."""
    name = f"cf2run-test-{uuid.uuid4().hex[:12]}"
    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    yield name
    client.delete_global_concurrency_limit_by_name(name)
