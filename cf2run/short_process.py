"""A command that imports Prefect, runs its flows once and ends: Python's cyclic garbage collector
spared the work such a process does not need.

Importing Prefect, pydantic's models and the Google clients makes a few hundred thousand objects,
which the collector walks again and again while they are imported, in every full collection of
the flow run and once more when the interpreter ends (0.5-0.7 s of an unchanged rerun's wall,
measured: bench/README.md). `imports_frozen` imports with the collector off and then freezes what
was imported (`gc.freeze`: never collected, kept to the end, which is what a module is);
`before_exit` freezes what the run made, so the interpreter's last collection skips it. Nothing
is lost: objects still go when their reference count drops; only cycles made before a freeze
stay until the process ends, seconds later.

`without_heartbeats`: Prefect 3.9 sends a heartbeat per flow run every 180 s by default from a
thread it joins when the run ends, and that thread sleeps in 1 s steps (prefect/flow_engine.py
`_send_heartbeats`): 0-1 s, 0.5 s on average, added to every flow run of the command. A command's
runs do not need them: their process is recorded (cf2run/fleet/lease_holders.py `RUN_HOOKS`) and
the next command on the machine marks a killed one Crashed; the zombie automation
(deployments/automations.yaml) waits for a first heartbeat, so a run without any is never taken
for a dead one. A frequency the user set is kept.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_frozen() -> Iterator[None]:
    """Run the imports inside without the collector; freeze what they made."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """The flow runs inside send no heartbeats, unless the user set a heartbeat frequency."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    flows = get_current_settings().flows
    if flows.heartbeat_frequency != type(flows).model_fields["heartbeat_frequency"].default:
        yield  # the user's own frequency
        return
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def before_exit() -> None:
    """Spare the interpreter's final collection everything made until now."""
    gc.freeze()
