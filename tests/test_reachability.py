"""An endpoint nobody answers at is said at once, naming the service, its address and the fix
(issue 18: a stopped local cloud cost ~8 minutes of nested retries ending in a raw urllib3
error). The endpoints are real: a local cloud of the test's own, stopped, so its ports refuse.
Attempts are counted, not seconds (the bench rule)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flowruns import migrate

from cf2run.errors import EndpointUnreachable
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.reachability import ReachingInterceptor, reaching
from cf2run.localcloud.endpoints import Endpoints
from cf2run.localcloud.iam.accounts import route_google_auth, routed_to
from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import FunctionSpec, Target
from tasks.policy import is_transient

PARENT = "projects/local-project/locations/us-central1"


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[tuple[Path, Endpoints, Cloud]]:
    """Clients that talked to a local cloud (their access token is fetched), which then stopped."""
    before = routed_to()
    state = tmp_path / "cloud"
    with LocalCloud(state_dir=state) as running:
        endpoints = running.endpoints
        cloud = Cloud.local(endpoints, state_dir=state)
        assert list(cloud.services.list_services(parent=PARENT)) == []
        assert cloud.storage.lookup_bucket("nothing-here") is None
    yield state, endpoints, cloud
    if before is not None:  # google-auth's token hosts go back to the session's local cloud
        route_google_auth(before)


@pytest.fixture
def grpc_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each gRPC call attempt through the clients' channels (the real interceptor still runs)."""
    attempts: list[str] = []
    real = ReachingInterceptor.intercept_unary_unary

    def counted(self: ReachingInterceptor, continuation: Any, details: Any, request: Any) -> Any:
        attempts.append(details.method)
        return real(self, continuation, details, request)

    monkeypatch.setattr(ReachingInterceptor, "intercept_unary_unary", counted)
    return attempts


def test_a_grpc_call_to_a_stopped_cloud_is_tried_once_and_names_the_service(
        stopped: tuple[Path, Endpoints, Cloud], grpc_attempts: list[str]) -> None:
    state, endpoints, cloud = stopped
    calls = [("Cloud Run", endpoints.cloudrun,
              lambda: cloud.services.get_service(name=f"{PARENT}/services/x")),
             ("Cloud Build", endpoints.cloudbuild,
              lambda: cloud.builds.get_build(project_id="local-project", id="b"))]
    for what, address, call in calls:
        grpc_attempts.clear()
        with pytest.raises(EndpointUnreachable) as raised:
            call()  # both methods retry UNAVAILABLE for up to 60 s / 600 s on their own
        assert raised.value.message == f"cannot reach {what} at {address}: connection refused"
        assert f"cf2run localcloud serve --state-dir {state}" in str(raised.value)
        assert len(grpc_attempts) == 1, grpc_attempts
        assert is_transient(raised.value)  # the step's retries are the one budget


def test_a_storage_call_to_a_stopped_cloud_is_tried_once_and_names_the_service(
        stopped: tuple[Path, Endpoints, Cloud], monkeypatch: pytest.MonkeyPatch) -> None:
    state, endpoints, cloud = stopped
    session = cloud.storage._http
    attempts: list[str] = []
    real = session.request

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        attempts.append(url)
        return real(method, url, *args, **kwargs)

    monkeypatch.setattr(session, "request", counted)
    with pytest.raises(EndpointUnreachable) as raised:
        cloud.storage.bucket("staging").blob("source.tgz").reload()  # DEFAULT_RETRY: 120 s
    address = endpoints.storage.removeprefix("http://")
    assert raised.value.message == f"cannot reach Cloud Storage at {address}: connection refused"
    assert f"cf2run localcloud serve --state-dir {state}" in str(raised.value)
    assert len(attempts) == 1, attempts


def test_a_host_that_does_not_resolve_is_named() -> None:
    with pytest.raises(EndpointUnreachable) as raised, \
            reaching("the registry", "nowhere.invalid", "check it"):
        requests.get("http://nowhere.invalid/v2/", timeout=10)  # .invalid never resolves (RFC 2606)
    assert raised.value.message == ("cannot reach the registry at nowhere.invalid: its host name does "
                                    "not resolve")


def test_other_errors_pass_through_untouched() -> None:
    with pytest.raises(ValueError, match="not about the network"), reaching("x", "y", "z"):
        raise ValueError("not about the network")


@pytest.mark.usefixtures("prefect_api")
def test_a_migration_on_a_stopped_cloud_stops_before_any_step_naming_how_to_start_it(
        stopped: tuple[Path, Endpoints, Cloud], tmp_path: Path) -> None:
    state, _, _ = stopped
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "main.py").write_text("def hello(request):\n    return 'hi'\n")
    spec = FunctionSpec(name="unreached", source=tmp_path / "fn", runtime="python312", entry_point="hello")
    result, run_counts = migrate(spec, Target(kind="local", localcloud_dir=state))
    assert (result.status, result.failed_step) == ("failed", "credentials"), result
    assert f"no local cloud is running in {state}" in (result.message or "")
    assert f"cf2run localcloud serve --state-dir {state}" in (result.message or "")
    assert run_counts == {}, "a step ran against a local cloud that is not there"
