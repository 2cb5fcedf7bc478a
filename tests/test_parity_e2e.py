"""Parity with the old function, through the migrate-function flow on the local cloud.

The old function is a 1st-gen function the local cloud's Cloud Functions stand-in serves,
seeded from the same source: private, at its gen1-shaped URL (`parity.old_url`, called with an
ID token whose audience is that URL). The story: the unchanged function answers like the old
one (parity same, promoted); a build whose answer differs by one byte is not promoted and the
revision before it keeps serving; with `on_difference: warn` it is promoted and the result
says what differs. The JSON route answers a new request id on every call, so only
`json_fields` makes it comparable. A Pub/Sub function's old function gets the event's data
through CallFunction. The old functions are never changed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from flowruns import migrate

from cf2run.fleet.report import result_rows
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import FunctionSpec, Target
from flows.migrate_function import summary

pytestmark = pytest.mark.usefixtures("prefect_api")

SOURCE = '''
import uuid


def hello(request):
    if request.path == "/order":
        return {"order": {"id": 42, "total": 10}, "request_id": uuid.uuid4().hex}
    return "hello from the function\\n"
'''


def source(tmp_path: Path, name: str, code: str = SOURCE) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "main.py").write_text(code)
    return directory


def spec(name: str, directory: Path, **parity: Any) -> FunctionSpec:
    return FunctionSpec.model_validate({
        "name": name, "source": directory, "runtime": "python311", "entry_point": "hello",
        "smoke": {"expect_body": "hell", "deadline_s": 60}, "parity": parity})


def serving_text(cloud: Cloud, url: str) -> str:
    return httpx.get(url, headers={"Authorization": f"Bearer {cloud.id_token(url)}"}, timeout=30).text


@pytest.fixture(scope="module")
def target(localcloud: LocalCloud) -> Target:
    return Target(kind="local", localcloud_dir=localcloud.state_dir)


def seed(localcloud: LocalCloud, directory: Path, code: Path, **function: Any) -> str:
    """A 1st-gen function seeded into the local cloud (contract.md's seed format); its name."""
    function_id = f"old-{uuid.uuid4().hex[:6]}"
    folder = directory / function_id
    folder.mkdir(parents=True)
    (folder / "source").symlink_to(code)
    (folder / "function.json").write_text(json.dumps({"runtime": "python311", **function}))
    [name] = localcloud.seed_functions(folder.parent)
    return str(name)


def definition(cloud: Cloud, name: str) -> tuple[int, str, str]:
    found = cloud.functions.get_function(name=name)
    return found.version_id, str(found.update_time), found.source_archive_url


@pytest.fixture(scope="module")
def old_function(localcloud: LocalCloud, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The old HTTP function: private (no iam.json), serving the original source."""
    code = source(tmp_path_factory.mktemp("old-source"), "old")
    return seed(localcloud, tmp_path_factory.mktemp("seed"), code, entryPoint="hello", httpsTrigger={})


@pytest.fixture(scope="module")
def old_url(cloud: Cloud, old_function: str) -> str:
    url = cloud.functions.get_function(name=old_function).https_trigger.url
    assert url.endswith("/" + old_function.rsplit("/", 1)[1])
    return str(url)


def test_an_unchanged_function_is_the_same_and_a_one_byte_change_is_not_promoted(
        target: Target, old_function: str, old_url: str, cloud: Cloud, tmp_path: Path) -> None:
    before = definition(cloud, old_function)
    name = f"par-{uuid.uuid4().hex[:6]}"
    parity = {"old_url": old_url, "json_fields": ["order"],
              "requests": [{"path": "/order"}], "headers": ["content-type"]}
    first, runs = migrate(spec(name, source(tmp_path, "v1"), **parity), target)
    assert first.status == "succeeded", first.message
    assert first.parity == "same" and first.parity_diffs == []
    assert f"parity[{name}]" in runs
    assert "parity same" in (first.message or "")
    assert "| Parity | same |" in summary(first)
    assert result_rows([first])[0]["parity"] == "same"

    # The migrated copy answers "hellO": one byte. Its candidate differs, and is discarded.
    changed = source(tmp_path, "v2", SOURCE.replace("hello from", "hellO from"))
    second, runs = migrate(spec(name, changed, **parity), target)
    assert (second.status, second.failed_step, second.parity) == ("failed", "parity", "differs")
    message = second.message or ""
    assert f"parity with {old_url}: 1 of 2 request(s) answered differently" in message
    assert "GET /: body line 1: old 'hello from the function', new 'hellO from the function'" in message
    assert f"Candidate {second.revision} was not promoted" in message
    assert f"{first.revision} keep(s) all the traffic" in message
    assert second.serving == [first.revision] and f"discard[{name}]" in runs
    assert f"promote[{name}]" not in runs
    assert serving_text(cloud, first.url or "") == "hello from the function\n"
    report = summary(second)
    assert "**Failed step:** `parity`" in report and "| Parity | differs |" in report
    assert "- GET /: body line 1: old 'hello from the function', new 'hellO from the function'" in report
    service = cloud.services.get_service(name=f"projects/{target.project}/locations/{target.region}/"
                                              f"services/{name}")
    assert [(t.revision.rsplit("/", 1)[-1], t.percent, t.tag) for t in service.traffic_statuses] == [
        (first.revision, 100, "")], "the candidate kept its tag or took traffic"
    assert definition(cloud, old_function) == before, "the old function was changed"
    assert serving_text(cloud, old_url) == "hello from the function\n"


def test_on_difference_warn_promotes_and_reports_the_difference(
        target: Target, old_url: str, cloud: Cloud, tmp_path: Path) -> None:
    name = f"warn-{uuid.uuid4().hex[:6]}"
    changed = source(tmp_path, "v2", SOURCE.replace("hello from", "hellO from"))
    result, runs = migrate(spec(name, changed, old_url=old_url, on_difference="warn"), target)
    assert result.status == "succeeded", result.message
    assert result.parity == "differs (warned)"
    assert result.parity_diffs == ["GET /: body line 1: old 'hello from the function', "
                                   "new 'hellO from the function'"]
    assert "parity differs (warned): GET /: body line 1" in (result.message or "")
    assert f"promote[{name}]" in runs
    assert serving_text(cloud, result.url or "") == "hellO from the function\n"
    assert "| Parity | differs (warned) |" in summary(result)


def test_json_fields_ignore_the_other_fields(target: Target, old_url: str, tmp_path: Path) -> None:
    """Every call answers another request_id: the whole body never matches, `order` does."""
    name = f"json-{uuid.uuid4().hex[:6]}"
    code = source(tmp_path, "v1")
    whole, _ = migrate(spec(name, code, old_url=old_url, requests=[{"path": "/order"}]), target)
    assert (whole.status, whole.failed_step) == ("failed", "parity")
    assert any(diff.startswith("GET /order: body $.request_id: old \"") for diff in whole.parity_diffs), \
        whole.parity_diffs
    fields, _ = migrate(spec(name, code, old_url=old_url, requests=[{"path": "/order"}],
                             json_fields=["order.id", "order.total"]), target)
    assert fields.status == "succeeded" and fields.parity == "same", fields.message


EVENT_SOURCE = '''
import base64
import json


def on_order(event, context):
    order = json.loads(base64.b64decode(event["data"]))
    print(f"order {order['order']} by {context.event_type}")
'''


def test_an_event_functions_old_function_gets_the_event_through_call_function(
        localcloud: LocalCloud, target: Target, cloud: Cloud, tmp_path: Path) -> None:
    """A Pub/Sub background function: its old function gets the message through CallFunction, the
    candidate the CloudEvent; each accepted it, so parity is the same. Both printed the order
    they decoded: each really ran, on the same message."""
    code = source(tmp_path, "event", EVENT_SOURCE)
    old = seed(localcloud, tmp_path / "seed", code, entryPoint="on_order",
               eventTrigger={"eventType": "google.pubsub.topic.publish",
                             "resource": "projects/local-project/topics/orders"})
    before = definition(cloud, old)
    name = f"pubsub-{uuid.uuid4().hex[:6]}"
    migrated = FunctionSpec.model_validate({
        "name": name, "source": code, "runtime": "python311", "entry_point": "on_order",
        "signature_type": "event", "parity": {"old_function": old},
        "trigger": {"event_type": "google.pubsub.topic.publish", "topic": "orders", "data": {"order": 42}}})
    result, runs = migrate(migrated, target)
    assert result.status == "succeeded", result.message
    assert result.parity == "same" and f"parity[{name}]" in runs
    assert "order 42 by google.pubsub.topic.publish" in localcloud.logs(name)
    assert "order 42 by google.pubsub.topic.publish" in localcloud.logs(old.rsplit("/", 1)[1])
    assert definition(cloud, old) == before
