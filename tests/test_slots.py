"""Slots of Prefect global concurrency limits (cf2run/fleet/slots.py), against a real Prefect server:
what another fleet or worker sharing the limit sees, and what the threads of one process see."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.context import SyncClientContext

from cf2run.fleet.slots import LocalQueue, Slot, settle, spend

pytestmark = pytest.mark.usefixtures("prefect_api")

LEASE_S = 60.0  # the shortest lease the server accepts


def active(client: SyncPrefectClient, name: str) -> int:
    return client.read_global_concurrency_limit_by_name(name).active_slots


def test_a_slot_is_held_on_the_server_and_given_back_even_when_the_work_fails(
        client: SyncPrefectClient, limit: str) -> None:
    queue = LocalQueue(1)
    with pytest.raises(RuntimeError), queue.slot(lambda: Slot.take(limit, LEASE_S)) as slot:
        assert slot.lease_id is not None
        assert active(client, limit) == 1, "other fleets and workers must see the slot taken"
        raise RuntimeError("the build broke")
    settle()  # given back in the background
    assert active(client, limit) == 0


def test_a_thread_waiting_in_the_same_process_gets_the_lease_handed_on(
        client: SyncPrefectClient, limit: str) -> None:
    queue = LocalQueue(1)
    leases: dict[str, object] = {}
    first_in = threading.Event()

    def first() -> None:
        with queue.slot(lambda: Slot.take(limit, LEASE_S)) as slot:
            leases["first"] = slot.lease_id
            first_in.set()
            deadline = time.monotonic() + 10
            while queue._waiting < 1 and time.monotonic() < deadline:  # the second thread waits
                time.sleep(0.01)

    def second() -> None:
        first_in.wait(10)
        with queue.slot(lambda: Slot.take(limit, LEASE_S)) as slot:
            leases["second"] = slot.lease_id
            leases["active while second holds it"] = active(client, limit)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert leases["second"] == leases["first"], "the lease should go to the waiting thread directly"
    assert leases["active while second holds it"] == 1
    settle()
    assert active(client, limit) == 0, "with nobody waiting, the slot goes back to the server"


def test_a_slot_held_elsewhere_is_waited_for_until_given_back(client: SyncPrefectClient, limit: str) -> None:
    elsewhere = Slot.take(limit, LEASE_S)  # another fleet's process, as far as this one can tell
    got_it = threading.Event()

    def wait_for_it() -> None:
        with LocalQueue(1).slot(lambda: Slot.take(limit, LEASE_S)):
            got_it.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert not got_it.wait(2.0), "a slot held by another process was taken twice"
    elsewhere.release()
    assert got_it.wait(40), "the slot given back elsewhere was never taken here"
    waiter.join(10)
    settle()
    assert active(client, limit) == 0


def test_a_due_lease_is_renewed_and_a_lost_one_only_warns(
        limit: str, caplog: pytest.LogCaptureFixture) -> None:
    slot = Slot.take(limit, LEASE_S)
    slot._renew_at = 0.0  # due now, instead of in 45 s
    with caplog.at_level(logging.WARNING, logger="cf2run.fleet.slots"):
        slot.keep()
    assert not caplog.records, caplog.text
    slot.release()
    settle()
    slot._renew_at = 0.0
    with caplog.at_level(logging.WARNING, logger="cf2run.fleet.slots"):
        slot.keep()
    assert "could not renew concurrency lease" in caplog.text


def test_a_renewal_through_a_closed_client_only_warns(limit: str, caplog: pytest.LogCaptureFixture) -> None:
    """What a slot kept or released after its flow run's API client closed meets (httpx raises
    RuntimeError, not an HTTPError): a warning, never an exception in the build it guards."""
    with SyncClientContext.get_or_create() as context:
        slot = Slot.take(limit, LEASE_S)
        context.client._client.close()
        slot._renew_at = 0.0
        with caplog.at_level(logging.WARNING, logger="cf2run.fleet.slots"):
            slot.keep()
    assert "could not renew concurrency lease" in caplog.text
    assert "client has been closed" in caplog.text
    slot.release()
    settle()


def test_a_missing_limit_is_not_waited_for_and_says_how_to_create_it(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cf2run.fleet.slots"):
        slot = Slot.take("cf2run-test-no-such-limit", LEASE_S)
        spend("cf2run-test-no-such-rate-limit", 1)
    assert slot.lease_id is None
    assert caplog.text.count("does not exist") == 2 and "cf2run setup" in caplog.text


def test_a_rate_limit_lets_a_burst_through_then_paces(client: SyncPrefectClient) -> None:
    name = f"cf2run-test-{uuid.uuid4().hex[:12]}"
    client.create_global_concurrency_limit(
        GlobalConcurrencyLimitCreate(name=name, limit=2, slot_decay_per_second=2.0))
    try:
        started = time.monotonic()
        spend(name, 2)
        burst = time.monotonic() - started
        spend(name, 1)
        paced = time.monotonic() - started
    finally:
        client.delete_global_concurrency_limit_by_name(name)
    assert burst < paced, (burst, paced)
    assert paced >= 0.3, "the third write within a second of two went through unpaced"


@pytest.mark.parametrize(("hold", "at_once"), [("lane", 2 * LocalQueue.LANES_PER_SLOT), ("turn", 2)],
                         ids=["lanes: twice the slots", "turns: as many as the slots"])
def test_lanes_and_turns_let_so_many_threads_in_and_the_rest_wait(hold: str, at_once: int) -> None:
    queue, inside, most = LocalQueue(2), [0], [0]
    lock, go = threading.Lock(), threading.Event()

    def prepare() -> None:
        with getattr(queue, hold)():
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            go.wait(10)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=prepare) for _ in range(7)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    with lock:
        assert inside[0] == at_once, f"not {at_once} threads in at once"
    go.set()
    for thread in threads:
        thread.join(10)
    assert most[0] == at_once and inside[0] == 0


def test_the_queue_takes_its_size_from_what_ensure_limits_read(client: SyncPrefectClient, limit: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet reads the limits when it starts (ensure_limits); its first build does not ask again."""
    from cf2run.fleet import quotas

    client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(limit=3))
    monkeypatch.setattr(quotas.QuotaLimits, "creates", lambda self: [
        GlobalConcurrencyLimitCreate(name=limit, limit=10)])
    assert quotas.ensure_limits() == [], "an existing limit is left as it is"
    client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(limit=5))
    assert quotas._queue_for(limit).size == 3, "read again instead of taken from ensure_limits"


def test_threads_asking_together_share_one_queue_per_limit(limit: str) -> None:
    from cf2run.fleet import quotas

    seen: list[LocalQueue] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait(10)
        seen.append(quotas._queue_for(limit))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(seen) == 8 and len({id(queue) for queue in seen}) == 1
    assert seen[0].size == 1
