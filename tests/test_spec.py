"""Manifest and spec validation: what users see when a manifest is wrong, before any cloud call."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from cf2run.errors import SpecError
from cf2run.manifest.spec import FunctionSpec, SmokeRequest, Target, load_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def function(**overrides: Any) -> dict[str, Any]:
    base = {"name": "orders-api", "source": "src", "runtime": "python312", "entry_point": "handle"}
    return {**base, **overrides}


def write_manifest(tmp_path: Path, data: dict[str, Any]) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "main.py").write_text("def handle(request):\n    return 'ok'\n")
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rejected(tmp_path: Path, data: dict[str, Any], **kwargs: Any) -> str:
    path = write_manifest(tmp_path, data)
    with pytest.raises(SpecError) as caught:
        load_manifest(path, **kwargs)
    return str(caught.value)


# -- valid manifests --------------------------------------------------------------------------


def test_examples_manifest_loads_with_sources_resolved_next_to_it() -> None:
    manifest = load_manifest(EXAMPLES / "manifest.yaml")
    assert manifest.target.kind == "local"
    assert manifest.names == ["hello-python", "hello-node", "storage-events", "orders-background",
                              "pubsub-orders", "uploads-node"]
    by_name = {spec.name: spec for spec in manifest.functions}
    assert by_name["hello-node"].source == EXAMPLES / "node-http"
    assert {spec.language for spec in manifest.functions} == {"python", "nodejs"}
    assert by_name["storage-events"].signature_type == "cloudevent"
    assert by_name["orders-background"].signature_type == "event"
    assert by_name["pubsub-orders"].trigger and by_name["pubsub-orders"].trigger.kind == "pubsub"
    assert by_name["uploads-node"].trigger and by_name["uploads-node"].trigger.kind == "storage"
    # defaults are merged under each function's own values
    assert all(spec.labels == {"team": "samples"} for spec in manifest.functions)
    assert all(spec.smoke.deadline_s == 120 for spec in manifest.functions)
    assert by_name["hello-node"].memory == "512Mi"
    assert by_name["storage-events"].trigger and by_name["storage-events"].trigger.bucket == "uploads"


def test_defaults_merge_mappings_key_by_key_and_function_values_win(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, {
        "defaults": {"memory": "512Mi", "env": {"A": "1", "B": "2"}, "smoke": {"deadline_s": 5}},
        "functions": [function(env={"B": "3"}, smoke={"path": "/x"}),
                      function(name="other", memory="1Gi")],
    })
    first, second = load_manifest(path).functions
    assert first.env == {"A": "1", "B": "3"}
    assert (first.smoke.path, first.smoke.deadline_s) == ("/x", 5)
    assert (first.memory, second.memory) == ("512Mi", "1Gi")


def test_gen1_cpu_follows_the_memory_tier() -> None:
    # REFERENCE §5: gen1 CPU was tied to memory: .083/.167/.333/.583/1/2/2 vCPU.
    expected = {"128Mi": "0.083", "256Mi": "0.167", "512Mi": "0.333", "1Gi": "0.583",
                "2Gi": "1", "4Gi": "2", "8Gi": "2"}
    for memory, cpu in expected.items():
        spec = FunctionSpec.model_validate(function(source=str(EXAMPLES / "python-http"), memory=memory))
        assert spec.effective_cpu == cpu
    explicit = FunctionSpec.model_validate(
        function(source=str(EXAMPLES / "python-http"), cpu="1", concurrency=80))
    assert (explicit.effective_cpu, explicit.cpu_cores) == ("1", 1.0)


def test_runtime_gives_language_and_version() -> None:
    source = str(EXAMPLES / "python-http")
    python = FunctionSpec.model_validate(function(source=source, runtime="python312"))
    node = FunctionSpec.model_validate(function(source=source, runtime="nodejs20", entry_point="$fn"))
    assert (python.language, python.runtime_version) == ("python", "3.12.x")
    assert (node.language, node.runtime_version) == ("nodejs", "20.x.x")


def test_only_keeps_the_named_functions(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, {"functions": [function(), function(name="b"), function(name="c")]})
    assert load_manifest(path, only=["c", "orders-api"]).names == ["orders-api", "c"]


def test_target_defaults_bucket_and_image_repository() -> None:
    target = Target(project="example.com:my-proj", region="europe-west1")
    assert target.bucket == "example_com_my-proj_cloudbuild"  # REFERENCE §1: ':'/'.' -> '_'
    assert target.registry_host == "europe-west1-docker.pkg.dev"
    assert target.image_repository("fn") == "europe-west1-docker.pkg.dev/example.com/my-proj/cf2run/fn"
    assert Target(staging_bucket="gs://mine").bucket == "mine"


def test_default_bucket_of_a_google_domain_project_says_elgoog() -> None:
    """gcloud's staging_bucket_util.py, GetDefaultStagingBucket: "The string 'google' is not
    allowed in bucket names", so it becomes 'elgoog' (REFERENCE §7)."""
    assert Target(project="google.com:my-proj").bucket == "elgoog_com_my-proj_cloudbuild"


def test_target_kind_override(tmp_path: Path) -> None:
    data = {"target": {"project": "my-proj-123"}, "functions": [function()]}
    path = write_manifest(tmp_path, data)
    assert load_manifest(path, target_kind="gcp").target.kind == "gcp"


def test_every_field_has_a_description() -> None:
    for model in (FunctionSpec, SmokeRequest, Target):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


# -- invalid manifests: each message names file, function and field ---------------------------


@pytest.mark.parametrize(("overrides", "where", "says"), [
    ({"name": "Orders_API"}, "functions[0] (Orders_API).name", "not a valid Cloud Run service name"),
    ({"name": "x" * 50}, ".name", "has 50 characters; use at most 45 characters"),
    ({"name": "orders-"}, ".name", "not ending with '-'"),
    ({"env": {"PORT": "8080"}}, "functions[0] (orders-api).env", "PORT, which Cloud Run reserves"),
    ({"env": {"K_SERVICE": "x"}}, ".env", "K_SERVICE"),
    ({"env": {"1BAD": "x"}}, ".env", "not a valid environment variable name"),
    ({"build_env": {"GOOGLE_FUNCTION_TARGET": "x"}}, ".build_env", "set `entry_point` instead"),
    ({"concurrency": 10}, "functions[0] (orders-api)", "concurrency 10 with cpu 0.167"),
    ({"memory": "1Gi", "cpu": "0.25"}, "functions[0] (orders-api)", "at least 0.5 vCPU above 512Mi"),
    ({"memory": "2Gi", "cpu": "0.5"}, "functions[0] (orders-api)", "at least 1 vCPU above 1024Mi"),
    ({"cpu": "3"}, ".cpu", "0.08 to 1, or 2, 4, 6 or 8"),
    ({"memory": "1GB"}, ".memory", "not a Kubernetes quantity"),
    ({"memory": "64Mi"}, ".memory", "outside Cloud Run's range"),
    ({"runtime": "python27"}, ".runtime", "'python312'"),
    ({"entry_point": "my-handler"}, ".entry_point", "not a Python identifier"),
    ({"signature_type": "pubsub"}, ".signature_type", "'cloudevent'"),
    ({"memroy": "512Mi"}, "functions[0] (orders-api).memroy", "did you mean 'memory'?"),
    ({"labels": {"Team": "x"}}, ".labels", "label key 'Team' is invalid"),
    ({"labels": {"team": "Platform Eng"}}, ".labels", "invalid value 'Platform Eng'"),
    ({"min_instances": 3, "max_instances": 2}, "functions[0] (orders-api)", "max_instances (2) is below"),
    ({"timeout_s": 4000}, ".timeout_s", "less than or equal to 3600"),
    ({"service_account": "robot"}, ".service_account", "not an email address"),
    ({"ingress": "internal"}, ".ingress", "'internal-only'"),
    ({"smoke": {"path": "health"}}, ".smoke.path", "must start with '/'"),
    ({"smoke": {"body": "x", "json": {"a": 1}}}, ".smoke", "keep only one of them"),
    ({"smoke": {"metod": "GET"}}, ".smoke.metod", "did you mean 'method'?"),
    ({"smoke": {"accept_unreachable": "yes"}}, ".smoke.accept_unreachable", "valid boolean"),
    ({"source": "missing-dir"}, "functions[0] (orders-api).source", "does not exist"),
    ({"invokers": ["allUsers"]}, ".invokers", "set allow_unauthenticated: true"),
    ({"invokers": ["allusers"]}, ".invokers", "set allow_unauthenticated: true"),
    ({"invokers": ["ann@example.com"]}, ".invokers", "write user:ann@example.com, serviceAccount:"),
    ({"invokers": ["serviceaccount:ci@p.iam.gserviceaccount.com"]}, ".invokers", "write 'serviceAccount'"),
    ({"invokers": ["everyone"]}, ".invokers", "not an IAM principal; use user:EMAIL"),
    ({"invokers": ["serviceAccount:ci"]}, ".invokers", "after 'serviceAccount:' comes an email address"),
    ({"invokers": ["domain:example"]}, ".invokers", "after 'domain:' comes a domain name"),
    ({"invokers": ["principal:iam.googleapis.com/x"]}, ".invokers", "a principal URI"),
    ({"invokers": ["deleted:user:ann@example.com?uid=1"]}, ".invokers", "a deleted principal"),
    ({"invokers": ["group:g@example.com", "group:g@example.com"]}, ".invokers", "more than once"),
])
def test_invalid_function_is_rejected_naming_the_field(
        tmp_path: Path, overrides: dict[str, Any], where: str, says: str) -> None:
    message = rejected(tmp_path, {"functions": [function(**overrides)]})
    assert message.startswith(str(tmp_path / "manifest.yaml") + ": ")
    assert where in message
    assert says in message


def test_invokers_take_every_principal_form_iam_lists(tmp_path: Path) -> None:
    members = ["user:ann@example.com", "serviceAccount:ci@p-123.iam.gserviceaccount.com",
               "serviceAccount:p-123.svc.id.goog[ns/ksa]", "group:team@example.com",
               "domain:example.com", "allAuthenticatedUsers",
               "principal://iam.googleapis.com/locations/global/workforcePools/pool/subject/ann",
               "principalSet://iam.googleapis.com/locations/global/workforcePools/pool/group/eng"]
    manifest = load_manifest(write_manifest(tmp_path, {"functions": [function(invokers=members)]}))
    assert manifest.functions[0].invokers == members


def test_error_names_the_function_by_index_and_name(tmp_path: Path) -> None:
    message = rejected(tmp_path, {"functions": [function(), function(name="billing", memory="lots")]})
    assert "functions[1] (billing).memory: memory 'lots' is not a Kubernetes quantity" in message


def test_missing_required_field(tmp_path: Path) -> None:
    data = function()
    del data["entry_point"]
    message = rejected(tmp_path, {"functions": [data]})
    assert "functions[0] (orders-api).entry_point: required field `entry_point` is missing" in message


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    message = rejected(tmp_path, {"functions": [function(), function(memory="512Mi")]})
    assert "functions: function name 'orders-api' is used by functions[0] and functions[1]" in message


def test_unknown_default_is_rejected(tmp_path: Path) -> None:
    message = rejected(tmp_path, {"defaults": {"timout_s": 5}, "functions": [function()]})
    assert "defaults: unknown field 'timout_s' in defaults; did you mean 'timeout_s'?" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = rejected(tmp_path, {"function": [function()]})
    assert "function: unknown field 'function'; did you mean 'functions'?" in message


@pytest.mark.parametrize(("target", "where", "says"), [
    ({"builder": "gcr.io/buildpacks/builder:latest"}, "target.builder", "moved between stacks"),
    ({"builder": "gcr.io/buildpacks/builder"}, "target.builder", "not pinned"),
    ({"project": "My_Project"}, "target.project", "not a Google Cloud project id"),
    ({"region": "us central"}, "target.region", "not a Google Cloud region"),
    ({"kind": "gcp"}, "target", "set target.project"),
    ({"kind": "aws"}, "target.kind", "'local' or 'gcp'"),
    ({"staging_bucket": "Bad Bucket"}, "target.staging_bucket", "not a Cloud Storage bucket name"),
])
def test_invalid_target_is_rejected(tmp_path: Path, target: dict[str, Any], where: str, says: str) -> None:
    message = rejected(tmp_path, {"target": target, "functions": [function()]})
    assert f"manifest.yaml: {where}: " in message
    assert says in message


def test_pinned_builders_are_accepted() -> None:
    for builder in ("gcr.io/buildpacks/builder:google-24", "gcr.io/buildpacks/builder:v1",
                    "gcr.io/buildpacks/builder@sha256:" + "a" * 64):
        assert Target(builder=builder).builder == builder


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(textwrap.dedent("""\
        functions:
          - name: orders-api
            source: src
           runtime: python312
        """))
    with pytest.raises(SpecError) as caught:
        load_manifest(path)
    assert str(caught.value).startswith(f"{path}: line 4, column")
    assert "invalid YAML" in str(caught.value)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("functions:\n  - name: a\n    memory: 1Gi\n    memory: 2Gi\n")
    with pytest.raises(SpecError, match=r"line 4, .*'memory' appears twice \(first on line 3\)"):
        load_manifest(path)


def test_manifest_must_be_a_mapping_and_exist(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a mapping with a `functions:` list"):
        load_manifest(path)
    with pytest.raises(SpecError, match="manifest not found"):
        load_manifest(tmp_path / "nope.yaml")


def test_only_with_an_unknown_name(tmp_path: Path) -> None:
    message = rejected(tmp_path, {"functions": [function()]}, only=["orders-apy"])
    assert "--only names 'orders-apy', not in the manifest" in message
    assert "functions in the manifest: orders-api" in message


def test_unknown_target_kind_flag(tmp_path: Path) -> None:
    message = rejected(tmp_path, {"functions": [function()]}, target_kind="aws")
    assert "--target 'aws' is not a target kind" in message


def test_direct_construction_raises_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="PORT, which Cloud Run reserves"):
        FunctionSpec.model_validate(function(source=str(EXAMPLES / "python-http"), env={"PORT": "1"}))


# -- hostile and careless manifests ----------------------------------------------------------


def _bomb(levels: int) -> str:
    """The "billion laughs" in a smoke request's JSON body (any JSON is allowed there): each level
    is nine aliases of the one before, 9**levels strings once expanded."""
    lines = ['        l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"        l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return ("functions:\n  - name: a\n    source: src\n    runtime: python312\n"
            "    entry_point: handle\n    smoke:\n      json:\n" + "\n".join(lines) + "\n")


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, {})
    path.write_text(_bomb(9))  # 9**9 = 387 million strings once expanded
    with pytest.raises(SpecError, match=r"aliases \(\*name\) expanded, the manifest holds more than "
                                        r"1,000,000 values.*alias bomb"):
        load_manifest(path)


def test_anchors_aliases_and_merge_keys_work(tmp_path: Path) -> None:
    write_manifest(tmp_path, {})
    path = tmp_path / "manifest.yaml"
    path.write_text("x-python: &python {runtime: python312, entry_point: handle, source: src}\n"
                    "functions:\n  - {<<: *python, name: a}\n  - {<<: *python, name: b, "
                    "entry_point: other}\n".replace("x-python: &python", "python: &python"))
    with pytest.raises(SpecError, match="unknown field 'python'"):  # anchors live in known places
        load_manifest(path)
    path.write_text("defaults: &python {runtime: python312, entry_point: handle, source: src}\n"
                    "functions:\n  - {<<: *python, name: a}\n  - {<<: *python, name: b, "
                    "entry_point: other}\n")
    manifest = load_manifest(path)
    assert [(spec.name, spec.entry_point) for spec in manifest.functions] == [("a", "handle"),
                                                                              ("b", "other")]


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("defaults: &d {labels: *d}\nfunctions: []\n")
    with pytest.raises(SpecError, match="line 1: a YAML alias refers to the anchor it is inside of"):
        load_manifest(path)


def test_a_huge_manifest_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("# " + "x" * (10 * 2**20) + "\nfunctions: []\n")
    with pytest.raises(SpecError, match=r"the manifest is 10\.0 MiB; cf2run reads manifests of up "
                                        r"to 10 MiB"):
        load_manifest(path)


def test_a_manifest_that_is_not_utf8_names_the_place(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_bytes(b"functions:\n  - name: caf\xe9\n")
    with pytest.raises(SpecError, match=r"line 2, column 14: byte 0xe9 is not UTF-8 text.*save the "
                                        "manifest as UTF-8"):
        load_manifest(path)


@pytest.mark.parametrize(("data", "says"), [
    ({"functions": [function(memory=256)]},
     "functions[0] (orders-api).memory: memory 256 has no unit; write it with one, e.g. '256Mi'"),
    ({"functions": [function(env={"DEBUG": 1})]},
     "functions[0] (orders-api).env.DEBUG: DEBUG must be text, but YAML reads 1 as a number; quote "
     'it: DEBUG: "1"'),
    ({"functions": [function(labels={"beta": True})]},
     'beta must be text, but YAML reads true as a boolean; quote it: beta: "true"'),
    ({"functions": [function(smoke={"expect_code": 201})]},
     "smoke.expect_code: unknown field 'expect_code'; did you mean 'expect_status'?"),
    ({"functions": [function(availableMemoryMb=256)]}, "did you mean 'memory'?"),
    ({"functions": [function(entryPoint="x")]}, "did you mean 'entry_point'?"),
    ({"target": {"kind": "local"}},
     "functions: the manifest has no `functions:` list; add one with at least one function"),
    ({"functions": []}, "functions: `functions` is empty; list at least one function to migrate"),
    ({"functions": 3}, "functions: must be a list (one `- item` per line), not 3"),
    ({"functions": [3]}, "functions[0]: must be a mapping of fields (name, source, runtime, "
                         "entry_point, ...), not 3"),
    ({"target": 3, "functions": [function()]}, "target: must be a mapping of fields (kind, project"),
    ({"functions": [function(smoke=5)]}, "smoke: must be a mapping of fields (method, path, body, json"),
    ({"functions": [function(secret_env={"A": {"version": "1"}})]},
     "secret_env.A.secret: required field `secret` is missing; add it\n"),
])
def test_careless_values_get_a_message_in_the_users_words(tmp_path: Path, data: dict[str, Any],
                                                          says: str) -> None:
    message = rejected(tmp_path, data) + "\n"
    assert says in message
    for internal in ("FunctionSpec", "SmokeRequest", "Target", "Trigger", "SecretRef", "instance of",
                     "Input should be"):
        assert internal not in message


@pytest.mark.parametrize(("build_env", "why"), [
    ({"NPM_TOKEN": "abc123"}, "its name says TOKEN"),
    ({"DB_PASSWORD": "hunter2"}, "its name says PASSWORD"),
    ({"GITHUB": "ghp_" + "a" * 36}, "its value looks like a GitHub token"),
    ({"KEY_FILE": '{"type": "service_account", "private_key": "x"}'},
     "its value looks like a service-account key"),
    ({"CERT": "-----BEGIN RSA PRIVATE KEY-----\nMII"}, "its value looks like a private key"),
    ({"PIP_INDEX_URL": "https://ci:s3cret@pypi.example.org/simple"},
     "its value looks like a URL with a password"),
])
def test_build_env_that_looks_like_a_credential_is_refused(tmp_path: Path, build_env: dict[str, str],
                                                           why: str) -> None:
    name = next(iter(build_env))
    message = rejected(tmp_path, {"functions": [function(build_env=build_env)]})
    assert f"build_env {name} looks like a credential ({why})" in message
    assert "stored in Prefect flow-run parameters and in the Cloud Build record" in message
    assert f"add {name} to build_env_plain" in message


def test_build_env_plain_lets_a_checked_value_through(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, {"functions": [function(
        build_env={"NPM_TOKEN": "public-mirror", "NODE_ENV": "production"},
        build_env_plain=["NPM_TOKEN"])]})
    assert load_manifest(path).functions[0].build_env["NPM_TOKEN"] == "public-mirror"
    message = rejected(tmp_path, {"functions": [function(build_env={"A": "1"}, build_env_plain=["B"])]})
    assert "build_env_plain names B, which build_env does not set" in message


def test_a_boolean_is_not_taken_for_a_number(tmp_path: Path) -> None:
    """YAML reads `true` as a boolean; pydantic would take it as 1 (a one-second timeout)."""
    message = rejected(tmp_path, {"functions": [function(timeout_s=True, min_instances=False)]})
    assert ("functions[0] (orders-api).timeout_s: timeout_s takes a number, and YAML reads true as a "
            "boolean; write the number") in message
    assert "min_instances takes a number, and YAML reads false as a boolean" in message
