"""Fixtures of the real-server tests: one Prefect stack for the session (see stack.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prefect_server.processes import Service
from prefect_server.stack import PrefectStack, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    with running_stack(tmp_path_factory.mktemp("prefect-stack")) as started:
        yield started


@pytest.fixture(scope="session")
def second_worker(stack: PrefectStack) -> Service:
    return stack.start_worker("w2")
