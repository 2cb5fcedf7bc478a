"""Golden tests: a gen1 function (v1 CloudFunction, built here as the API returns it) -> the
manifest entry `cf2run discover` writes, every setting with where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from discover_fixtures.gen1_functions import (
    PROJECT,
    REGION,
    every_setting,
    every_setting_policy,
    name,
    pubsub_function,
)
from google.cloud import functions_v1 as f
from google.iam.v1 import policy_pb2

from cf2run.discovery import settings
from cf2run.discovery.entry import check_migratable, entry_for
from cf2run.discovery.manifest_writer import render
from cf2run.discovery.names import service_names
from cf2run.discovery.signature import declared_signature
from cf2run.manifest.spec import FunctionSpec, load_manifest

GOLDEN = Path(__file__).parent / "discover_fixtures" / "every_setting.golden.yaml"


def golden_text() -> str:
    http = entry_for(every_setting(), every_setting_policy(), name="orders-api",
                     source="functions/Orders_API",
                     source_origin="deployed source of version 7 (GenerateDownloadUrl)", declared=None)
    event = entry_for(pubsub_function(retry=True), policy_pb2.Policy(), name="on-order",
                      source="functions/on-order",
                      source_origin="deployed source: sourceArchiveUrl gs://acme-sources/on-order.zip",
                      declared=None)
    return render([http, event], kind="gcp", project=PROJECT, region=REGION)


def test_every_setting_is_written_with_its_origin() -> None:
    assert golden_text() == GOLDEN.read_text()


def test_the_written_manifest_loads(tmp_path: Path) -> None:
    """Fields other branches add (invokers, parity) are left out while FunctionSpec lacks them."""
    for folder in ("Orders_API", "on-order"):
        (tmp_path / "functions" / folder).mkdir(parents=True)
    data = yaml.safe_load(golden_text())
    for item in data["functions"]:
        for key in [key for key in item if key not in FunctionSpec.model_fields]:
            del item[key]
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(data))
    manifest = load_manifest(tmp_path / "manifest.yaml")
    orders, on_order = manifest.functions
    assert (orders.memory, orders.timeout_s, orders.min_instances, orders.max_instances) == (
        "1Gi", 300, 2, 50)
    assert orders.effective_cpu == "0.583"  # gen1's CPU for 1024 MB
    assert orders.env == {"MODE": "live", "RETRIES": "3"}
    assert orders.secret_env["API_KEY"].project == "123456789"
    password = orders.secret_env["DB_PASSWORD"]
    assert password.project is None and password.version == "3"
    assert orders.vpc_egress == "all-traffic" and orders.ingress == "internal-and-gclb"
    assert orders.allow_unauthenticated is True
    assert on_order.trigger is not None and on_order.trigger.topic == "orders"
    assert on_order.service_account == f"{PROJECT}@appspot.gserviceaccount.com"


def entry_values(fn: f.CloudFunction, policy: policy_pb2.Policy | None = None) -> dict[str, Any]:
    entry = entry_for(fn, policy or policy_pb2.Policy(), name="fn", source="functions/fn",
                      source_origin="here", declared=None)
    return {item.field: item.value for item in entry.settings}


def test_invoker_members_are_carried_and_all_users_makes_it_public() -> None:
    values = entry_values(every_setting(), every_setting_policy())
    assert values["allow_unauthenticated"] is True
    assert values["invokers"] == ["group:ops@acme.com",
                                  f"serviceAccount:caller@{PROJECT}.iam.gserviceaccount.com"]


def test_a_conditional_invoker_binding_is_reported_not_carried() -> None:
    binding = policy_pb2.Binding(role="roles/cloudfunctions.invoker", members=["user:a@acme.com"])
    binding.condition.expression = "request.time < timestamp('2030-01-01T00:00:00Z')"
    policy = policy_pb2.Policy(bindings=[binding])
    entry = entry_for(every_setting(), policy, name="fn", source="s", source_origin="o", declared=None)
    assert dict((s.field, s.value) for s in entry.settings)["invokers"] == []
    assert any("under condition" in item.setting for item in entry.not_carried)


def test_a_storage_trigger_names_its_bucket_and_an_unset_retry_policy_is_reported() -> None:
    fn = pubsub_function()
    fn.event_trigger = f.EventTrigger(event_type="google.storage.object.finalize",
                                      resource="projects/_/buckets/uploads")
    entry = entry_for(fn, policy_pb2.Policy(), name="fn", source="s", source_origin="o", declared=None)
    values = {item.field: item.value for item in entry.settings}
    assert values["trigger"] == {"event_type": "google.storage.object.finalize", "bucket": "uploads"}
    assert values["parity"] == {"old_function": fn.name}
    assert any("gen1 did not retry" in item.setting for item in entry.not_carried)


def test_a_topic_of_another_project_keeps_its_full_name() -> None:
    fn = pubsub_function()
    fn.event_trigger.resource = "projects/other-project/topics/orders"
    assert entry_values(fn)["trigger"]["topic"] == "projects/other-project/topics/orders"


@pytest.mark.parametrize(("runtime", "says"), [
    ("python37", "upgrade the function to a supported runtime first"),
    ("nodejs12", "--runtime nodejs22"),
    ("go121", "cf2run builds Python and Node.js functions only"),
    ("java17", "gcloud functions upgrade"),
])
def test_runtimes_cf2run_does_not_build_are_refused_with_what_to_do(runtime: str, says: str) -> None:
    fn = every_setting()
    fn.runtime = runtime
    with pytest.raises(settings.CannotMigrate) as refused:
        check_migratable(fn)
    assert runtime in refused.value.reason and says in str(refused.value)


def test_source_from_a_cloud_source_repository_is_refused() -> None:
    fn = every_setting()
    fn.source_repository = f.SourceRepository(url="https://source.developers.google.com/projects/p/repos/r")
    with pytest.raises(settings.CannotMigrate, match="Cloud Source Repository"):
        check_migratable(fn)


@pytest.mark.parametrize("event_type", ["providers/cloud.firestore/eventTypes/document.write",
                                        "providers/cloud.storage/eventTypes/object.change"])
def test_event_types_without_a_cf2run_trigger_are_refused(event_type: str) -> None:
    fn = pubsub_function()
    fn.event_trigger = f.EventTrigger(event_type=event_type, resource="projects/p/databases/(default)")
    with pytest.raises(settings.CannotMigrate, match="Pub/Sub and Cloud Storage"):
        check_migratable(fn)


def test_service_names_are_valid_stable_and_unique() -> None:
    long_id = "Process_Incoming_Customer_Orders_From_The_Web_Shop_Quickly"
    names = service_names(["hello", "Orders_API", "orders-api-x", "My_Fn", "my-fn", long_id])
    assert names["hello"] == "hello" and names["my-fn"] == "my-fn"
    assert names["Orders_API"] == "orders-api"
    assert names["My_Fn"].startswith("my-fn-") and names["My_Fn"] != "my-fn"
    assert len(names[long_id]) <= 45 and names[long_id].startswith("process-incoming-customer-orders")
    assert names == service_names(reversed(list(names)))  # the same whatever the order
    for service in names.values():
        FunctionSpec.model_validate({"name": service, "source": ".", "runtime": "python312",
                                     "entry_point": "main"})


def test_a_python_source_that_registers_a_cloudevent_function_is_served_as_one(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(
        "import functions_framework\n\n@functions_framework.cloud_event\n"
        "def on_event(event):\n    pass\n\ndef other(data, context):\n    pass\n")
    assert declared_signature(tmp_path, "python312", "on_event") == "cloudevent"
    assert declared_signature(tmp_path, "python312", "other") is None
    fn = pubsub_function()
    entry = entry_for(fn, policy_pb2.Policy(), name="fn", source="s", source_origin="o",
                      declared="cloudevent")
    assert {s.field: s.value for s in entry.settings}["signature_type"] == "cloudevent"


def test_a_node_source_that_registers_a_cloudevent_function_is_served_as_one(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"main": "app.js"}')
    (tmp_path / "app.js").write_text("const functions = require('@google-cloud/functions-framework');\n"
                                     "functions.cloudEvent('onUpload', (event) => {});\n")
    assert declared_signature(tmp_path, "nodejs20", "onUpload") == "cloudevent"
    assert declared_signature(tmp_path, "nodejs20", "other") is None


def test_unset_fields_get_the_v1_apis_defaults() -> None:
    values = entry_values(pubsub_function())
    assert (values["memory"], values["timeout_s"], values["ingress"], values["max_instances"]) == (
        "256Mi", 60, "all", None)
    assert values["entry_point"] == "onOrder"
    fn = pubsub_function()
    fn.entry_point = ""
    assert entry_values(fn)["entry_point"] == "on-order"  # "Defaults to the resource name suffix"
    assert name("x").endswith("/x")
