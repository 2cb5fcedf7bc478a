"""Slots of Prefect global concurrency limits, taken through the caller's own API client.

The same endpoints as `prefect.concurrency.sync.concurrency` and `rate_limit`, for less: those
helpers open new API clients and a lease-renewal thread on every use and emit
acquired/released events, ~0.18 CPU-s per build slot across the flow process, the server and
its database, and two round trips to a server that, during a fleet, is busy recording task
runs (bench/README.md). Here a slot is one request to take and one to give back, made with
the task run's client, its lease renewed by whoever holds it (`Slot.keep()`, called on every
poll of what the slot guards), and:

- `LocalQueue`: the threads of one process queue for a limit locally, at most its size at a
  time, and a thread done with its slot hands the lease straight to a thread of the same
  process waiting for one (no round trip). A lease goes back to the server only when no
  thread here waits for it, so the process never keeps a slot nobody uses; that release runs
  in the background (the thread goes on with its function), and `settle()` waits for the
  releases before a flow run's API client closes. Other processes
  and workers get slots through the server as before: Prefect makes a refused caller poll
  again after a Retry-After of seconds, so a slot given back and taken again within
  milliseconds (what the threads here would do without the hand-over) went to this process
  anyway. Its lanes (`LocalQueue.lane()`) bound how many threads wait to use a slot, and its
  turns (`LocalQueue.turn()`) how many of them prepare for one at once.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError

from cf2run.fleet import lease_holders

#: A lease is renewed once this share of it has passed.
RENEW_AFTER = 0.75


class Slot:
    """A slot of a concurrency limit held under a lease (`lease_id` None: the limit does not
    exist, nothing is held). Any thread of the process may keep or release it."""

    def __init__(self, lease_id: UUID | None, lease_s: float) -> None:
        self.lease_id, self.lease_s = lease_id, lease_s
        self._renew_at = time.monotonic() + RENEW_AFTER * lease_s

    @classmethod
    def take(cls, limit: str, lease_s: float) -> Slot:
        """Wait until the server grants one slot of `limit`, leased to the current task run (the
        limit shows that one as the holder, also after the lease was handed on)."""
        with get_client(sync_client=True) as client:
            granted = ConcurrencyLimitWithLeaseResponse.model_validate(_granted(
                lambda: client.increment_concurrency_slots_with_lease(
                    names=[limit], slots=1, mode="concurrency", lease_duration=lease_s,
                    holder=_holder())))
            if granted.limits:
                _bookkeeping("record the holder of", granted.lease_id,
                             lambda: lease_holders.note(client, granted.lease_id))
        if not granted.limits:
            _missing(limit)
            return cls(None, lease_s)
        return cls(granted.lease_id, lease_s)

    def keep(self) -> None:
        """Renew the lease if three quarters of it have passed (a failure is logged: the slot
        may then be counted free by the server before this holder is done, as with Prefect)."""
        if self.lease_id is None or time.monotonic() < self._renew_at:
            return
        self._renew_at = time.monotonic() + RENEW_AFTER * self.lease_s
        self._call("renew", lambda client: client.renew_concurrency_lease(
            lease_id=self.lease_id, lease_duration=self.lease_s))

    def release(self) -> None:
        """Give the slot back to the server, in the background: the caller goes on at once (on
        a server busy recording a fleet's task runs a release waits 0.2-0.8 s, and the last
        builds of a fleet release theirs before their verify and deploy). `settle()` waits
        until it is done; a failure is logged (the lease then runs out)."""
        if self.lease_id is None:
            return
        lease_id = self.lease_id

        def give_back() -> None:
            try:
                self._call("release", lambda client: _give_back(client, lease_id))
            finally:
                with _releasing_lock:
                    _releasing.discard(threading.current_thread())

        releasing = threading.Thread(target=contextvars.copy_context().run, args=(give_back,),
                                     name="cf2run-slot-release")
        with _releasing_lock:
            _releasing.add(releasing)
        releasing.start()

    def _call(self, what: str, request: Callable[[Any], object]) -> None:
        def call() -> None:
            with get_client(sync_client=True) as client:
                request(client)

        _bookkeeping(what, self.lease_id, call, self.lease_s)


def _give_back(client: Any, lease_id: UUID) -> None:
    client.release_concurrency_slots_with_lease(lease_id=lease_id)
    lease_holders.drop(client, lease_id)


def _bookkeeping(what: str, lease_id: UUID | None, call: Callable[[], object],
                 lease_s: float = 300.0) -> None:
    """`call()`; a failure is logged: bookkeeping of a slot never fails the work it guards."""
    try:
        call()
    except Exception as error:  # HTTP errors, and a client closed meanwhile (RuntimeError)
        _logger().warning("could not %s concurrency lease %s (%s); the server frees its slot "
                          "when the lease runs out, at most %.0f s from its last renewal",
                          what, lease_id, error, lease_s)


_releasing: set[threading.Thread] = set()
_releasing_lock = threading.Lock()


def settle(timeout_s: float = 30.0) -> None:
    """Wait until the slots given back so far are back on the server (call it before the flow
    run whose API client they use ends)."""
    with _releasing_lock:
        pending = list(_releasing)
    deadline = time.monotonic() + timeout_s
    for releasing in pending:
        releasing.join(max(0.0, deadline - time.monotonic()))


class LocalQueue:
    """This process' queue for one concurrency limit of `size` slots (see the module doc)."""

    #: Threads that may prepare for a slot at once (`lane`), per slot.
    LANES_PER_SLOT = 2

    def __init__(self, size: int) -> None:
        self.size = size
        unbounded = size == sys.maxsize
        self._lanes: AbstractContextManager[object] = (
            nullcontext() if unbounded else threading.BoundedSemaphore(self.LANES_PER_SLOT * size))
        self._turns: AbstractContextManager[object] = (
            nullcontext() if unbounded else threading.BoundedSemaphore(size))
        self._inside = 0  # threads holding a slot, or taking one from the server
        self._waiting = 0
        self._handed: list[Slot] = []  # slots given up by a thread for a waiting one
        self._changed = threading.Condition()

    def lane(self) -> AbstractContextManager[object]:
        """Hold one of the lanes to this queue: at most `LANES_PER_SLOT` x `size` threads may be
        between starting to prepare for a slot (e.g. packaging what they will build) and the
        end of their use of it, so the first ones are ready soon and a ready one is waiting
        when a slot frees; the others wait here first, idle."""
        return self._lanes

    def turn(self) -> AbstractContextManager[object]:
        """Hold one of `size` turns to prepare (inside a lane): of the threads in the lanes, at
        most as many as there are slots prepare at once, so the first of them are ready in
        half the time it takes all of them (on 2 CPUs, twenty functions packaging at once
        each took ~1 s; the first build waited for that) and the others by the time a slot frees."""
        return self._turns

    @contextmanager
    def slot(self, take: Callable[[], Slot]) -> Iterator[Slot]:
        """Hold a slot: one handed on by a thread of this process, or `take()` from the server."""
        slot = self._enter() or self._taken(take)
        try:
            yield slot
        finally:
            if not self._handed_on(slot):
                slot.release()

    def _enter(self) -> Slot | None:
        with self._changed:
            self._waiting += 1
            try:
                while not self._handed and self._inside >= self.size:
                    self._changed.wait()
            finally:
                self._waiting -= 1
            if self._handed:
                return self._handed.pop()
            self._inside += 1
            return None

    def _taken(self, take: Callable[[], Slot]) -> Slot:
        try:
            return take()
        except BaseException:
            self._leave()
            raise

    def _handed_on(self, slot: Slot) -> bool:
        with self._changed:
            if self._waiting > len(self._handed):
                self._handed.append(slot)
                self._changed.notify()
                return True
        self._leave()
        return False

    def _leave(self) -> None:
        with self._changed:
            self._inside -= 1
            self._changed.notify()


def spend(rate_limit: str, slots: int) -> None:
    """Wait until `rate_limit` allows `slots` more, and take them (they decay by themselves)."""
    with get_client(sync_client=True) as client:
        if not _granted(lambda: client.increment_concurrency_slots(
                names=[rate_limit], slots=slots, mode="rate_limit")):
            _missing(rate_limit)


def _granted(increment: Callable[[], httpx.Response]) -> Any:
    """Ask for slots until the server grants them; its JSON answer. A refusal (423 Locked)
    says how long to wait (Retry-After), which Prefect's own helpers obey too."""
    while True:
        try:
            return increment().json()
        except httpx.HTTPStatusError as refused:
            if refused.response.status_code != 423:
                raise
            time.sleep(float(refused.response.headers.get("Retry-After", 1.0)))


def _holder() -> ConcurrencyLeaseHolder | None:
    """The task run taking the slot, so the limit shows who holds it."""
    context = TaskRunContext.get()
    return None if context is None else ConcurrencyLeaseHolder(type="task_run", id=context.task_run.id)


def _missing(limit: str) -> None:
    _logger().warning("the Prefect limit %s does not exist, so nothing is waited for; create it "
                      "with `cf2run setup`", limit)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("cf2run.fleet.slots")
