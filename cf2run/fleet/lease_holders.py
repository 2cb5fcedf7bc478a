"""Who holds each build-slot lease, and which process runs each flow run cf2run started, so a
later run can take back what a killed one held and mark it Crashed.

A flow run killed with `kill -9` keeps its slots of `cf2run-cloud-build` until their leases run
out (300 s; quotas.py), and stays Running for good: Prefect 3 notices a dead flow run only from
missing heartbeats (sent by the flow engine when PREFECT_FLOWS_HEARTBEAT_FREQUENCY, alias
PREFECT_RUNNER_HEARTBEAT_FREQUENCY, is set), and only an automation then marks it Crashed
(https://docs.prefect.io/v3/advanced/detect-zombie-flows; deployments/automations.yaml has it).
Prefect 3.9 has no API that lists a limit's leases either (its lease storage's
``list_holders_for_limit`` serves only the v1 tag endpoints). So cf2run names the holders itself,
one Prefect Variable each, holding a `Holder` (the flow run, and its process: host, PID and start
time):

- ``cf2run-lease-LEASE_ID`` (tag ``cf2run-lease``) per build-slot lease: `note` when a slot is
  taken, `drop` when it is given back;
- ``cf2run-run-FLOW_RUN_ID`` (tag ``cf2run-run``) per flow run of the migrate-fleet and
  migrate-function flows that is the first of its process (from the CLI, or a worker's run of a
  deployment; `RUN_HOOKS`: written when it starts running, removed when it ends, however it
  ends), so a run killed while it held no slot is found too.

`reclaim` (each fleet and `cf2run migrate`, `cf2run setup`) releases the leases and forgets the
runs whose holder is known dead:

- its flow run is in a final state (it crashed, failed, was cancelled, or ended; e.g. marked
  Crashed by the zombie automation when it ran on a machine that is gone), or
- its process ran on this host and is gone (not a reused PID: the start time is compared); its
  flow run, the flow runs above it and their other unfinished subflow runs are then marked
  Crashed, as Prefect marks a flow run whose process it saw crash.

A holder on another host that is still Running is left alone: its leases run out, and the
automation marks its flow run Crashed once its heartbeats stop; the next `reclaim` then releases.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import Crashed

from cf2run.localcloud.children import Process

PREFIX = "cf2run-lease-"
TAG = "cf2run-lease"
RUN_PREFIX = "cf2run-run-"
RUN_TAG = "cf2run-run"


@dataclass(frozen=True)
class Holder:
    """A lease's holder (`lease_id`), or a flow run's process (`lease_id` None): its flow run
    (None outside one) and its process."""

    lease_id: str | None
    flow_run: str | None
    host: str
    pid: int
    start: int

    @classmethod
    def here(cls, lease_id: UUID | None, flow_run: str | None) -> Holder:
        me = Process.of(os.getpid())
        return cls(None if lease_id is None else str(lease_id), flow_run, socket.gethostname(),
                   os.getpid(), me.start if me else 0)

    @property
    def variable(self) -> str:
        return PREFIX + str(self.lease_id) if self.lease_id is not None else RUN_PREFIX + str(self.flow_run)

    def process_gone(self) -> bool:
        """Its process ran on this host and is not running any more."""
        return self.host == socket.gethostname() and not Process(self.pid, self.start).alive()


def note(client: SyncPrefectClient, lease_id: UUID) -> None:
    """Record this process (and flow run) as the holder of `lease_id`."""
    _record(client, Holder.here(lease_id, _current_flow_run()), TAG)


def drop(client: SyncPrefectClient, lease_id: UUID) -> None:
    """`lease_id` was given back: forget its holder."""
    _forget(client, PREFIX + str(lease_id))


def record_process_of_run(flow: object, flow_run: FlowRun, state: State) -> None:
    """`on_running` hook: record this process as the one that runs `flow_run` (the first flow run
    of this process: its subflow runs run here too and are found from it)."""
    if _top_of_its_process(flow_run):
        with get_client(sync_client=True) as client:
            _record(client, Holder.here(None, str(flow_run.id)), RUN_TAG)


def forget_process_of_run(flow: object, flow_run: FlowRun, state: State) -> None:
    """Hook of the final states: `flow_run` ended, its process did not die unseen."""
    if _top_of_its_process(flow_run):
        with get_client(sync_client=True) as client:
            _forget(client, RUN_PREFIX + str(flow_run.id))


def _top_of_its_process(flow_run: FlowRun) -> bool:
    """Not a subflow run in its parent's process (a deployment's run has a process of its own)."""
    return flow_run.parent_task_run_id is None or flow_run.deployment_id is not None


#: The hooks that keep a flow's top-level runs recorded while they run: ``@flow(**RUN_HOOKS)``.
RUN_HOOKS: dict[str, Any] = {"on_running": [record_process_of_run],
                             **{final: [forget_process_of_run] for final in (
                                 "on_completion", "on_failure", "on_cancellation", "on_crashed")}}


def reclaim(client: SyncPrefectClient) -> list[Holder]:
    """Release the leases and forget the runs whose holders are known dead (see the module doc);
    the holders (`lease_id` None: a run that held no lease)."""
    reclaimed = []
    for variable in client.read_variables():
        tags = variable.tags or []
        if not ((variable.name.startswith(PREFIX) and TAG in tags)
                or (variable.name.startswith(RUN_PREFIX) and RUN_TAG in tags)):
            continue
        try:
            holder = Holder(**json.loads(str(variable.value)))
        except (TypeError, ValueError):
            continue
        if not _dead(client, holder):
            continue
        if holder.lease_id is not None:
            with contextlib.suppress(ObjectNotFound):  # already expired: nothing to give back
                client.release_concurrency_slots_with_lease(lease_id=UUID(holder.lease_id))
        _forget(client, holder.variable)
        reclaimed.append(holder)
    return reclaimed


def _record(client: SyncPrefectClient, holder: Holder, tag: str) -> None:
    with contextlib.suppress(ObjectAlreadyExists):  # a retried run's record: the same process
        client.create_variable(VariableCreate(name=holder.variable, value=json.dumps(asdict(holder)),
                                              tags=[tag]))


def _forget(client: SyncPrefectClient, name: str) -> None:
    with contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(name)


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
    one Crashed: those that ran in the process that is gone. A deployment's run (a worker started
    it, in a process of its own) is where that process began: its parent, and the deployment runs
    below, ran elsewhere and are left alone."""
    chain = [client.read_flow_run(flow_run_id)]
    while chain[-1].parent_task_run_id is not None and chain[-1].deployment_id is None:
        parent = client.read_task_run(chain[-1].parent_task_run_id).flow_run_id
        if parent is None:
            break
        chain.append(client.read_flow_run(parent))
    siblings = [run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[chain[-1].id]))) if run.deployment_id is None]
    message = (f"its process (pid {holder.pid} on {holder.host}) is gone, killed without a word; "
               "marked Crashed by a later cf2run run" + (", which took back its build slots"
                                                         if holder.lease_id is not None else ""))
    for run in {run.id: run for run in [*chain, *siblings]}.values():
        if run.state is None or not run.state.is_final():
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)


def _current_flow_run() -> str | None:
    task = TaskRunContext.get()
    if task is not None and task.task_run.flow_run_id is not None:
        return str(task.task_run.flow_run_id)
    flow = FlowRunContext.get()
    return str(flow.flow_run.id) if flow is not None and flow.flow_run is not None else None
