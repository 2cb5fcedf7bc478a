"""Ingress as Google enforces it, on the local cloud: a service setting that moves at promote.

The worker runs outside the VPC unless the test sets the local cloud's `caller_in_vpc`; an
internal service then answers Google's 404 page on its URL and its tag URLs (cloudrun/router.py).
Deploy, smoke, promote and discard are the plain functions their Prefect tasks call.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import test_deploy_e2e
from flowruns import migrate
from google.cloud import run_v2
from test_deploy_e2e import MAIN_PY, make_spec, revisions_of

from cf2run.errors import SmokeTestFailed
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import Deployment, VerifiedImage
from tasks.deploy import deploy
from tasks.promote import discard, promote
from tasks.smoke import smoke

ALL = run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL
INTERNAL = run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY
TARGET = Target()
built = test_deploy_e2e.image  # its fixture: one function, built once for this module too


def answer(cloud: Cloud, url: str, audience: str | None = None) -> httpx.Response:
    """What `url` answers a caller with an ID token (audience: the service URL by default)."""
    return httpx.get(url, headers={"Authorization": f"Bearer {cloud.id_token(audience or url)}"})


def refused(response: httpx.Response) -> bool:
    """Cloud Run's answer to a caller outside an internal service's VPC."""
    return response.status_code == 404 and "was not found on this server" in response.text


def ingress_of(cloud: Cloud, deployment: Deployment) -> run_v2.IngressTraffic:
    return cloud.services.get_service(name=deployment.service).ingress


def live(cloud: Cloud, spec: FunctionSpec, image: VerifiedImage) -> Deployment:
    """Deploy and promote `spec`: a service that serves it."""
    deployment = deploy(cloud, spec, TARGET, image)
    promote(cloud, spec, deployment)
    return deployment


def test_internal_service_refuses_callers_outside_its_vpc_and_serves_inside(
        cloud: Cloud, knobs: LocalCloudSettings, built: tuple[Path, VerifiedImage]) -> None:
    source, verified = built
    first = live(cloud, make_spec(source, ingress="internal-only"), verified)
    assert ingress_of(cloud, first) == INTERNAL
    assert refused(answer(cloud, first.url))
    knobs.caller_in_vpc = True
    assert answer(cloud, first.url).text.startswith("hi from")


def test_candidate_runs_under_the_current_ingress_and_promote_changes_it(
        cloud: Cloud, built: tuple[Path, VerifiedImage]) -> None:
    source, verified = built
    v1 = make_spec(source)
    first = live(cloud, v1, verified)
    v2 = make_spec(source, name=v1.name, ingress="internal-only", env={"GREETING": "hey"},
                   smoke={"expect_body": "hey from"})
    candidate = deploy(cloud, v2, TARGET, verified)
    assert candidate.candidate_url and candidate.revision != first.revision
    assert ingress_of(cloud, candidate) == ALL, "the candidate changed the live service's ingress"
    assert answer(cloud, candidate.candidate_url, candidate.url).text.startswith("hey from")
    assert smoke(cloud, v2, TARGET, candidate).status == 200  # from outside: the ingress is still all

    promote(cloud, v2, candidate)
    assert ingress_of(cloud, candidate) == INTERNAL
    assert refused(answer(cloud, candidate.url))


def test_a_discarded_candidate_leaves_the_ingress_as_it_was(
        cloud: Cloud, built: tuple[Path, VerifiedImage]) -> None:
    source, verified = built
    v1 = make_spec(source)
    first = live(cloud, v1, verified)
    v2 = v1.model_copy(update={"ingress": "internal-only", "env": {"GREETING": "hey"}})
    candidate = deploy(cloud, v2, TARGET, verified)
    discard(cloud, candidate)
    assert ingress_of(cloud, candidate) == ALL
    assert answer(cloud, first.url).text.startswith("hi from")


def test_an_ingress_only_change_is_made_at_promote_without_a_revision_and_a_rerun_converges(
        cloud: Cloud, built: tuple[Path, VerifiedImage]) -> None:
    source, verified = built
    v1 = make_spec(source)
    first = live(cloud, v1, verified)
    internal = v1.model_copy(update={"ingress": "internal-only"})

    again = deploy(cloud, internal, TARGET, verified)
    assert (again.revision, again.changed, again.candidate_url) == (first.revision, False, None)
    assert ingress_of(cloud, again) == ALL  # nothing moves before promote
    moved = promote(cloud, internal, again)
    assert moved.changed and moved.serving == [first.revision]
    assert ingress_of(cloud, again) == INTERNAL
    assert revisions_of(cloud, again) == [first.revision]

    rerun = deploy(cloud, internal, TARGET, verified)
    assert (rerun.revision, rerun.changed) == (first.revision, False)
    assert not promote(cloud, internal, rerun).changed


def test_smoke_of_an_internal_service_from_outside_fails_naming_ingress_and_the_fixes(
        cloud: Cloud, built: tuple[Path, VerifiedImage]) -> None:
    source, verified = built
    spec = make_spec(source, ingress="internal-only")
    deployment = deploy(cloud, spec, TARGET, verified)
    with pytest.raises(SmokeTestFailed) as failed:
        smoke(cloud, spec, TARGET, deployment)
    said = f"{failed.value.message} {failed.value.hint}"
    assert "ingress internal-only" in said and "outside" in said
    assert "inside the service's VPC network" in said and "smoke.accept_unreachable" in said


def test_an_accepted_unreachable_smoke_test_is_reported_as_such(
        cloud: Cloud, built: tuple[Path, VerifiedImage]) -> None:
    source, verified = built
    spec = make_spec(source, ingress="internal-and-gclb",
                     smoke={"expect_body": "hi from", "accept_unreachable": True})
    deployment = deploy(cloud, spec, TARGET, verified)
    result = smoke(cloud, spec, TARGET, deployment)
    assert result.unreachable and result.status == 404 and result.attempts == 1


def test_smoke_of_an_internal_service_passes_from_inside_the_vpc(
        cloud: Cloud, knobs: LocalCloudSettings, built: tuple[Path, VerifiedImage]) -> None:
    knobs.caller_in_vpc = True
    source, verified = built
    spec = make_spec(source, ingress="internal-only", smoke={"expect_body": "hi from",
                                                             "accept_unreachable": True})
    result = smoke(cloud, spec, TARGET, deploy(cloud, spec, TARGET, verified))
    assert result.status == 200 and not result.unreachable


@pytest.mark.usefixtures("prefect_api")
def test_migration_of_an_internal_function_from_outside_fails_at_smoke_or_reports_it_unreachable(
        localcloud: LocalCloud, tmp_path: Path) -> None:
    """Never "smoke failed" with a misleading reason, never "passed" when nothing was tested."""
    (tmp_path / "main.py").write_text(MAIN_PY)
    target = Target(kind="local", localcloud_dir=localcloud.state_dir)
    spec = make_spec(tmp_path, ingress="internal-only", smoke={"deadline_s": 20})

    failed, _ = migrate(spec, target)
    assert (failed.status, failed.failed_step) == ("failed", "smoke")
    assert "ingress internal-only" in (failed.message or "")
    assert "smoke.accept_unreachable" in (failed.message or "")

    accepting = make_spec(tmp_path, name=spec.name, ingress="internal-only",
                          smoke={"deadline_s": 20, "accept_unreachable": True})
    result, runs = migrate(accepting, target)
    assert result.status == "succeeded", result.message
    assert result.message == ("smoke not run: the service's ingress keeps this worker out "
                              "(accepted by smoke.accept_unreachable)")
    assert result.serving == [result.revision] and f"promote[{spec.name}]" in runs
