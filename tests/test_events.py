"""Event functions, pure parts: the event the smoke test sends (CloudEvents binary mode, as
Eventarc delivers it) and the Eventarc trigger command the report gives (REFERENCE §5)."""

from __future__ import annotations

import base64
import json
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cf2run.events import eventarc_command, gen1_data, missing_trigger_note, smoke_event, smoke_request
from cf2run.manifest.spec import FunctionSpec, Target

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TARGET = Target(project="my-project", region="europe-west1")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("def on_event(event, context):\n    pass\n")
    return tmp_path


def spec(source: Path, trigger: dict[str, Any], **fields: Any) -> FunctionSpec:
    return FunctionSpec.model_validate({"name": "fn", "source": source, "runtime": "python312",
                                        "entry_point": "on_event", "signature_type": "event",
                                        "trigger": trigger, **fields})


@pytest.mark.parametrize("event_type", ["google.pubsub.topic.publish",
                                        "providers/cloud.pubsub/eventTypes/topic.publish",
                                        "google.cloud.pubsub.topic.v1.messagePublished"])
def test_pubsub_event_is_a_message_published_cloudevent(source: Path, event_type: str) -> None:
    fn = spec(source, {"event_type": event_type, "topic": "orders", "data": {"order": 42}})
    headers, data = smoke_event(fn, TARGET, now=NOW, event_id="e-1")
    assert headers == {
        "ce-specversion": "1.0", "ce-id": "e-1", "ce-time": "2024-05-01T12:00:00.000Z",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": "//pubsub.googleapis.com/projects/my-project/topics/orders",
        "Content-Type": "application/json; charset=utf-8"}
    assert json.loads(base64.b64decode(data["message"]["data"])) == {"order": 42}
    assert data["message"]["messageId"] == "e-1"
    assert data["subscription"] == "projects/my-project/subscriptions/cf2run-smoke-fn"


def test_pubsub_text_message_and_a_topic_in_another_project(source: Path) -> None:
    fn = spec(source, {"event_type": "google.pubsub.topic.publish",
                       "topic": "projects/shared-proj/topics/events", "data": "hello"})
    headers, data = smoke_event(fn, TARGET, now=NOW)
    assert headers["ce-source"] == "//pubsub.googleapis.com/projects/shared-proj/topics/events"
    assert base64.b64decode(data["message"]["data"]) == b"hello"


@pytest.mark.parametrize(("gen1", "cloudevent"), [
    ("google.storage.object.finalize", "google.cloud.storage.object.v1.finalized"),
    ("google.storage.object.delete", "google.cloud.storage.object.v1.deleted"),
    ("google.storage.object.archive", "google.cloud.storage.object.v1.archived"),
    ("google.storage.object.metadataUpdate", "google.cloud.storage.object.v1.metadataUpdated"),
])
def test_storage_event_names_the_object_in_its_subject(source: Path, gen1: str, cloudevent: str) -> None:
    fn = spec(source, {"event_type": gen1, "bucket": "gs://uploads", "data": {"name": "a/b.csv"}})
    headers, data = smoke_event(fn, TARGET, now=NOW)
    assert headers["ce-type"] == cloudevent
    assert headers["ce-source"] == "//storage.googleapis.com/projects/_/buckets/uploads"
    assert headers["ce-subject"] == "objects/a/b.csv"
    assert (data["bucket"], data["name"], data["kind"], data["id"]) == \
        ("uploads", "a/b.csv", "storage#object", "uploads/a/b.csv/1")


def test_custom_event_sends_the_manifests_type_source_and_data(source: Path) -> None:
    fn = spec(source, {"event_type": "com.example.order.v1.created", "source": "//orders.example.com",
                       "data": {"id": 7}, "filters": {"region": "eu"}}, signature_type="cloudevent")
    headers, data = smoke_event(fn, TARGET, now=NOW)
    assert (headers["ce-type"], headers["ce-source"], data) == \
        ("com.example.order.v1.created", "//orders.example.com", {"id": 7})


def test_smoke_request_posts_the_event_and_keeps_the_manifests_headers_and_checks(source: Path) -> None:
    fn = spec(source, {"event_type": "google.pubsub.topic.publish", "topic": "orders"},
              smoke={"path": "/events", "headers": {"ce-id": "fixed"}, "expect_body": "OK"})
    request = smoke_request(fn, TARGET)
    assert (request.method, request.path, request.expect_body) == ("POST", "/events", "OK")
    assert request.headers["ce-id"] == "fixed"
    message = json.loads(request.body or "")["message"]
    assert base64.b64decode(message["data"]) == b"cf2run smoke test"


def test_eventarc_command_for_pubsub(source: Path) -> None:
    fn = spec(source, {"event_type": "google.pubsub.topic.publish", "topic": "orders"})
    assert shlex.split(eventarc_command(fn, TARGET) or "") == [
        "gcloud", "eventarc", "triggers", "create", "fn-pubsub", "--project=my-project",
        "--location=europe-west1", "--destination-run-service=fn", "--destination-run-region=europe-west1",
        "--event-filters=type=google.cloud.pubsub.topic.v1.messagePublished",
        "--transport-topic=projects/my-project/topics/orders",
        "--service-account=my-project@appspot.gserviceaccount.com"]


def test_eventarc_command_for_storage_with_its_own_identity_and_location(source: Path) -> None:
    fn = spec(source, {"event_type": "google.storage.object.finalize", "bucket": "uploads",
                       "location": "eu", "service_account": "trigger@my-project.iam.gserviceaccount.com"})
    assert shlex.split(eventarc_command(fn, TARGET) or "") == [
        "gcloud", "eventarc", "triggers", "create", "fn-storage", "--project=my-project", "--location=eu",
        "--destination-run-service=fn", "--destination-run-region=europe-west1",
        "--event-filters=type=google.cloud.storage.object.v1.finalized", "--event-filters=bucket=uploads",
        "--service-account=trigger@my-project.iam.gserviceaccount.com"]


def test_eventarc_command_for_a_custom_type_carries_its_filters(source: Path) -> None:
    fn = spec(source, {"event_type": "google.cloud.audit.log.v1.written",
                       "filters": {"serviceName": "bigquery.googleapis.com",
                                   "methodName": "jobservice.jobcompleted"}},
              signature_type="cloudevent", service_account="fn@my-project.iam.gserviceaccount.com")
    args = shlex.split(eventarc_command(fn, TARGET) or "")
    assert args[9:] == ["--event-filters=type=google.cloud.audit.log.v1.written",
                        "--event-filters=serviceName=bigquery.googleapis.com",
                        "--event-filters=methodName=jobservice.jobcompleted",
                        "--service-account=fn@my-project.iam.gserviceaccount.com"]


def test_event_function_without_trigger_is_told_what_to_add(source: Path) -> None:
    fn = FunctionSpec.model_validate({"name": "fn", "source": source, "runtime": "python312",
                                      "entry_point": "on_event", "signature_type": "cloudevent"})
    assert eventarc_command(fn, TARGET) is None
    assert "add `trigger:" in (missing_trigger_note(fn) or "")
    assert missing_trigger_note(fn.model_copy(update={"signature_type": "http"})) is None


def test_gen1_data_of_an_event_is_what_a_background_function_gets(source: Path) -> None:
    """CallFunction hands a 1st-gen function gen1's data: the PubsubMessage itself (with its @type),
    not the CloudEvent's {message, subscription}; a Storage event's object as it is."""
    pubsub = spec(source, {"event_type": "google.pubsub.topic.publish", "topic": "orders",
                           "data": {"order": 42}})
    event = smoke_event(pubsub, TARGET, now=NOW, event_id="e-1")
    request = smoke_request(pubsub, TARGET, event)
    assert request.headers["ce-id"] == "e-1" and json.loads(request.body or "") == event[1]
    data = gen1_data(pubsub, event[1])
    assert data["@type"] == "type.googleapis.com/google.pubsub.v1.PubsubMessage"
    assert json.loads(base64.b64decode(data["data"])) == {"order": 42} and data["messageId"] == "e-1"
    storage = spec(source, {"event_type": "google.storage.object.finalize", "bucket": "uploads"})
    _, obj = smoke_event(storage, TARGET, now=NOW)
    assert gen1_data(storage, obj) == obj
