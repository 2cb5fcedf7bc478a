"""The gen1 settings that carry over (secrets, VPC, runtimes, names): what a manifest may say,
and the message a user gets, naming file, function and field, when it is wrong.

More invalid manifests (memory, cpu, env, labels, smoke, ...) are in test_spec.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cf2run.errors import SpecError
from cf2run.manifest.spec import load_manifest


def function(**overrides: Any) -> dict[str, Any]:
    return {"name": "orders-api", "source": "src", "runtime": "python312", "entry_point": "handle",
            **overrides}


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "main.py").write_text("def handle(request):\n    return 'ok'\n")
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_manifest(path)


VOLUME = {"mount_path": "/etc/secrets", "secret": "db-creds"}


@pytest.mark.parametrize(("overrides", "where", "says"), [
    ({"name": "a" * 46}, "functions[0] (" + "a" * 46 + ").name", "use at most 45 characters"),
    ({"secret_env": {"1KEY": "api-key"}}, ".secret_env", "not a valid environment variable name"),
    ({"secret_env": {"PORT": "api-key"}}, ".secret_env", "PORT, which Cloud Run reserves"),
    ({"secret_env": {"KEY": "projects/p/secrets/api-key"}}, ".secret_env.KEY.secret",
     "not a Secret Manager secret id"),
    ({"secret_env": {"KEY": "api-key:0"}}, ".secret_env.KEY.version", "not 'latest', a version number"),
    ({"secret_env": {"KEY": {"secret": "api-key", "version": "v 1"}}}, ".secret_env.KEY.version",
     "not 'latest', a version number"),
    ({"secret_env": {"KEY": {"secret": "api-key", "project": "My Project"}}},
     ".secret_env.KEY.project", "not a Google Cloud project id"),
    ({"secret_env": {"KEY": {"secret": "api-key", "verison": "1"}}}, ".secret_env.KEY.verison",
     "did you mean 'version'?"),
    ({"env": {"KEY": "x"}, "secret_env": {"KEY": "api-key"}}, "functions[0] (orders-api)",
     "KEY is set both in env and in secret_env"),
    ({"secret_volumes": [{**VOLUME, "mount_path": "etc/secrets"}]}, ".secret_volumes[0].mount_path",
     "must be an absolute directory"),
    ({"secret_volumes": [{**VOLUME, "mount_path": "/"}]}, ".secret_volumes[0].mount_path",
     "other than '/'"),
    ({"secret_volumes": [{**VOLUME, "mount_path": "/proc/secrets"}]}, ".secret_volumes[0].mount_path",
     "is under /proc"),
    ({"secret_volumes": [{**VOLUME, "mount_path": "/var/log"}]}, ".secret_volumes[0].mount_path",
     "is under /var/log"),
    ({"secret_volumes": [VOLUME, {**VOLUME, "secret": "other"}]}, ".secret_volumes",
     "mount /etc/secrets twice"),
    ({"secret_volumes": [VOLUME, {"mount_path": "/etc/secrets/db", "secret": "other"}]},
     ".secret_volumes", "mount /etc/secrets and /etc/secrets/db inside it"),
    ({"secret_volumes": [{**VOLUME, "versions": [{"path": "../password"}]}]},
     ".secret_volumes[0].versions[0].path", "relative file path"),
    ({"secret_volumes": [{**VOLUME, "versions": [{"path": "/password"}]}]},
     ".secret_volumes[0].versions[0].path", "relative file path"),
    ({"secret_volumes": [{**VOLUME, "versions": [{"path": "p"}, {"path": "p", "version": "2"}]}]},
     ".secret_volumes[0].versions", "path 'p' is given twice"),
    ({"secret_volumes": [{"mount_path": "/etc/secrets"}]}, ".secret_volumes[0].secret",
     "required field `secret` is missing"),
    ({"vpc_connector": "My_Connector"}, ".vpc_connector", "not a connector name"),
    ({"vpc_connector": "projects/p/locations/us-central1/subnets/x"}, ".vpc_connector",
     "not a connector name"),
    ({"vpc_egress": "all-traffic"}, "functions[0] (orders-api)", "'all-traffic' needs vpc_connector"),
    ({"vpc_connector": "conn", "vpc_egress": "all"}, ".vpc_egress",
     "'private-ranges-only' or 'all-traffic'"),
    ({"memory": "16Gi"}, "functions[0] (orders-api)", "above gen1's 8Gi tier"),
    # cloud.google.com/run/docs/configuring/services/cpu: 4 vCPU need >= 2 GiB, 6 and 8 >= 4 GiB.
    ({"cpu": "4", "memory": "1Gi", "concurrency": 10}, "functions[0] (orders-api)",
     "cpu 4 with memory 1Gi: Cloud Run needs at least 2Gi of memory for 4 vCPU; set memory: 2Gi"),
    ({"cpu": "6", "memory": "2Gi"}, "functions[0] (orders-api)",
     "cpu 6 with memory 2Gi: Cloud Run needs at least 4Gi of memory for 6 vCPU; set memory: 4Gi"),
    ({"cpu": "8", "memory": "3Gi"}, "functions[0] (orders-api)",
     "cpu 8 with memory 3Gi: Cloud Run needs at least 4Gi of memory for 8 vCPU"),
    # ... "between 0.08 and 1, in increments of 0.001" (configuring/jobs/cpu; the local rules too)
    ({"cpu": "0.0805"}, ".cpu", "below 1, Cloud Run takes cpu in steps of 0.001"),
    ({"timeout_s": 0}, ".timeout_s", "greater than or equal to 1"),
    ({"min_instances": -1}, ".min_instances", "greater than or equal to 0"),
    ({"signature_type": "event", "trigger": {"event_type": "google.pubsub.topic.publish"}},
     ".trigger", "needs `topic`; add it"),
    ({"signature_type": "event", "trigger": {"event_type": "google.storage.object.finalize",
                                             "bucket": "b-1", "topic": "orders"}},
     ".trigger", "`topic` does not apply to a storage trigger"),
    ({"signature_type": "event", "trigger": {"event_type": "google.storage.object.finalize",
                                             "bucket": "Bad Bucket"}},
     ".trigger.bucket", "not a Cloud Storage bucket name"),
    ({"signature_type": "event", "trigger": {"event_type": "pubsub", "topic": "orders"}},
     ".trigger.event_type", "neither a gen1 event type"),
    ({"signature_type": "cloudevent", "trigger": {"event_type": "com.example.created",
                                                  "filters": {"type": "x"}}},
     ".trigger.filters", "set trigger.event_type instead"),
    ({"trigger": {"event_type": "google.pubsub.topic.publish", "topic": "orders"}},
     "functions[0] (orders-api)", "an http function has no trigger"),
    ({"signature_type": "event", "trigger": {"event_type": "com.example.created"}},
     "functions[0] (orders-api)", "use signature_type: cloudevent"),
    ({"signature_type": "event", "trigger": {"event_type": "google.pubsub.topic.publish", "topic": "t-1"},
      "smoke": {"json": {"a": 1}}}, "functions[0] (orders-api)", "put the event's data in trigger.data"),
    ({"signature_type": "event", "trigger": {"event_type": "google.pubsub.topic.publish", "topic": "t-1",
                                             "bukcet": "x"}}, ".trigger.bukcet", "did you mean 'bucket'?"),
])
def test_invalid_setting_is_rejected_naming_function_field_and_rule(
        tmp_path: Path, overrides: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(SpecError) as caught:
        load(tmp_path, {"functions": [function(**overrides)]})
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "manifest.yaml") + ": "), message
    assert where in message, message
    assert says in message, message


@pytest.mark.parametrize("runtime", ["python38", "python39", "nodejs16"])
def test_ubuntu18_runtimes_need_a_builder_that_has_that_stack(tmp_path: Path, runtime: str) -> None:
    entry = "handle" if runtime.startswith("python") else "handleJs"
    with pytest.raises(SpecError) as caught:
        load(tmp_path, {"functions": [function(), function(name="legacy", runtime=runtime,
                                                            entry_point=entry)]})
    message = str(caught.value)
    assert f"functions[1] (legacy).runtime: {runtime} is built only on Google's Ubuntu 18 stack" in message
    assert "set target.builder: gcr.io/buildpacks/builder:v1" in message
    loaded = load(tmp_path, {"target": {"builder": "gcr.io/buildpacks/builder:v1"},
                             "functions": [function(runtime=runtime, entry_point=entry)]})
    assert loaded.functions[0].runtime == runtime


def test_every_gen1_setting_in_one_manifest(tmp_path: Path) -> None:
    manifest = load(tmp_path, {"functions": [function(
        memory="1Gi", timeout_s=540, min_instances=1, max_instances=5,
        service_account="fn@my-project.iam.gserviceaccount.com", env={"MODE": "prod"},
        build_env={"PIP_INDEX_URL": "https://example.org/simple"},
        secret_env={"API_KEY": "api-key", "DB": {"secret": "db", "version": "4", "project": "other-proj"}},
        secret_volumes=[{**VOLUME, "versions": [{"path": "password", "version": "2"}]}],
        vpc_connector="conn", vpc_egress="all-traffic", ingress="internal-and-gclb",
        labels={"team": "orders"}, signature_type="event")]})
    spec = manifest.functions[0]
    assert spec.effective_cpu == "0.583"
    assert (spec.secret_env["API_KEY"].secret, spec.secret_env["API_KEY"].version) == ("api-key", "latest")
    assert spec.secret_volumes[0].versions[0].version == "2"
    assert (spec.vpc_connector, spec.vpc_egress) == ("conn", "all-traffic")


def test_secret_shorthands_in_defaults_merge_key_by_key(tmp_path: Path) -> None:
    manifest = load(tmp_path, {"defaults": {"secret_env": {"API_KEY": "api-key:2"}},
                               "functions": [function(secret_env={"OTHER": "other"}), function(name="b")]})
    assert set(manifest.functions[0].secret_env) == {"API_KEY", "OTHER"}
    assert manifest.functions[1].secret_env["API_KEY"].version == "2"
