"""Who holds each build-slot lease, so a later run can take back what a killed one held.

A flow run killed with `kill -9` keeps its slots of `cf2run-cloud-build` until their leases run
out (300 s; quotas.py), and stays Running for good: Prefect 3 notices a dead flow run only from
missing heartbeats, which only flow runs of deployments send (PREFECT_FLOWS_HEARTBEAT_FREQUENCY
set), and only an automation the user creates then marks it Crashed
(https://docs.prefect.io/v3/advanced/detect-zombie-flows); a fleet run from the command line
sends none. Prefect 3.9 has no API that lists a limit's leases either (its lease storage's
``list_holders_for_limit`` serves only the v1 tag endpoints). So cf2run names the holder of each
lease itself, in one Prefect Variable per lease (``cf2run-lease-LEASE_ID``, tag
``cf2run-lease``): the flow run that took it, and its process (host, PID and start time). `note`
when a slot is taken, `drop` when it is given back; `reclaim` (each fleet, `cf2run setup`)
releases the leases whose holder is known dead:

- its flow run is in a final state (it crashed, failed, was cancelled, or ended), or
- its process ran on this host and is gone (not a reused PID: the start time is compared); its
  flow run, the flow runs above it and their other unfinished subflow runs are then marked
  Crashed, as Prefect marks a flow run whose process it saw crash.

A holder on another host that is still Running is left to its lease's expiry.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from cf2run.localcloud.children import Process

PREFIX = "cf2run-lease-"
TAG = "cf2run-lease"


@dataclass(frozen=True)
class Holder:
    """A lease's holder: its flow run (None outside one) and its process."""

    lease_id: str
    flow_run: str | None
    host: str
    pid: int
    start: int

    @classmethod
    def here(cls, lease_id: UUID) -> Holder:
        me = Process.of(os.getpid())
        return cls(str(lease_id), _current_flow_run(), socket.gethostname(), os.getpid(),
                   me.start if me else 0)

    def process_gone(self) -> bool:
        """Its process ran on this host and is not running any more."""
        return self.host == socket.gethostname() and not Process(self.pid, self.start).alive()


def note(client: SyncPrefectClient, lease_id: UUID) -> None:
    """Record this process (and flow run) as the holder of `lease_id`."""
    holder = Holder.here(lease_id)
    client.create_variable(VariableCreate(name=PREFIX + holder.lease_id, value=json.dumps(asdict(holder)),
                                          tags=[TAG]))


def drop(client: SyncPrefectClient, lease_id: UUID) -> None:
    """`lease_id` was given back: forget its holder."""
    with contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(PREFIX + str(lease_id))


def reclaim(client: SyncPrefectClient) -> list[Holder]:
    """Release the leases whose holders are known dead (see the module doc); the holders."""
    reclaimed = []
    for variable in client.read_variables():
        if not variable.name.startswith(PREFIX) or TAG not in (variable.tags or []):
            continue
        try:
            holder = Holder(**json.loads(str(variable.value)))
        except (TypeError, ValueError):
            continue
        if not _dead(client, holder):
            continue
        with contextlib.suppress(ObjectNotFound):  # already expired: nothing to give back
            client.release_concurrency_slots_with_lease(lease_id=UUID(holder.lease_id))
        drop(client, UUID(holder.lease_id))
        reclaimed.append(holder)
    return reclaimed


def _dead(client: SyncPrefectClient, holder: Holder) -> bool:
    state = None
    if holder.flow_run is not None:
        with contextlib.suppress(ObjectNotFound):
            state = client.read_flow_run(UUID(holder.flow_run)).state
    if state is not None and state.is_final():
        return True
    if not holder.process_gone():
        return False
    if holder.flow_run is not None:
        _mark_crashed(client, UUID(holder.flow_run), holder)
    return True


def _mark_crashed(client: SyncPrefectClient, flow_run_id: UUID, holder: Holder) -> None:
    """Mark the killed flow run, those above it, and the unfinished subflow runs of the topmost
    one Crashed (they all ran in the process that is gone)."""
    chain = [client.read_flow_run(flow_run_id)]
    while chain[-1].parent_task_run_id is not None:
        parent = client.read_task_run(chain[-1].parent_task_run_id).flow_run_id
        if parent is None:
            break
        chain.append(client.read_flow_run(parent))
    siblings = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[chain[-1].id])))
    message = (f"its process (pid {holder.pid} on {holder.host}) is gone, killed without a word; "
               "marked Crashed by a later cf2run run, which took back its build slots")
    for run in {run.id: run for run in [*chain, *siblings]}.values():
        if run.state is None or not run.state.is_final():
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)


def _current_flow_run() -> str | None:
    task = TaskRunContext.get()
    if task is not None and task.task_run.flow_run_id is not None:
        return str(task.task_run.flow_run_id)
    flow = FlowRunContext.get()
    return str(flow.flow_run.id) if flow is not None and flow.flow_run is not None else None
