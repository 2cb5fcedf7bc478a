"""Shared fixtures: one local cloud per test session, reached through the official clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cf2run.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings


@pytest.fixture(scope="session")
def localcloud() -> Iterator[LocalCloud]:
    """A running local cloud (ephemeral state dir) shared by the whole session."""
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
