"""`kill -9` of a run holding build slots, for real: a flow run in a process of the test's own
takes a slot of a one-slot limit on a real Prefect server, and is killed.

What a user notices: the next fleet (`ensure_limits`, which every fleet and `cf2run setup` call)
takes the dead run's slot back at once instead of stalling until its lease runs out, and the
killed flow run shows Crashed, not Running forever; a live holder's slot is left alone. A killed
`cf2run fleet` that held no slot (its run recorded as it started, lease_holders.RUN_HOOKS) shows
Crashed after the next `cf2run setup` too.
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
from fleet_samples import write_fleet
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL

from cf2run.fleet.lease_holders import RUN_PREFIX
from cf2run.fleet.quotas import BUILD_LIMIT, QuotaLimits, ensure_limits
from cf2run.fleet.slots import Slot
from cf2run.localcloud.server import LocalCloud

pytestmark = pytest.mark.usefixtures("prefect_api")
ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 60.0  # the shortest lease the server accepts
CF2RUN = Path(sys.executable).with_name("cf2run")

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


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": str(PREFECT_API_URL.value())}


@pytest.fixture
def holder(limit: str) -> Iterator[subprocess.Popen[str]]:
    """A flow run in its own process that holds the limit's one slot (until killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, limit], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env=environment())
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


@pytest.fixture
def no_build_slot_left(client: SyncPrefectClient) -> Iterator[None]:
    """cf2run's concurrent-builds limit set to one slot, which the test holds: a fleet waits."""
    ensure_limits(client=client)
    saved = client.read_global_concurrency_limit_by_name(BUILD_LIMIT).limit
    ensure_limits(QuotaLimits(builds=1), replace=[BUILD_LIMIT], client=client)
    slot = Slot.take(BUILD_LIMIT, LEASE_S)
    yield
    slot.release()
    ensure_limits(QuotaLimits(builds=saved), replace=[BUILD_LIMIT], client=client)


def run_record(client: SyncPrefectClient, pid: int) -> UUID | None:
    """The flow run recorded as run by process `pid` (lease_holders.RUN_HOOKS), if any."""
    for variable in client.read_variables():
        if variable.name.startswith(RUN_PREFIX) and f'"pid": {pid},' in str(variable.value):
            return UUID(variable.name.removeprefix(RUN_PREFIX))
    return None


@pytest.mark.usefixtures("no_build_slot_left")
def test_a_killed_fleet_that_held_no_build_slot_shows_crashed_after_the_next_setup(
        client: SyncPrefectClient, localcloud: LocalCloud, tmp_path: Path) -> None:
    manifest = write_fleet(tmp_path, ["slotless"], localcloud_dir=localcloud.state_dir)
    fleet = subprocess.Popen([str(CF2RUN), "fleet", str(manifest)],
                             cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:  # killed while its build step waits for the slot the test holds
        deadline = time.monotonic() + 180
        while (flow_run := run_record(client, fleet.pid)) is None or not waiting_to_build(client, flow_run):
            assert fleet.poll() is None and time.monotonic() < deadline, "the fleet never got to its build"
            time.sleep(0.2)
        assert not [v for v in client.read_variables() if v.name.startswith("cf2run-lease-")
                    and f'"pid": {fleet.pid},' in str(v.value)], "it holds a slot"
    finally:
        fleet.send_signal(signal.SIGKILL)
        fleet.wait()
    assert client.read_flow_run(flow_run).state_name == "Running", "Prefect itself cannot tell"

    setup = subprocess.run([str(CF2RUN), "setup", "--pool",
                            f"kill-test-{fleet.pid}"], cwd=ROOT, env=environment(),
                           capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, setup.stdout + setup.stderr

    state = client.read_flow_run(flow_run).state
    assert state is not None and state.name == "Crashed", state
    assert f"pid {fleet.pid}" in (state.message or "")
    assert run_record(client, fleet.pid) is None, "the dead run's record was kept"


def waiting_to_build(client: SyncPrefectClient, flow_run: UUID) -> bool:
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))
    return any(run.name.startswith("build[") and run.state_name == "Running" for run in runs)


def test_a_fleet_that_ends_leaves_no_run_record(client: SyncPrefectClient, localcloud: LocalCloud,
                                               tmp_path: Path) -> None:
    manifest = write_fleet(tmp_path, ["recorded"], localcloud_dir=localcloud.state_dir)
    fleet = subprocess.Popen([str(CF2RUN), "fleet", str(manifest),
                              "--dry-run"], cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    output, _ = fleet.communicate(timeout=300)
    assert fleet.returncode == 0, output
    assert run_record(client, fleet.pid) is None, "a run that ended left its record"
