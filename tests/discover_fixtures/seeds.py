"""Seed directories for the local Cloud Functions: the samples in examples/ as 1st-gen functions
(contract: SEED/NAME/function.json, source/, iam.json), and the odd ones discover must refuse."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROJECT = "discover-samples"
REGION = "us-central1"
PUBLIC = {"bindings": [{"role": "roles/cloudfunctions.invoker", "members": ["allUsers"]}]}
CALLER = f"serviceAccount:caller@{PROJECT}.iam.gserviceaccount.com"


def _http(**fields: Any) -> dict[str, Any]:
    return {"httpsTrigger": {"securityLevel": "SECURE_ALWAYS"}, **fields}


def _event(event_type: str, resource: str, **fields: Any) -> dict[str, Any]:
    return {"eventTrigger": {"eventType": event_type, "resource": resource}, **fields}


#: Each sample as gen1 deployed it: (example folder, v1 CloudFunction JSON, IAM policy).
SAMPLES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "hello-python": ("python-http", _http(
        runtime="python311", entryPoint="hello", availableMemoryMb=256, timeout="60s",
        labels={"team": "samples", "deployment-tool": "cli-gcloud"},
        environmentVariables={"GREETING": "Hello"}, maxInstances=10), PUBLIC),
    "hello-node": ("node-http", _http(
        runtime="nodejs20", entryPoint="helloHttp", availableMemoryMb=512, timeout="30s",
        labels={"team": "samples"}, minInstances=1,
        ingressSettings="ALLOW_INTERNAL_AND_GCLB"),
        {"bindings": [{"role": "roles/cloudfunctions.invoker", "members": [CALLER]}]}),
    "storage-events": ("python-cloudevent", _event(
        "google.storage.object.finalize", "projects/_/buckets/uploads",
        runtime="python311", entryPoint="on_event", labels={"team": "samples"}), {}),
    "orders-background": ("node-background", _event(
        "google.pubsub.topic.publish", f"projects/{PROJECT}/topics/orders",
        runtime="nodejs20", entryPoint="handler", labels={"team": "samples"}), {}),
    "pubsub-orders": ("python-pubsub", _event(
        "google.pubsub.topic.publish", f"projects/{PROJECT}/topics/orders",
        runtime="python311", entryPoint="on_order", labels={"team": "samples"},
        buildEnvironmentVariables={"PIP_NO_CACHE_DIR": "1"},
        eventTrigger={"eventType": "google.pubsub.topic.publish",
                      "resource": f"projects/{PROJECT}/topics/orders",
                      "failurePolicy": {"retry": {}}}), {}),
    "uploads-node": ("node-storage", _event(
        "google.storage.object.finalize", "projects/_/buckets/uploads",
        runtime="nodejs20", entryPoint="onUpload", labels={"team": "samples"}), {}),
}


def function_name(function_id: str, project: str = PROJECT, region: str = REGION) -> str:
    return f"projects/{project}/locations/{region}/functions/{function_id}"


def write_function(seed: Path, function_id: str, definition: dict[str, Any],
                   policy: dict[str, Any] | None = None, source: Path | None = None,
                   source_zip: bytes | None = None, v2: bool = False, project: str = PROJECT,
                   region: str = REGION) -> Path:
    folder = seed / function_id
    folder.mkdir(parents=True)
    body = {"name": function_name(function_id, project, region), **definition}
    (folder / ("function.v2.json" if v2 else "function.json")).write_text(json.dumps(body, indent=2))
    if policy:
        (folder / "iam.json").write_text(json.dumps(policy))
    if source is not None:
        (folder / "source").symlink_to(source)
    if source_zip is not None:
        (folder / "source.zip").write_bytes(source_zip)
    return folder


def samples_seed(seed: Path) -> Path:
    for function_id, (example, definition, policy) in SAMPLES.items():
        write_function(seed, function_id, definition, policy, source=EXAMPLES / example)
    return seed


def hostile_zip() -> bytes:
    """A deployed source with an entry that climbs out of the folder."""
    from io import BytesIO
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", "def hello(request):\n    return 'hi'\n")
        archive.writestr("../../escaped.py", "print('outside')\n")
    return buffer.getvalue()


def odd_seed(seed: Path) -> Path:
    """A 2nd-gen function, two runtimes cf2run does not build, and a hostile zip."""
    write_function(seed, "already-run", {
        "environment": "GEN_2", "buildConfig": {"runtime": "python312", "entryPoint": "hello"},
        "serviceConfig": {"availableMemory": "256M"}}, v2=True)
    write_function(seed, "legacy-go", _http(runtime="go121", entryPoint="Hello"),
                   source=EXAMPLES / "python-http")
    write_function(seed, "old-python", _http(runtime="python37", entryPoint="hello"),
                   source=EXAMPLES / "python-http")
    write_function(seed, "climbs-out", _http(runtime="python311", entryPoint="hello"),
                   source_zip=hostile_zip())
    return seed
