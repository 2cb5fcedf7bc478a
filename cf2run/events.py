"""Event functions: the event their smoke test sends, and the Eventarc trigger they need.

On Cloud Run an event function is called by Eventarc, which POSTs a CloudEvent in binary
mode: ``ce-*`` headers for the attributes, the event data as the JSON body. The smoke test
sends exactly that, for the function's trigger:

- Pub/Sub: ``google.cloud.pubsub.topic.v1.messagePublished`` from
  ``//pubsub.googleapis.com/projects/P/topics/T``, data ``{"message": {"data": BASE64, ...},
  "subscription": ...}``;
- Storage: ``google.cloud.storage.object.v1.finalized`` (or deleted, archived,
  metadataUpdated) from ``//storage.googleapis.com/projects/_/buckets/B``, subject
  ``objects/NAME``, data = the object's metadata;
- custom: the manifest's type, source and data.

A legacy ``event`` function (``(data, context)``) gets the same request: the Functions
Framework turns a known CloudEvent into the legacy event (Python: event_conversion.py; Node.js:
its CloudEvent-to-legacy middleware), as it does behind Eventarc.

`eventarc_command` is the ``gcloud eventarc triggers create`` the user runs once the service
serves (cf2run does not create triggers: the original function keeps its own until the user
switches).
"""

from __future__ import annotations

import base64
import json
import shlex
import uuid
from datetime import UTC, datetime
from typing import Any

from cf2run.manifest import mapping
from cf2run.manifest.spec import FunctionSpec, SmokeRequest, Target
from cf2run.manifest.spec_parts import Trigger

PUBSUB_SOURCE = "//pubsub.googleapis.com"
STORAGE_SOURCE = "//storage.googleapis.com"
SMOKE_MESSAGE = "cf2run smoke test"
PUBSUB_MESSAGE_TYPE = "type.googleapis.com/google.pubsub.v1.PubsubMessage"
SMOKE_OBJECT = "cf2run-smoke/object.txt"


def topic_name(trigger: Trigger, target: Target) -> str:
    """``projects/P/topics/T`` (a bare topic id is in the target's project)."""
    topic = trigger.topic or ""
    return topic if topic.startswith("projects/") else f"projects/{target.project}/topics/{topic}"


def smoke_event(spec: FunctionSpec, target: Target, now: datetime | None = None,
                event_id: str | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """(binary-mode headers, JSON data) of the event the trigger of `spec` delivers."""
    trigger = spec.trigger
    if trigger is None:
        raise ValueError(f"{spec.name} has no trigger")
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event_id = event_id or f"cf2run-smoke-{uuid.uuid4().hex[:12]}"
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-type": trigger.cloudevent_type,
               "ce-time": when, "Content-Type": "application/json; charset=utf-8"}
    if trigger.kind == "pubsub":
        topic = topic_name(trigger, target)
        headers["ce-source"] = f"{PUBSUB_SOURCE}/{topic}"
        message = {"data": base64.b64encode(_message_bytes(trigger.data)).decode(), "attributes": {},
                   "messageId": event_id, "publishTime": when}
        project = topic.split("/")[1]
        return headers, {"message": message,
                         "subscription": f"projects/{project}/subscriptions/cf2run-smoke-{spec.name}"}
    if trigger.kind == "storage":
        obj = {"kind": "storage#object", "bucket": trigger.bucket, "name": SMOKE_OBJECT,
               "contentType": "text/plain", "size": str(len(SMOKE_MESSAGE)), "generation": "1",
               "metageneration": "1", "timeCreated": when, "updated": when, "storageClass": "STANDARD"}
        if isinstance(trigger.data, dict):
            obj.update(trigger.data)
        obj["id"] = f"{obj['bucket']}/{obj['name']}/{obj['generation']}"
        headers["ce-source"] = f"{STORAGE_SOURCE}/projects/_/buckets/{obj['bucket']}"
        headers["ce-subject"] = f"objects/{obj['name']}"
        return headers, obj
    headers["ce-source"] = trigger.source or f"//cf2run/{spec.name}"
    return headers, trigger.data if trigger.data is not None else {}


def _message_bytes(data: Any) -> bytes:
    if data is None:
        return SMOKE_MESSAGE.encode()
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data, separators=(",", ":")).encode()


Event = tuple[dict[str, str], Any]


def smoke_request(spec: FunctionSpec, target: Target, event: Event | None = None) -> SmokeRequest:
    """The spec's smoke request, carrying its trigger's event (`event`, else a new one of
    `smoke_event`; the spec's own headers win)."""
    headers, data = event or smoke_event(spec, target)
    return spec.smoke.model_copy(update={
        "method": "POST", "headers": {**headers, **spec.smoke.headers},
        "body": json.dumps(data), "json_body": None})


def gen1_data(spec: FunctionSpec, data: Any) -> Any:
    """The data a 1st-gen background function gets for a CloudEvent's `data` (what CallFunction
    passes it): Pub/Sub, the PubsubMessage with its ``@type`` ({"@type": ..., data: BASE64,
    attributes, messageId, publishTime}), as the Functions Framework turns the CloudEvent back
    into gen1's event (functions-framework-python, event_conversion.py, _PUBSUB_MESSAGE_TYPE) and
    as `gcloud functions call --data '{"data": "BASE64"}'` sends it; Storage, the object; others,
    the data itself."""
    if spec.trigger is not None and spec.trigger.kind == "pubsub":
        return {"@type": PUBSUB_MESSAGE_TYPE, **data["message"]}
    return data


def trigger_id(spec: FunctionSpec) -> str:
    kind = spec.trigger.kind if spec.trigger else "event"
    return f"{spec.name}-{kind}"


def eventarc_command(spec: FunctionSpec, target: Target) -> str | None:
    """The ``gcloud eventarc triggers create`` that routes the function's events to its service."""
    trigger = spec.trigger
    if trigger is None:
        return None
    args = ["gcloud", "eventarc", "triggers", "create", trigger_id(spec),
            f"--project={target.project}", f"--location={trigger.location or target.region}",
            f"--destination-run-service={spec.name}", f"--destination-run-region={target.region}",
            f"--event-filters=type={trigger.cloudevent_type}"]
    if trigger.kind == "storage":
        args.append(f"--event-filters=bucket={trigger.bucket}")
    args += [f"--event-filters={key}={value}" for key, value in trigger.filters.items()]
    if trigger.kind == "pubsub":
        args.append(f"--transport-topic={topic_name(trigger, target)}")
    args.append(f"--service-account={trigger.service_account or mapping.service_account(spec, target)}")
    return " ".join(shlex.quote(arg) for arg in args)


def missing_trigger_note(spec: FunctionSpec) -> str | None:
    """For an event function without a trigger: what to add to get the Eventarc command."""
    if spec.signature_type == "http" or spec.trigger is not None:
        return None
    return (f"{spec.name} is an event function ({spec.signature_type}) without a trigger in the "
            "manifest: add "
            "`trigger: {event_type, topic | bucket}` to smoke-test it with such an event and to get "
            "the Eventarc trigger to create")
