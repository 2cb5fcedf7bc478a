"""Cloud Run v2's validation rules (REFERENCE.md §4), checked directly on the request messages.

Each rule's source (Google's message, doc page or issue thread) is cited in cloudrun/rules.py;
test_cloudrun.py checks the same rules through the API with the official client.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import grpc
import pytest
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from cf2run.localcloud.cloudrun import rules
from cf2run.localcloud.frontend.grpcapi import RpcError

IMAGE = "us-central1-docker.pkg.dev/p/r/img:v1"
LATEST = rules.LATEST
REVISION = rules.REVISION


def template(cpu: str | None = None, memory: str | None = None, concurrency: int = 0,
             cpu_idle: bool = True, **fields: object) -> run_v2.RevisionTemplate:
    limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    container = run_v2.Container(image=IMAGE, resources=run_v2.ResourceRequirements(
        limits=limits, cpu_idle=cpu_idle))
    return run_v2.RevisionTemplate(containers=[container], max_instance_request_concurrency=concurrency,
                                   **fields)


def refused(check: object, *args: object, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
            ) -> str:
    with pytest.raises(RpcError) as raised:
        check(*args)  # type: ignore[operator]
    assert raised.value.code == code
    return raised.value.message


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("service_id", ["a", "hello", "orders-api-2", "x" * 49])
def test_valid_service_ids(service_id: str) -> None:
    rules.check_service_id(service_id, "CreateServiceRequest.service_id")


@pytest.mark.parametrize("service_id", ["", "1abc", "-abc", "abc-", "Hello", "a_b", "a.b", "x" * 50])
def test_invalid_service_ids(service_id: str) -> None:
    message = refused(rules.check_service_id, service_id, "CreateServiceRequest.service_id")
    assert message.startswith("Violation in CreateServiceRequest.service_id: only lowercase, "
                              "digits, and hyphens; must begin with letter")


def test_parent_and_resource_names() -> None:
    assert rules.check_parent("projects/p-1/locations/us-central1", "f") == ("p-1", "us-central1")
    for parent in ("projects/p/locations/-", "projects/p", "project/p/locations/l", ""):
        assert "Violation in f:" in refused(rules.check_parent, parent, "f")
    assert rules.split_service_name("projects/p/locations/l/services/s", "f") == (
        "projects/p/locations/l", "s")
    refused(rules.split_service_name, "projects/p/locations/l/services/", "f")
    assert rules.split_revision_name("projects/p/locations/l/services/s/revisions/s-1", "f") == (
        "projects/p/locations/l/services/s", "s-1")


def test_revision_names_carry_the_service_prefix() -> None:
    rules.check_revision_id("svc-00001-abc", "svc", "f")
    assert "must be prefixed" in refused(rules.check_revision_id, "other-1", "svc", "f")
    assert "must be prefixed" in refused(rules.check_revision_id, "svcx-1", "svc", "f")
    assert "less than 64" in refused(rules.check_revision_id, "svc-" + "a" * 60, "svc", "f")


# -- env, annotations, labels ----------------------------------------------------------------


@pytest.mark.parametrize("name", rules.RESERVED_ENV)
def test_reserved_env_names(name: str) -> None:
    tpl = template()
    tpl.containers[0].env = [run_v2.EnvVar(name="OK", value="1"), run_v2.EnvVar(name=name, value="x")]
    message = refused(rules.check_template, tpl, "svc", "S.template")
    assert message == (f"Violation in S.template.containers[0].env[1].name: The following reserved "
                       f"env names were provided: {name}. These values are automatically set by "
                       "the system.")


def test_env_names_cannot_be_empty_or_hold_an_equals_sign() -> None:
    for name in ("", "A=B"):
        tpl = template()
        tpl.containers[0].env = [run_v2.EnvVar(name=name, value="x")]
        assert "env[0].name" in refused(rules.check_template, tpl, "svc", "S")


@pytest.mark.parametrize("key", ["run.googleapis.com/ingress", "cloud.googleapis.com/location",
                                 "serving.knative.dev/creator", "autoscaling.knative.dev/maxScale",
                                 "x.run.googleapis.com/y"])
def test_system_annotations_are_refused(key: str) -> None:
    message = refused(rules.check_annotations, {key: "v"}, "S.annotations")
    assert message == (f"Violation in S.annotations[{key}]: system annotations are not supported "
                       "in Cloud Run API v2.")


def test_user_annotations_and_labels_pass() -> None:
    rules.check_annotations({"example.com/owner": "me", "note": "x"}, "S.annotations")
    rules.check_labels({"team": "payments", "env": "prod-1"}, "S.labels")
    assert "label keys" in refused(rules.check_labels, {"Team": "x"}, "S.labels")
    assert "label values" in refused(rules.check_labels, {"team": "A B"}, "S.labels")


# -- cpu, memory, concurrency, timeout, scaling ----------------------------------------------


@pytest.mark.parametrize(("quantity", "cpu"), [("1", 1), ("500m", Decimal("0.5")), ("0.08", Decimal("0.08")),
                                               ("2", 2), ("8", 8), ("1000m", 1), ("0.333", Decimal("0.333"))])
def test_cpu_quantities(quantity: str, cpu: Decimal) -> None:
    assert rules.parse_cpu(quantity, "f") == cpu


@pytest.mark.parametrize(("quantity", "says"), [("3", "one of 1, 2, 4, 6, 8"), ("0.05", "between 0.08 and 8"),
                                                ("16", "between 0.08 and 8"), ("1Gi", "cpu quantity"),
                                                ("lots", "cpu quantity"), ("0.0805", "increments of 0.001")])
def test_invalid_cpu_quantities(quantity: str, says: str) -> None:
    assert says in refused(rules.parse_cpu, quantity, "f")


@pytest.mark.parametrize(("quantity", "size"), [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1G", 10**9),
                                                ("128Mi", 128 * 2**20), ("1.5Gi", 3 * 2**29)])
def test_memory_quantities(quantity: str, size: int) -> None:
    assert rules.parse_memory(quantity, "f") == size


def test_cpu_below_one_needs_concurrency_one() -> None:
    """REFERENCE §4: below 1 vCPU, concurrency must be 1 (the default, 80, is refused too)."""
    for concurrency in (0, 2, 80):
        message = refused(rules.check_template, template(cpu="0.5", concurrency=concurrency), "svc", "S")
        assert "S.containers[0].resources.limits[cpu]: Invalid value specified for cpu. Total cpu < 1 " \
               "is not supported with concurrency > 1" in message
    rules.check_template(template(cpu="0.5", concurrency=1), "svc", "S")


@pytest.mark.parametrize(("cpu", "memory", "ok"), [
    ("0.25", "512Mi", True), ("0.25", "513Mi", False),   # > 512 MiB needs at least 0.5 vCPU
    ("0.5", "1Gi", True), ("0.5", "1025Mi", False),      # > 1 GiB needs at least 1 vCPU
    ("1", "4Gi", True), ("1", "5Gi", False), ("2", "8Gi", True), ("2", "9Gi", False),
    ("4", "1Gi", False), ("4", "2Gi", True), ("8", "32Gi", True), ("8", "33Gi", False),
    ("1", "100Mi", False),
])
def test_memory_per_cpu(cpu: str, memory: str, ok: bool) -> None:
    tpl = template(cpu=cpu, memory=memory, concurrency=1)
    if ok:
        rules.check_template(tpl, "svc", "S")
    else:
        message = refused(rules.check_template, tpl, "svc", "S")
        # Google's text (google/osv.dev#2800): "For 1.0 CPU, memory must be between ..."
        assert "S.containers[0].resources.limits[memory]: Invalid value specified for container " \
               f"memory. For {float(cpu)} CPU, memory must be between" in message
        assert message.endswith("inclusive.\nFor more troubleshooting guidance, see "
                                "https://cloud.google.com/run/docs/configuring/memory-limits")


@pytest.mark.parametrize(("cpu", "memory", "says"), [
    ("4", "1Gi", "For 4.0 CPU, memory must be between 2Gi and 16Gi inclusive."),
    ("6", "2Gi", "For 6.0 CPU, memory must be between 4Gi and 24Gi inclusive."),
    ("8", "3Gi", "For 8.0 CPU, memory must be between 4Gi and 32Gi inclusive."),
])
def test_many_cpus_need_memory(cpu: str, memory: str, says: str) -> None:
    """cloud.google.com/run/docs/configuring/services/cpu: 4 vCPU need 2 GiB, 6 and 8 need 4 GiB."""
    assert says in refused(rules.check_template, template(cpu=cpu, memory=memory, concurrency=1),
                           "svc", "S")


def test_cpu_below_one_needs_cpu_only_during_requests() -> None:
    """v2 `cpu_idle` false (set resources without it) = CPU always allocated: refused below 1 vCPU."""
    assert refused(rules.check_template, template(cpu="0.5", concurrency=1, cpu_idle=False), "svc", "S") \
        == ("Violation in S.containers[0].resources.limits[cpu]: Invalid value specified for cpu. "
            "Total cpu < 1 is not supported with cpu always allocated (unthrottled).")
    rules.check_template(template(cpu="1", concurrency=1, cpu_idle=False), "svc", "S")


@pytest.mark.parametrize(("cpu", "memory", "max_instances", "refusal"), [
    ("1", "512Mi", 1000, None),
    ("1", "512Mi", 1001, "limits.cpu: Invalid value specified for cpu. For the specified value, "
                         "maxScale may not exceed 1000."),
    ("2", "1Gi", 0, None),   # unset = Cloud Run's default 100, within the quota
    ("0.167", "256Mi", 3000, None),   # gen1's default for its default tier fits the baseline
    ("1", "2Gi", 3000, "limits.cpu: Invalid value specified for cpu. For the specified value, "
                       "maxScale may not exceed 1000."),
    ("1", "4Gi", 600, "limits.memory: Invalid value specified for memory. For the specified value, "
                      "maxScale may not exceed 500."),
])
def test_max_instances_within_the_regional_quota(cpu: str, memory: str, max_instances: int,
                                                 refusal: str | None) -> None:
    """max-instances-limits: at most quota / cpu and quota / memory instances; Google's text from
    firebase/friendlyeats-web#291 (cpu) and googlecodelabs/feedback#1210 (memory)."""
    tpl = template(cpu=cpu, memory=memory, concurrency=1,
                   scaling=run_v2.RevisionScaling(max_instance_count=max_instances))
    rules.check_template(tpl, "svc", "S")
    if refusal is None:
        rules.check_instance_quota(tpl, Decimal(1000), 2000 * 2**30)
        return
    message = refused(rules.check_instance_quota, tpl, Decimal(1000), 2000 * 2**30)
    assert message.startswith(f"template.containers.resources.{refusal}\nConsider running your "
                              "workload in a region with greater capacity")
    assert "see https://cloud.google.com/run/quotas" in message


def test_unknown_resource_limits_are_refused() -> None:
    tpl = template()
    tpl.containers[0].resources.limits["ephemeral-storage"] = "1Gi"
    assert "limits[ephemeral-storage]" in refused(rules.check_template, tpl, "svc", "S")


def test_concurrency_timeout_and_scaling_ranges() -> None:
    rules.check_template(template(concurrency=1000, timeout=timedelta(seconds=3600)), "svc", "S")
    assert "S.max_instance_request_concurrency" in refused(
        rules.check_template, template(concurrency=1001), "svc", "S")
    assert "S.timeout: must be between 1s and 3600s (got 3601s)" in refused(
        rules.check_template, template(timeout=timedelta(seconds=3601)), "svc", "S")
    scaling = run_v2.RevisionScaling(min_instance_count=2, max_instance_count=1)
    assert refused(rules.check_template, template(scaling=scaling), "svc", "S") == (
        "Violation in S.scaling.max_instance_count: must be greater or equal than min_instance_count.")
    rules.check_template(template(scaling=run_v2.RevisionScaling(min_instance_count=2)), "svc", "S")


def test_exactly_one_container_with_an_image() -> None:
    assert "S.containers: exactly one container" in refused(
        rules.check_template, run_v2.RevisionTemplate(), "svc", "S")
    two = template()
    two.containers.append(run_v2.Container(image=IMAGE))
    assert "S.containers" in refused(rules.check_template, two, "svc", "S")
    assert "S.containers[0].image" in refused(
        rules.check_template, run_v2.RevisionTemplate(containers=[run_v2.Container()]), "svc", "S")


def test_defaults_are_filled_so_equal_templates_compare_equal() -> None:
    bare = template()
    filled = rules.with_defaults(bare)
    assert filled.max_instance_request_concurrency == 80
    assert filled.timeout == timedelta(seconds=300)
    assert dict(filled.containers[0].resources.limits) == {"cpu": "1000m", "memory": "512Mi"}
    assert filled.containers[0].ports[0].container_port == 8080
    assert bare.max_instance_request_concurrency == 0  # not mutated
    named = rules.with_defaults(bare)
    named.revision = "svc-x"
    assert rules.same_configuration(bare, named)
    named.containers[0].image = IMAGE + "2"
    assert not rules.same_configuration(bare, named)


# -- traffic ---------------------------------------------------------------------------------


def test_traffic_defaults_to_all_on_latest() -> None:
    assert rules.check_traffic([], "svc", set(), "S.traffic") == [rules.Target(None, 100, "")]


def test_traffic_targets_resolve() -> None:
    traffic = [run_v2.TrafficTarget(type_=LATEST, percent=90),
               run_v2.TrafficTarget(type_=REVISION, revision="svc-1", percent=10, tag="canary")]
    assert rules.check_traffic(traffic, "svc", {"svc-1"}, "S.traffic") == [
        rules.Target(None, 90, ""), rules.Target("svc-1", 10, "canary")]


@pytest.mark.parametrize(("traffic", "says"), [
    ([run_v2.TrafficTarget(type_=LATEST, percent=50)],
     "S.traffic: traffic percents must add up to 100 (they add up to 50)."),
    ([run_v2.TrafficTarget(type_=REVISION, revision="svc-9", percent=100)],
     "S.traffic[0].revision: Revision 'svc-9' does not exist or is deleted."),
    ([run_v2.TrafficTarget(type_=LATEST, revision="svc-1", percent=100)], "S.traffic[0].revision"),
    ([run_v2.TrafficTarget(type_=LATEST, percent=100, tag="Blue")], "S.traffic[0].tag"),
    ([run_v2.TrafficTarget(type_=LATEST, percent=100, tag="a"),
      run_v2.TrafficTarget(type_=REVISION, revision="svc-1", percent=0, tag="a")],
     "S.traffic[1].tag: tag 'a' is used more than once."),
    ([run_v2.TrafficTarget(type_=LATEST, percent=101)], "S.traffic[0].percent"),
])
def test_invalid_traffic(traffic: list[run_v2.TrafficTarget], says: str) -> None:
    assert says in refused(rules.check_traffic, traffic, "svc", {"svc-1"}, "S.traffic")


def test_tag_and_service_name_at_most_46_characters() -> None:
    rules.check_tag("t" * 43, "svc", "f")
    assert refused(rules.check_tag, "t" * 44, "svc", "f") == (
        f"Violation in f: traffic tag '{'t' * 44}' and service name 'svc' together are too long. "
        "Combined traffic tag and service name cannot exceed 46 characters.")


def test_a_service_may_route_to_the_revision_it_names() -> None:
    service = run_v2.Service(template=template(revision="svc-blue"), traffic=[
        run_v2.TrafficTarget(type_=REVISION, revision="svc-blue", percent=100)])
    assert rules.check_service(service, "svc", set(), "S") == [rules.Target("svc-blue", 100, "")]
    assert "S.template: a revision template is required" in refused(
        rules.check_service, run_v2.Service(), "svc", set(), "S")


# -- etag and IAM ----------------------------------------------------------------------------


def test_etag_mismatch_is_aborted() -> None:
    rules.check_etag("", '"a"', "service s")
    rules.check_etag('"a"', '"a"', "service s")
    assert "service s" in refused(rules.check_etag, '"b"', '"a"', "service s",
                                  code=grpc.StatusCode.ABORTED)


def test_policy_members_and_roles() -> None:
    good = policy_pb2.Policy(bindings=[policy_pb2.Binding(
        role="roles/run.invoker", members=["allUsers", "serviceAccount:a@p.iam.gserviceaccount.com"])])
    rules.check_policy(good, "P")
    bad_role = policy_pb2.Policy(bindings=[policy_pb2.Binding(role="run.invoker", members=["allUsers"])])
    assert "P.bindings[0].role" in refused(rules.check_policy, bad_role, "P")


def invoker_policy(*members: str) -> policy_pb2.Policy:
    return policy_pb2.Policy(bindings=[policy_pb2.Binding(role="roles/run.invoker", members=members)])


@pytest.mark.parametrize("member", [
    "allUsers", "allAuthenticatedUsers", "user:ann@example.com", "group:team@example.com",
    "serviceAccount:ci@p-123.iam.gserviceaccount.com", "serviceAccount:p-123.svc.id.goog[ns/ksa]",
    "domain:example.com", "deleted:user:ann@example.com?uid=123456789",
    "principal://iam.googleapis.com/locations/global/workforcePools/pool/subject/ann",
    "principalSet://cloudresourcemanager.googleapis.com/projects/123/type/ServiceAccount",
])
def test_policy_takes_every_principal_form(member: str) -> None:
    rules.check_policy(invoker_policy("allUsers", member), "P")


@pytest.mark.parametrize(("member", "answer"), [
    # No type, or one IAM does not know: Google's words (gcloud's output in
    # GoogleCloudPlatform/oss-test-infra#2440; the same in hashicorp/terraform-provider-google
    # reports), whatever the resource.
    ("bob", 'Policy members must be of the form "<type>:<value>".'),
    ("ann@example.com", 'Policy members must be of the form "<type>:<value>".'),
    ("serviceaccount:ci@p.iam.gserviceaccount.com", 'Policy members must be of the form "<type>:<value>".'),
    ("allusers", 'Policy members must be of the form "<type>:<value>".'),
    # A value that is not an email: IAM looks the account up and answers as for one that does
    # not exist (gcloud's "INVALID_ARGUMENT: Invalid service account (EMAIL)." for an empty or
    # line-broken email; "User EMAIL does not exist." / "Group EMAIL does not exist.").
    ("serviceAccount:", "Invalid service account ()."),
    ("serviceAccount:ci", "Invalid service account (ci)."),
    ("user:ann", "User ann does not exist."),
    ("group:team at example.com", "Group team at example.com does not exist."),
])
def test_policy_refuses_malformed_members_as_google(member: str, answer: str) -> None:
    assert refused(rules.check_policy, invoker_policy("allUsers", member), "P") == answer
