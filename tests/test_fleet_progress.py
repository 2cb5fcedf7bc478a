"""The fleet's progress artifact, on a real Prefect API: it moves as functions finish, at most
every `every_s`, but the last count at once."""

from __future__ import annotations

import logging
import time
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.context import FlowRunContext

from cf2run.fleet.progress import FleetProgress

pytestmark = pytest.mark.usefixtures("prefect_api")


def shown(flow_run_id: UUID) -> list[str | None]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return [a.description for a in artifacts if a.type == "progress"]


def wait_until_shown(flow_run_id: UUID, description: str, within_s: float = 15.0) -> list[str | None]:
    deadline = time.monotonic() + within_s
    while (now := shown(flow_run_id)) != [description] and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def test_progress_moves_at_most_every_so_often_and_shows_the_last_count_at_once() -> None:
    seen: dict[str, list[str | None]] = {}

    @flow
    def fleet() -> None:
        run = FlowRunContext.get()
        assert run is not None and run.flow_run is not None
        flow_run_id = run.flow_run.id
        progress = FleetProgress(total=50, every_s=60.0)
        seen["created"] = shown(flow_run_id)
        for done in range(1, 50):
            progress.update(done)
        time.sleep(1.0)
        seen["49 done, within the minute"] = shown(flow_run_id)
        progress.update(50)
        seen["all done"] = wait_until_shown(flow_run_id, "50 of 50 functions done")
        progress.close()

    fleet()
    assert seen == {"created": ["0 of 50 functions done"],
                    "49 done, within the minute": ["0 of 50 functions done"],
                    "all done": ["50 of 50 functions done"]}


def test_a_progress_update_the_server_refuses_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    @flow
    def fleet() -> None:
        progress = FleetProgress(total=2, every_s=0.0)
        with get_client(sync_client=True) as client:
            client.delete_artifact(progress._id)  # someone deleted it from the UI meanwhile
        progress.update(2)
        progress.close()

    with caplog.at_level(logging.WARNING):
        state = fleet(return_state=True)
    assert state.is_completed()
    assert "could not move the fleet's progress artifact to 2 of 2" in caplog.text
