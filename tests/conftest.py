"""Shared fixtures: one local cloud per test session, reached through the official clients."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

# Prefect keeps results (the cross-run cache) and its database under PREFECT_HOME: give the
# test session its own, so tests neither see nor leave a user's cache. Set before any import
# of prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cf2run-test-prefect-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest

from cf2run.cloud import Cloud
from cf2run.localcloud.settings import LocalCloudSettings

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
