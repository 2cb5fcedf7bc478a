"""Scale to zero, as Cloud Run does: idle revisions stop, the next request starts one again.

"When a revision does not receive any traffic, by default it is scaled in to zero instances",
unless the minimum instances setting keeps some "idle or warm"
(https://cloud.google.com/run/docs/about-instance-autoscaling); Google keeps an idle instance
"up to 15 minutes" there, and 1st-gen Cloud Functions "for an unspecified amount of time"
(https://cloud.google.com/functions/1stgendocs/configuring/min-instances). Locally a revision
runs at most one process, so:

- `register(revision, ...)` says a revision may serve (it carries traffic or a tag), how to make
  its `RevisionSpec` (read at each start: secrets are resolved when an instance starts) and
  whether it is kept `warm` (min instances);
- `serving(revision)` is what a front end holds around one request: the address of the running
  process, or a **cold start** (the request is held until the process listens; one start at a
  time per revision, the others wait for it); `NoInstance` when none can serve;
- a reaper stops a revision's process once it served no request for `idle_after_s()` seconds
  (the local cloud's ``scale_to_zero_after_s`` knob), never while a request is in flight, never a
  warm one;
- `forget(revision)` (no traffic any more, deleted) stops it for good.

A revision that fails a cold start keeps its ``Ready`` condition (on Cloud Run readiness is a
revision's, not an instance's); the request is answered with an error by the front end and the
service log gets the line Cloud Run's request log has, "The request was aborted because there
was no available instance.", with the reason.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cf2run.localcloud.cloudrun.runtime import RevisionFailed, RevisionSpec, Runtime

log = logging.getLogger(__name__)

#: What Cloud Run's request log says when no instance could take a request (the known issues
#: page, https://cloud.google.com/run/docs/known-issues, "Delayed service recovery ...").
NO_INSTANCE = "The request was aborted because there was no available instance."
#: How often the reaper looks at most (it looks 4 times per idle period when that is shorter).
MAX_TICK_S = 1.0


class NoInstance(Exception):
    """No instance of a revision can take the request; `reason` says why, `cold_start` whether
    a start was tried and failed (the revision is routed) or the revision does not serve."""

    def __init__(self, revision: str, reason: str, *, cold_start: bool) -> None:
        self.revision = revision
        self.reason = reason
        self.cold_start = cold_start
        super().__init__(reason)


@dataclass
class _Routed:
    service: str
    spec: Callable[[], RevisionSpec]
    warm: bool
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)


class Instances:
    """The revisions that may serve, and their instances' lifecycle on the `Runtime`. Thread-safe."""

    def __init__(self, runtime: Runtime, idle_after_s: Callable[[], float]) -> None:
        self.runtime = runtime
        self._idle_after_s = idle_after_s
        self._routed: dict[str, _Routed] = {}
        self._starting: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="scale-to-zero", daemon=True)
        self._reaper.start()

    # -- what may serve ------------------------------------------------------------------------

    def register(self, revision: str, service: str, spec: Callable[[], RevisionSpec], *,
                 warm: bool) -> None:
        """`revision` (of `service`) may serve from now on, started from `spec()` when a request
        finds it scaled to zero; `warm`: kept running (min instances). Its idle period starts now
        if it was not registered."""
        with self._lock:
            routed = self._routed.get(revision)
            if routed is None:
                self._routed[revision] = _Routed(service, spec, warm)
            else:
                routed.service, routed.spec, routed.warm = service, spec, warm

    def forget(self, *revisions: str) -> None:
        """These revisions serve no more: their processes are stopped (in parallel)."""
        with self._lock:
            for revision in revisions:
                self._routed.pop(revision, None)
        self.runtime.take(revisions)()

    def warm(self) -> list[str]:
        """The registered revisions kept warm."""
        with self._lock:
            return [name for name, routed in self._routed.items() if routed.warm]

    # -- starting and serving ------------------------------------------------------------------

    def start(self, revision: str, spec: Callable[[], RevisionSpec], *, never_ready: bool = False) -> str:
        """The revision's address, its process started from `spec()` unless it runs; one start
        at a time per revision (a second caller waits for the first). Raises `RevisionFailed`."""
        with self._lock:
            starting = self._starting[revision]
        with starting:
            address = self.runtime.address(revision)
            if address is None:
                address = self.runtime.start(spec(), never_ready=never_ready)
        with self._lock:
            routed = self._routed.get(revision)
            if routed is not None:
                routed.last_used = time.monotonic()
        return address

    @contextmanager
    def serving(self, revision: str) -> Iterator[str]:
        """Hold this around one request: the address of a running instance of `revision`, after a
        cold start if it was scaled to zero. The revision does not idle out meanwhile. Raises
        `NoInstance`."""
        with self._lock:
            routed = self._routed.get(revision)
            if routed is not None:
                routed.in_flight += 1
                routed.last_used = time.monotonic()
        if routed is None:  # not routed (yet): only a process that runs already may answer
            address = self.runtime.address(revision)
            if address is None:
                raise NoInstance(revision, f"revision {revision} has no running instance", cold_start=False)
            yield address
            return
        try:
            address = self.runtime.address(revision) or self._cold_start(revision, routed)
            yield address
        finally:
            with self._lock:
                routed.in_flight -= 1
                routed.last_used = time.monotonic()

    def _cold_start(self, revision: str, routed: _Routed) -> str:
        try:
            return self.start(revision, routed.spec)
        except RevisionFailed as error:
            reason = error.reason.split("\n", 1)[0]
            self.runtime.log_event(routed.service, revision, f"{NO_INSTANCE} {reason}")
            log.warning("cold start of %s failed: %s", revision, reason)
            raise NoInstance(revision, reason, cold_start=True) from error

    # -- scaling to zero -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the reaper (the processes end with the runtime)."""
        self._closed.set()
        self._reaper.join(timeout=5)

    def _reap(self) -> None:
        while not self._closed.wait(self._tick()):
            try:
                self.scale_in()
            except Exception:  # the reaper must outlive a bad tick
                log.exception("scaling idle revisions to zero failed")

    def _tick(self) -> float:
        return max(0.05, min(MAX_TICK_S, self._idle_after_s() / 4))

    def scale_in(self) -> list[str]:
        """Stop the processes of the revisions idle for the idle period (not warm, no request in
        flight, not starting); returns their names."""
        idle_s = self._idle_after_s()
        now = time.monotonic()
        with self._lock:
            idle = [name for name, routed in self._routed.items()
                    if not routed.warm and routed.in_flight == 0 and now - routed.last_used >= idle_s
                    and not self._starting[name].locked()]
            # Taken while the lock is held: a request that comes after sees no instance and
            # starts a new one, and none can be in flight on what is taken.
            stop = self.runtime.take(idle)
        stopped = stop()
        for name in stopped:
            log.info("revision %s scaled to zero after %gs idle", name, idle_s)
        return stopped
