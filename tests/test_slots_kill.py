"""`kill -9` of a run holding build slots, for real: a flow run in a process of the test's own
takes a slot of a one-slot limit on a real Prefect server, and is killed.

What a user notices: the next fleet (`ensure_limits`, which every fleet and `cf2run setup` call)
takes the dead run's slot back at once instead of stalling until its lease runs out, and the
killed flow run shows Crashed, not Running forever; a live holder's slot is left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_URL

from cf2run.fleet.quotas import ensure_limits
from cf2run.fleet.slots import Slot

pytestmark = pytest.mark.usefixtures("prefect_api")
ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 60.0  # the shortest lease the server accepts

HOLDER = textwrap.dedent("""
    import sys, time
    from prefect import flow, task
    from cf2run.fleet.slots import Slot

    @task
    def build() -> None:
        Slot.take(sys.argv[1], 60.0)
        print("HELD", flush=True)
        time.sleep(3600)

    @flow
    def fleet() -> None:
        build()

    fleet()
""")


@pytest.fixture
def holder(limit: str) -> Iterator[subprocess.Popen[str]]:
    """A flow run in its own process that holds the limit's one slot (until killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, limit], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(ROOT),
                                    "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    assert process.stdout is not None and process.stdout.readline().strip() == "HELD"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def active(client: SyncPrefectClient, name: str) -> int:
    return client.read_global_concurrency_limit_by_name(name).active_slots


def flow_run_of(client: SyncPrefectClient, process: subprocess.Popen[str]) -> UUID:
    """The holder's flow run, from its lease's record."""
    records = [v for v in client.read_variables() if v.name.startswith("cf2run-lease-")
               and f'"pid": {process.pid},' in str(v.value)]
    assert len(records) == 1, records
    return UUID(str(records[0].value).split('"flow_run": "')[1].split('"')[0])


def test_a_killed_runs_slot_is_taken_back_by_the_next_fleet_and_its_flow_run_shows_crashed(
        client: SyncPrefectClient, limit: str, holder: subprocess.Popen[str]) -> None:
    flow_run = flow_run_of(client, holder)
    assert active(client, limit) == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert client.read_flow_run(flow_run).state_name == "Running", "Prefect itself cannot tell"

    ensure_limits(client=client)  # what the next fleet does first

    assert active(client, limit) == 0, "the dead run's slot is still held"
    started = time.monotonic()
    Slot.take(limit, LEASE_S).release()
    assert time.monotonic() - started < 10, "the next build waited for the dead lease"
    state = client.read_flow_run(flow_run).state
    assert state is not None and state.name == "Crashed"
    assert f"pid {holder.pid}" in (state.message or "")


def test_a_live_runs_slot_is_left_alone(client: SyncPrefectClient, limit: str,
                                        holder: subprocess.Popen[str]) -> None:
    ensure_limits(client=client)
    assert active(client, limit) == 1
    assert client.read_flow_run(flow_run_of(client, holder)).state_name == "Running"
