"""Golden tests: gen1 settings -> the Cloud Run v2 Service cf2run sends (REFERENCE §5).

Each case is the manifest a gen1 user writes and the exact fields Cloud Run gets; every
Service is also checked against the local Cloud Run's validation (which rejects what Google
rejects), so a mapping that passes here is not refused later for a reason we could know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.cloud import run_v2

from cf2run.localcloud.cloudrun import rules as cloudrun_rules
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import VerifiedImage
from tasks.build import pack_env
from tasks.deploy import service_for

DIGEST = "sha256:" + "ab" * 32
IMAGE = VerifiedImage(image=f"us-central1-docker.pkg.dev/local-project/cf2run/fn@{DIGEST}", digest=DIGEST,
                      platform="linux/amd64", web_process="functions-framework --target handle")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("def handle(request):\n    return 'ok'\n")
    return tmp_path


def template(source: Path, target: Target | None = None, **fields: Any) -> dict[str, Any]:
    """The revision template for a spec, as Cloud Run's JSON (only the fields that are set)."""
    spec = FunctionSpec.model_validate({"name": "fn", "source": source, "runtime": "python312",
                                        "entry_point": "handle", **fields})
    service = service_for(spec, target or Target(), IMAGE)
    cloudrun_rules.check_service(service, "fn", set(), "CreateServiceRequest.service")
    return run_v2.RevisionTemplate.to_dict(service.template, use_integers_for_enums=False,
                                           always_print_fields_with_no_presence=False)


@pytest.mark.parametrize(("memory", "cpu"), [
    ("128Mi", "0.083"), ("256Mi", "0.167"), ("512Mi", "0.333"), ("1Gi", "0.583"),
    ("2Gi", "1"), ("4Gi", "2"), ("8Gi", "2"),
])
def test_each_gen1_memory_tier_gets_the_cpu_gen1_gave_it(source: Path, memory: str, cpu: str) -> None:
    container = template(source, memory=memory)["containers"][0]
    assert container["resources"] == {"limits": {"cpu": cpu, "memory": memory}, "cpu_idle": True}


@pytest.mark.parametrize(("ingress", "expected"), [
    ("all", "INGRESS_TRAFFIC_ALL"),
    ("internal-only", "INGRESS_TRAFFIC_INTERNAL_ONLY"),
    ("internal-and-gclb", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"),
])
def test_each_ingress_value(source: Path, ingress: str, expected: str) -> None:
    """gen1 ALLOW_ALL / ALLOW_INTERNAL_ONLY / ALLOW_INTERNAL_AND_GCLB."""
    spec = FunctionSpec.model_validate({"name": "fn", "source": source, "runtime": "python312",
                                        "entry_point": "handle", "ingress": ingress})
    assert run_v2.IngressTraffic(service_for(spec, Target(), IMAGE).ingress).name == expected


def test_gen1_defaults(source: Path) -> None:
    """One request per instance, 60 s, scale from 0, gen1's runtime service account."""
    golden = template(source)
    assert {key: golden[key] for key in golden if key not in ("revision", "labels", "containers")} == {
        # min_instance_count 0 is proto3's default: not printed; max: gen1's 3000, not Cloud Run's 100
        "scaling": {"max_instance_count": 3000},
        "timeout": "60s",
        "service_account": "local-project@appspot.gserviceaccount.com",
        "max_instance_request_concurrency": 1,
    }


def test_scaling_timeout_and_concurrency(source: Path) -> None:
    golden = template(source, min_instances=2, max_instances=20, timeout_s=540, cpu="1", concurrency=10)
    assert golden["scaling"] == {"min_instance_count": 2, "max_instance_count": 20}
    assert golden["timeout"] == "540s"
    assert golden["max_instance_request_concurrency"] == 10


@pytest.mark.parametrize(("project", "explicit", "expected"), [
    ("my-project", None, "my-project@appspot.gserviceaccount.com"),
    ("example.com:my-project", None, "my-project.example.com@appspot.gserviceaccount.com"),
    ("my-project", "fn@my-project.iam.gserviceaccount.com", "fn@my-project.iam.gserviceaccount.com"),
])
def test_service_account_is_gen1s_unless_given(source: Path, project: str, explicit: str | None,
                                               expected: str) -> None:
    fields = {"service_account": explicit} if explicit else {}
    assert template(source, Target(project=project), **fields)["service_account"] == expected


def test_env_and_secret_env(source: Path) -> None:
    golden = template(source, Target(project="my-project"), env={"MODE": "prod"}, secret_env={
        "API_KEY": "api-key",
        "DB_PASSWORD": "db-password:3",
        "SHARED": {"secret": "shared-token", "version": "prod", "project": "other-project"},
    })
    assert golden["containers"][0]["env"] == [
        {"name": "MODE", "value": "prod"},
        {"name": "API_KEY", "value_source": {"secret_key_ref": {"secret": "api-key", "version": "latest"}}},
        {"name": "DB_PASSWORD",
         "value_source": {"secret_key_ref": {"secret": "db-password", "version": "3"}}},
        {"name": "SHARED", "value_source": {"secret_key_ref": {
            "secret": "projects/other-project/secrets/shared-token", "version": "prod"}}},
    ]


def test_secret_volumes(source: Path) -> None:
    golden = template(source, Target(project="my-project"), secret_volumes=[
        {"mount_path": "/etc/secrets", "secret": "db-creds",
         "versions": [{"path": "password", "version": "2"}, {"path": "user"}]},
        {"mount_path": "/etc/tls/", "secret": "tls-cert", "project": "certs-project"},
    ])
    assert golden["volumes"] == [
        {"name": "secret-0", "secret": {"secret": "db-creds", "items": [
            {"path": "password", "version": "2"}, {"path": "user", "version": "latest"}]}},
        {"name": "secret-1", "secret": {"secret": "projects/certs-project/secrets/tls-cert"}},
    ]
    assert golden["containers"][0]["volume_mounts"] == [
        {"name": "secret-0", "mount_path": "/etc/secrets"},
        {"name": "secret-1", "mount_path": "/etc/tls"},
    ]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"vpc_connector": "my-connector"},
     {"connector": "projects/my-project/locations/europe-west1/connectors/my-connector",
      "egress": "PRIVATE_RANGES_ONLY"}),
    ({"vpc_connector": "projects/net-host/locations/europe-west1/connectors/shared",
      "vpc_egress": "all-traffic"},
     {"connector": "projects/net-host/locations/europe-west1/connectors/shared", "egress": "ALL_TRAFFIC"}),
])
def test_vpc_connector_and_egress(source: Path, fields: dict[str, str], expected: dict[str, str]) -> None:
    golden = template(source, Target(project="my-project", region="europe-west1"), **fields)
    assert golden["vpc_access"] == expected


def test_no_vpc_access_without_a_connector(source: Path) -> None:
    assert "vpc_access" not in template(source)


@pytest.mark.parametrize(("runtime", "language", "version"), [
    ("python38", "python", "3.8.x"), ("python39", "python", "3.9.x"), ("python310", "python", "3.10.x"),
    ("python311", "python", "3.11.x"), ("python312", "python", "3.12.x"), ("python313", "python", "3.13.x"),
    ("nodejs16", "nodejs", "16.x.x"), ("nodejs18", "nodejs", "18.x.x"), ("nodejs20", "nodejs", "20.x.x"),
    ("nodejs22", "nodejs", "22.x.x"),
])
def test_runtime_versions_become_the_buildpacks_version_env(
        source: Path, runtime: str, language: str, version: str) -> None:
    """REFERENCE §2: GOOGLE_RUNTIME picks the language, GOOGLE_RUNTIME_VERSION the version
    (semver wildcards as Google's buildpack docs write them)."""
    entry = "handle" if language == "python" else "handleJs"
    spec = FunctionSpec(name="fn", source=source, runtime=runtime, entry_point=entry)  # type: ignore[arg-type]
    env = dict(pack_env(spec))
    assert (env["GOOGLE_RUNTIME"], env["GOOGLE_RUNTIME_VERSION"]) == (language, version)
    assert env["GOOGLE_FUNCTION_TARGET"] == entry


@pytest.mark.parametrize("signature", ["http", "event", "cloudevent"])
def test_signature_type_reaches_the_build(source: Path, signature: str) -> None:
    spec = FunctionSpec.model_validate({"name": "fn", "source": source, "runtime": "python312",
                                        "entry_point": "handle", "signature_type": signature})
    assert dict(pack_env(spec))["GOOGLE_FUNCTION_SIGNATURE_TYPE"] == signature
