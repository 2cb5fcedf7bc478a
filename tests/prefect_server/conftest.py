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


#: The workers' shared result storage of `stack_without_shared_disk`, on its local cloud.
RESULTS_BUCKET = "cf2run-results-test"
#: Flow runs a worker of `stack_without_shared_disk` runs at once: the fleet's and one function's
#: on one worker leave the other functions to the other worker.
SPREAD_LIMIT = 2


@pytest.fixture(scope="session")
def stack_without_shared_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    """Two workers sharing nothing but the Prefect server, the local cloud and the checkout they
    run from: each its own PREFECT_HOME and working directory, results on the local cloud's
    Cloud Storage (`cf2run setup --results-bucket`)."""
    with running_stack(tmp_path_factory.mktemp("no-shared-disk"), results_bucket=RESULTS_BUCKET,
                       separate_workers=True, worker_limit=SPREAD_LIMIT) as started:
        started.start_worker("w2", SPREAD_LIMIT)
        yield started
