"""Prefect global concurrency limits that stand for the Google quotas a fleet shares.

Every flow run and every worker that talks to the same Prefect API takes its slots from
these two limits, so two fleets (or one fleet fanned out over many workers) together never
run more builds, or write to Cloud Run faster, than the project's quota allows:

| limit | kind | default | Google quota it stands for |
|---|---|---|---|
| `cf2run-cloud-build` | concurrency | 10 | concurrent builds per project (REFERENCE §1) |
| `cf2run-cloud-run-writes` | rate limit | 60 a minute | Cloud Run Admin API writes per minute, region |

A slot held by a run that was killed (`kill -9`) is taken back by the next fleet, `cf2run
migrate` or `cf2run setup` on the same Prefect server (lease_holders.py), not only when its
lease runs out; a killed run on the same host is marked Crashed then, slots or not.

Set them to your project's quotas (IAM & Admin > Quotas) with `cf2run setup --builds N
--run-writes-per-minute N`, or `prefect gcl update NAME --limit N`. A limit that does not
exist is not waited for (a warning is logged): `cf2run setup` and every fleet run create
missing ones with the defaults, and never change existing ones.

    with build_slot() as slot:  # around submitting a build and waiting for it
        ...                     # slot.keep() on each poll renews its lease when due
    cloud_run_write()           # before each Cloud Run create/update/IAM write
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import BaseModel, ConfigDict, Field

from cf2run.fleet import lease_holders
from cf2run.fleet.slots import LocalQueue, Slot, _logger, spend

BUILD_LIMIT = "cf2run-cloud-build"
RUN_WRITES_LIMIT = "cf2run-cloud-run-writes"
#: A build holds its slot at most this long without renewal (its polling renews it, Slot.keep).
BUILD_LEASE_S = 300.0


class QuotaLimits(BaseModel):
    """The quotas a fleet shares, as `cf2run setup` creates them."""

    model_config = ConfigDict(extra="forbid")

    builds: int = Field(default=10, ge=1, le=1000,
                        description="Concurrent Cloud Build builds (Cloud Build's per-project quota).")
    run_writes_per_minute: int = Field(
        default=60, ge=1, le=100_000,
        description="Cloud Run Admin API writes (create, update, IAM) per minute; a burst of "
                    "up to this many, then this many per minute.")

    def creates(self) -> list[GlobalConcurrencyLimitCreate]:
        """The global concurrency limits standing for these quotas."""
        return [
            GlobalConcurrencyLimitCreate(name=BUILD_LIMIT, limit=self.builds),
            GlobalConcurrencyLimitCreate(name=RUN_WRITES_LIMIT, limit=self.run_writes_per_minute,
                                         slot_decay_per_second=self.run_writes_per_minute / 60),
        ]


def ensure_limits(quotas: QuotaLimits | None = None, *, replace: Collection[str] = (),
                  client: SyncPrefectClient | None = None) -> list[str]:
    """Create the limits that are missing, set those named in `replace` to `quotas`; their names.

    Existing limits not named in `replace` are left as they are (someone sized them on purpose).
    """
    if client is None:
        with get_client(sync_client=True) as own:
            return ensure_limits(quotas, replace=replace, client=own)
    reclaimed = lease_holders.reclaim(client)  # slots of killed runs, before anyone waits for them
    slots = [holder for holder in reclaimed if holder.lease_id is not None]
    if reclaimed:
        runs = sorted({f"flow run {h.flow_run} (pid {h.pid} on {h.host})" for h in reclaimed})
        _logger().warning("%d flow run(s) were killed or ended unseen (%s): marked Crashed if still "
                          "Running; %d build slot(s) they held taken back", len(runs), ", ".join(runs),
                          len(slots))
    changed, sizes = [], {}
    for limit in (quotas or QuotaLimits()).creates():
        if limit.name in replace:
            client.upsert_global_concurrency_limit_by_name(limit.name, limit.limit,
                                                           limit.slot_decay_per_second)
            changed.append(limit.name)
            continue
        try:
            existing = client.read_global_concurrency_limit_by_name(limit.name)
            sizes[limit.name] = existing.limit if existing.active else sys.maxsize
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(limit)
            except ObjectAlreadyExists:  # another fleet created it meanwhile
                continue
            changed.append(limit.name)
            sizes[limit.name] = limit.limit
    with _queues_lock:  # this process' local queues follow what it changed, and know what it read
        _queues.clear()
        _queues.update((name, LocalQueue(size)) for name, size in sizes.items())
    return changed


@contextmanager
def build_slot() -> Iterator[Slot]:
    """Hold one slot of the concurrent-builds limit (waits while all are taken): a lease on it,
    handed on to another thread of this process that waits for one, else given back (slots.py).

    Queueing in the process first matters too: the server makes a refused caller wait a
    Retry-After of up to 30 s (PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS),
    during which a slot freed by a thread here would stay idle.
    """
    with _queue_for(BUILD_LIMIT).slot(lambda: Slot.take(BUILD_LIMIT, BUILD_LEASE_S)) as slot:
        yield slot


def build_lane() -> AbstractContextManager[object]:
    """Hold one of this process' lanes to the build slots, from packaging a function to the end
    of its build step: twice as many as the concurrent-builds limit. So the first builds start
    as soon as their sources are packaged, not once every function's is (100 functions on 2
    CPUs, all packaging at once, started their first build after 2-4 s), and a function is
    packaged and waiting when a slot frees; the others wait here, idle."""
    return _queue_for(BUILD_LIMIT).lane()


def build_turn() -> AbstractContextManager[object]:
    """Hold one of this process' turns to prepare a build (package its source), inside a lane: as
    many as the concurrent-builds limit, so the first builds' sources are ready soonest."""
    return _queue_for(BUILD_LIMIT).turn()


_queues: dict[str, LocalQueue] = {}
_queues_lock = threading.Lock()


def _queue_for(name: str) -> LocalQueue:
    """This process' queue for the concurrency limit `name`, as big as the limit (read once per
    process, by the first thread that asks while the others wait: one queue for all of them);
    unbounded when the limit does not exist or is inactive (nothing is waited for)."""
    with _queues_lock:
        if name not in _queues:
            _queues[name] = LocalQueue(_size_of(name))
        return _queues[name]


def _size_of(name: str) -> int:
    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return sys.maxsize
    return limit.limit if limit.active else sys.maxsize


def cloud_run_write(writes: int = 1) -> None:
    """Wait until the Cloud Run writes rate limit allows `writes` more writes."""
    if writes > 0:
        spend(RUN_WRITES_LIMIT, writes)
