"""The fleet's progress artifact, moved from a thread of its own.

An artifact call waits its turn on a server busy recording the fleet's task runs (0.4-1 s
each, bench/README.md); the flow's own thread, which collects finished functions and then
publishes the report, should not wait for it. `update(done)` only notes the count; the
thread moves the artifact at most every `every_s`, and at once when every function is done,
while the flow publishes its report.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact


class FleetProgress:
    """`N of TOTAL functions done`, as a progress artifact of the current flow run."""

    def __init__(self, total: int, every_s: float) -> None:
        self.total, self.every_s = total, every_s
        self._id = cast(UUID, create_progress_artifact(0.0, description=self._say(0)))
        self._done = self._shown = 0
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._move,),
                                        name="fleet-progress", daemon=True)
        self._thread.start()

    def update(self, done: int) -> None:
        with self._changed:
            self._done = done
            self._changed.notify()

    def close(self) -> None:
        """Show the last count, then stop (waits for the artifact call on its way)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _move(self) -> None:
        moved = time.monotonic()
        while True:
            with self._changed:
                while self._done == self._shown and not self._closed:
                    self._changed.wait()
                if self._done == self._shown:
                    return
                due = moved + self.every_s  # at most every every_s, but the last count at once
                while self._done < self.total and not self._closed and time.monotonic() < due:
                    self._changed.wait(due - time.monotonic())
                done = self._done
            moved = time.monotonic()
            try:
                update_progress_artifact(self._id, 100.0 * done / self.total, description=self._say(done))
            except Exception as error:  # a progress bar is no reason to fail or stall a fleet
                get_run_logger().warning("could not move the fleet's progress artifact to %d of %d: %s",
                                         done, self.total, error)
            self._shown = done

    def _say(self, done: int) -> str:
        return f"{done} of {self.total} functions done"
