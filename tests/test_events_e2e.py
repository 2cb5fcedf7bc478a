"""Event functions on the local cloud, through the migrate-function flow: a Pub/Sub-triggered
Python function (gen1 (event, context) signature) and a Storage-triggered Node.js CloudEvent
function are smoke-tested with an event of their trigger in CloudEvents binary mode, and each
result carries the Eventarc trigger to create. The functions refuse anything that is not their
event (the Functions Framework answers 500), so the checks below prove the event arrived, and
what it carried shows in the revision's log.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from flowruns import migrate

from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import FunctionSpec, Target, load_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def samples() -> dict[str, FunctionSpec]:
    return {spec.name: spec for spec in load_manifest(EXAMPLES / "manifest.yaml").functions}


@pytest.fixture(scope="module")
def target(localcloud: LocalCloud) -> Target:
    return Target(kind="local", localcloud_dir=localcloud.state_dir)


def test_pubsub_triggered_python_function_gets_a_message(
        samples: dict[str, FunctionSpec], target: Target, localcloud: LocalCloud) -> None:
    result, _ = migrate(samples["pubsub-orders"], target)
    assert result.status == "succeeded", result.message
    assert "message cf2run-smoke-" in localcloud.logs("pubsub-orders")
    assert "on projects/local-project/topics/orders: order 42, total 10" in localcloud.logs("pubsub-orders")
    command = shlex.split(result.eventarc or "")
    assert command[:5] == ["gcloud", "eventarc", "triggers", "create", "pubsub-orders-pubsub"]
    assert "--event-filters=type=google.cloud.pubsub.topic.v1.messagePublished" in command
    assert "--transport-topic=projects/local-project/topics/orders" in command
    assert "--destination-run-service=pubsub-orders" in command
    assert "--service-account=local-project@appspot.gserviceaccount.com" in command


def test_storage_triggered_node_function_gets_an_object_finalized_event(
        samples: dict[str, FunctionSpec], target: Target, localcloud: LocalCloud) -> None:
    result, _ = migrate(samples["uploads-node"], target)
    assert result.status == "succeeded", result.message
    logs = localcloud.logs("uploads-node")
    assert ("google.cloud.storage.object.v1.finalized: gs://uploads/reports/2024-01.csv (2048 bytes, "
            "text/csv), subject objects/reports/2024-01.csv") in logs
    command = shlex.split(result.eventarc or "")
    assert "--event-filters=type=google.cloud.storage.object.v1.finalized" in command
    assert "--event-filters=bucket=uploads" in command


def test_the_wrong_event_fails_the_smoke_test(
        samples: dict[str, FunctionSpec], target: Target) -> None:
    """The Pub/Sub function sent a Storage event: it refuses it, so the migration fails at smoke."""
    spec = samples["pubsub-orders"].model_copy(update={
        "name": "pubsub-orders-wrong",
        "trigger": samples["uploads-node"].trigger,
        "smoke": samples["pubsub-orders"].smoke.model_copy(update={"deadline_s": 2})})
    result, _ = migrate(spec, target)
    assert (result.status, result.failed_step) == ("failed", "smoke")
    assert "expected a 2xx status, got 500" in (result.message or "")
