"""Golden tests of the Cloud Run v2 Service that deploy_service sends (REFERENCE §4, §5)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import run_v2

from cf2run.localcloud.cloudrun import rules as cloudrun_rules
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import VerifiedImage
from tasks.deploy import deploy_cache_key, serves, service_for, service_path

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
SOURCE_SHA = "0123456789abcdef" * 4
REPO = "us-central1-docker.pkg.dev/local-project/cf2run/orders-api"
REVISION_ID = re.compile(r"^[a-z](?:[a-z0-9-]*[a-z0-9])?$")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("def handle(request):\n    return 'ok'\n")
    return tmp_path


def make_spec(source: Path, **fields: Any) -> FunctionSpec:
    base: dict[str, Any] = {"name": "orders-api", "source": source, "runtime": "python312",
                            "entry_point": "handle"}
    return FunctionSpec.model_validate({**base, **fields})


def make_image(digest: str = DIGEST) -> VerifiedImage:
    return VerifiedImage(image=f"{REPO}@{digest}", digest=digest, platform="linux/amd64",
                         web_process="functions-framework --target handle")


def build(spec: FunctionSpec, target: Target | None = None, digest: str = DIGEST,
          source_sha: str | None = SOURCE_SHA) -> run_v2.Service:
    return service_for(spec, target or Target(), make_image(digest), source_sha)


def test_container_runs_the_image_by_digest(source: Path) -> None:
    spec = make_spec(source)
    tagged = VerifiedImage(image=f"{REPO}:cf2run-1234@{DIGEST}", digest=DIGEST, platform="linux/amd64",
                           web_process="x")
    for image in (make_image(), tagged):
        container = service_for(spec, Target(), image).template.containers[0]
        assert container.image == f"{REPO}@{DIGEST}"
    assert len(build(spec).template.containers) == 1


def test_env_is_the_spec_env_in_order(source: Path) -> None:
    spec = make_spec(source, env={"B_FIRST": "1", "A_SECOND": "two words"})
    env = build(spec).template.containers[0].env
    assert [(e.name, e.value) for e in env] == [("B_FIRST", "1"), ("A_SECOND", "two words")]


def test_gen1_defaults_become_cloud_run_fields(source: Path) -> None:
    """REFERENCE §5: 256Mi came with .167 vCPU, one request per instance, request-billed CPU."""
    template = build(make_spec(source)).template
    resources = template.containers[0].resources
    assert dict(resources.limits) == {"cpu": "0.167", "memory": "256Mi"}
    assert resources.cpu_idle is True
    assert template.max_instance_request_concurrency == 1
    assert template.timeout == timedelta(seconds=60)
    assert template.scaling.min_instance_count == 0
    # gen1's default max instances is 3000 (functions/1stgendocs/configuring/max-instances);
    # left unset, Cloud Run would make it 100 (run_v2 RevisionScaling docs).
    assert template.scaling.max_instance_count == 3000
    assert template.service_account == "local-project@appspot.gserviceaccount.com"  # gen1's, not compute's


def test_explicit_settings_are_copied(source: Path) -> None:
    spec = make_spec(source, memory="2Gi", cpu="2", concurrency=80, timeout_s=540, min_instances=1,
                     max_instances=10, service_account="fn@proj.iam.gserviceaccount.com")
    template = build(spec).template
    assert dict(template.containers[0].resources.limits) == {"cpu": "2", "memory": "2Gi"}
    assert template.containers[0].resources.cpu_idle is True
    assert template.max_instance_request_concurrency == 80
    assert template.timeout == timedelta(seconds=540)
    assert (template.scaling.min_instance_count, template.scaling.max_instance_count) == (1, 10)
    assert template.service_account == "fn@proj.iam.gserviceaccount.com"


@pytest.mark.parametrize(("ingress", "expected"), [
    ("all", run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL),
    ("internal-only", run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY),
    ("internal-and-gclb", run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER),
])
def test_ingress_mapping(source: Path, ingress: str, expected: run_v2.IngressTraffic) -> None:
    """REFERENCE §5: ALLOW_ALL / ALLOW_INTERNAL_ONLY / ALLOW_INTERNAL_AND_GCLB."""
    assert build(make_spec(source, ingress=ingress)).ingress == expected


def test_labels_mark_cf2run_and_the_source(source: Path) -> None:
    service = build(make_spec(source, labels={"team": "payments", "managed-by": "someone"}))
    expected = {"team": "payments", "managed-by": "cf2run", "cf2run-source": SOURCE_SHA[:12]}
    assert dict(service.labels) == expected
    assert dict(service.template.labels) == expected
    assert "cf2run-source" not in build(make_spec(source), source_sha=None).labels


def test_no_annotations_and_traffic_pinned_to_the_new_revision(source: Path) -> None:
    """REFERENCE §4: v2 refuses system annotations; cf2run sends none at all."""
    service = build(make_spec(source))
    assert not service.annotations and not service.template.annotations
    assert list(service.traffic) == [run_v2.TrafficTarget(
        type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
        revision=service.template.revision, percent=100)]
    assert not service.name  # CreateService takes the name as service_id


@pytest.mark.parametrize("name", ["a", "orders-api", "f" + "-x" * 22])
def test_revision_name_is_a_valid_prefixed_id(source: Path, name: str) -> None:
    revision = build(make_spec(source, name=name)).template.revision
    assert revision.startswith(f"{name}-") and revision != f"{name}-"
    assert len(revision) <= 63 and REVISION_ID.match(revision)


def test_the_local_cloud_accepts_what_it_sends(source: Path) -> None:
    """The local Cloud Run validates as Google does (names, labels, annotations, cpu/memory)."""
    for spec in (make_spec(source), make_spec(source, memory="4Gi", cpu="2", concurrency=250,
                                              max_instances=3, ingress="internal-only",
                                              labels={"team": "x"}, env={"A": "1"})):
        service = build(spec)
        cloudrun_rules.check_service(service, spec.name, set(), "CreateServiceRequest.service")


def test_revision_name_is_deterministic(source: Path) -> None:
    first = build(make_spec(source, env={"A": "1"}, labels={"t": "x"})).template.revision
    again = build(make_spec(source, env={"A": "1"}, labels={"t": "x"})).template.revision
    assert first == again


#: Each changes a service setting: the revision name must change with it.
SETTING_CHANGES: dict[str, dict[str, Any]] = {
    "env": {"env": {"A": "2"}},
    "env added": {"env": {"A": "1", "B": "1"}},
    "memory": {"memory": "512Mi"},
    "cpu": {"cpu": "0.5"},
    "timeout": {"timeout_s": 61},
    "concurrency": {"cpu": "1", "concurrency": 2},
    "min instances": {"min_instances": 1},
    "max instances": {"max_instances": 5},
    "service account": {"service_account": "fn@proj.iam.gserviceaccount.com"},
    "labels": {"labels": {"t": "y"}},
}
#: Each changes something that is not a revision's setting: same revision name (ingress is the
#: service's: promote changes it without a revision, tasks/deploy.py).
NON_SERVICE_CHANGES: dict[str, dict[str, Any]] = {
    "ingress": {"ingress": "internal-only"},
    "ingress gclb": {"ingress": "internal-and-gclb"},
    "smoke": {"smoke": {"path": "/health", "expect_status": 204}},
    "public": {"allow_unauthenticated": True},
    "build env": {"build_env": {"PIP_INDEX_URL": "https://example.org"}},
}


@pytest.mark.parametrize("change", SETTING_CHANGES.values(), ids=SETTING_CHANGES.keys())
def test_revision_name_changes_with_every_setting(source: Path, change: dict[str, Any]) -> None:
    base = {"env": {"A": "1"}, "labels": {"t": "x"}}
    before = build(make_spec(source, **base)).template.revision
    after = build(make_spec(source, **{**base, **change})).template.revision
    assert after != before


@pytest.mark.parametrize("change", NON_SERVICE_CHANGES.values(), ids=NON_SERVICE_CHANGES.keys())
def test_revision_name_ignores_what_is_not_a_service_setting(source: Path, change: dict[str, Any]) -> None:
    assert build(make_spec(source, **change)).template.revision == build(make_spec(source)).template.revision


def test_revision_name_changes_with_digest_and_source(source: Path) -> None:
    spec = make_spec(source)
    names = {build(spec).template.revision, build(spec, digest=OTHER_DIGEST).template.revision,
             build(spec, source_sha="f" * 64).template.revision}
    assert len(names) == 3


def test_cache_key_covers_target_digest_settings_and_iam(source: Path) -> None:
    spec = make_spec(source)
    key = deploy_cache_key(spec, Target(), make_image(), SOURCE_SHA)
    assert key == deploy_cache_key(make_spec(source), Target(), make_image(), SOURCE_SHA)
    others = [
        deploy_cache_key(spec, Target(project="other-project"), make_image(), SOURCE_SHA),
        deploy_cache_key(spec, Target(region="europe-west1"), make_image(), SOURCE_SHA),
        deploy_cache_key(spec, Target(), make_image(OTHER_DIGEST), SOURCE_SHA),
        deploy_cache_key(make_spec(source, memory="512Mi"), Target(), make_image(), SOURCE_SHA),
        deploy_cache_key(make_spec(source, allow_unauthenticated=True), Target(), make_image(), SOURCE_SHA),
    ]
    assert key not in others and len(set(others)) == len(others)


# -- serves(): when an existing service is left alone ------------------------------------------------


def served(wanted: run_v2.Service, **changes: Any) -> run_v2.Service:
    """What Cloud Run answers for a service that runs `wanted` with all traffic, Ready."""
    existing = run_v2.Service(wanted)
    existing.name = service_path(Target(), "orders-api")
    existing.terminal_condition = run_v2.Condition(type_="Ready",
                                                   state=run_v2.Condition.State.CONDITION_SUCCEEDED)
    existing.latest_ready_revision = f"{existing.name}/revisions/{wanted.template.revision}"
    existing.traffic_statuses = [run_v2.TrafficTargetStatus(
        type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST, percent=100)]
    for field, value in changes.items():
        setattr(existing, field, value)
    return existing


def test_serves_when_ready_on_our_revision_with_all_traffic(source: Path) -> None:
    wanted = build(make_spec(source))
    assert serves(served(wanted), wanted)
    pinned = run_v2.TrafficTargetStatus(revision=wanted.template.revision, percent=100)
    assert serves(served(wanted, traffic_statuses=[pinned]), wanted)


def test_serves_whatever_its_ingress_which_promote_changes(source: Path) -> None:
    wanted = build(make_spec(source, ingress="internal-only"))
    assert serves(served(wanted, ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL), wanted)


def test_does_not_serve_when_anything_differs(source: Path) -> None:
    wanted = build(make_spec(source))
    other = build(make_spec(source), digest=OTHER_DIGEST)
    split = [run_v2.TrafficTargetStatus(revision=wanted.template.revision, percent=50),
             run_v2.TrafficTargetStatus(revision="orders-api-old", percent=50)]
    failed = run_v2.Condition(type_="Ready", state=run_v2.Condition.State.CONDITION_FAILED)
    assert not serves(served(other), wanted)
    assert not serves(served(wanted, traffic_statuses=split), wanted)
    assert not serves(served(wanted, terminal_condition=failed), wanted)
    assert not serves(served(wanted, labels={"managed-by": "cf2run"}), wanted)
