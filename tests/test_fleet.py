"""The fleet flow in-process, against the session's local cloud and a temporary Prefect API.

What a user notices: a dry run says what would be built and deployed and changes nothing,
and after a migration it says everything is cached and unchanged; builds never exceed the
concurrent-builds limit however wide the fan-out; `cf2run setup` creates the pool and the
quota limits once and leaves limits a user sized alone; the report and the selection of
functions behave as documented. (Runs on a real server with real workers: tests/prefect_server.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from fleet_samples import write_fleet
from flowruns import recorded_task_runs
from google.cloud.devtools import cloudbuild_v1
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL
from prefect.states import State

from cf2run.errors import Cf2RunError, SpecError
from cf2run.fleet.quotas import BUILD_LIMIT, RUN_WRITES_LIMIT, QuotaLimits, ensure_limits
from cf2run.fleet.report import FleetReport
from cf2run.fleet_setup import CHECKOUT_ENV, checkout_dir, setup
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import LocalCloudSettings
from cf2run.manifest.spec import Target, load_manifest
from cf2run.report import migrate_each
from cf2run.results import MigrationResult
from flows.migrate_fleet import migrate_fleet

ROOT = Path(__file__).resolve().parents[1]


def names(count: int) -> list[str]:
    """Function names no other test uses, so nothing is cached for them."""
    run = uuid.uuid4().hex[:6]
    return [f"fleet-{run}-{i}" for i in range(count)]


def run_fleet(manifest: Path, **options: Any) -> tuple[State[Any], FleetReport]:
    state = migrate_fleet(manifest, return_state=True, **options)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, FleetReport), report
    return state, report


def builds_of(cloud: Cloud, function: str) -> list[cloudbuild_v1.Build]:
    return list(cloud.builds.list_builds(project_id="local-project", filter=f'tags="fn-{function}"'))


def limit_names(client: SyncPrefectClient) -> set[str]:
    return {limit.name for limit in client.read_global_concurrency_limits(limit=100)}


def delete_quota_limits(client: SyncPrefectClient) -> None:
    """Start from a server without cf2run's limits, as on a first run."""
    for name in limit_names(client) & {BUILD_LIMIT, RUN_WRITES_LIMIT}:
        client.delete_global_concurrency_limit_by_name(name)


@pytest.fixture
def build_limit() -> Iterator[None]:
    """The concurrent-builds limit set to 1 for the test, then put back."""
    with get_client(sync_client=True) as client:
        ensure_limits(client=client)
        saved = client.read_global_concurrency_limit_by_name(BUILD_LIMIT).limit
        ensure_limits(QuotaLimits(builds=1), replace=[BUILD_LIMIT], client=client)
        yield
        ensure_limits(QuotaLimits(builds=saved), replace=[BUILD_LIMIT], client=client)


@pytest.mark.usefixtures("prefect_api")
def test_dry_run_changes_nothing_and_after_a_migration_finds_everything_cached_and_unchanged(
        localcloud: LocalCloud, cloud: Cloud, tmp_path: Path) -> None:
    functions = names(2)
    manifest = write_fleet(tmp_path, functions, localcloud_dir=localcloud.state_dir)

    outcome, before = run_fleet(manifest, dry_run=True)
    assert outcome.name == "Completed", before.summary
    assert outcome.state_details.flow_run_id is not None
    plans = recorded_task_runs(outcome.state_details.flow_run_id, steps=len(functions))
    assert sorted(run.name for run in plans) == [f"plan[{fn}]" for fn in functions], \
        "each function's plan is a task run named after it"
    assert [(p.function, p.build, p.deploy) for p in before.plans] == \
        [(fn, "needed", "create") for fn in functions]
    assert not any(builds_of(cloud, fn) for fn in functions), "a dry run submitted a build"
    assert not [s for s in cloud.services.list_services(parent="projects/local-project/locations/us-central1")
                if s.name.rsplit("/", 1)[-1] in functions], "a dry run created a service"

    outcome, migrated = run_fleet(manifest)
    assert outcome.name == "Completed", migrated.summary

    _, after = run_fleet(manifest, dry_run=True)
    assert [(p.build, p.deploy) for p in after.plans] == [("cached", "unchanged")] * 2
    assert [p.revision for p in after.plans] == [r.revision for r in migrated.results]
    assert [p.current_revision for p in after.plans] == [r.revision for r in migrated.results]


@pytest.mark.usefixtures("prefect_api", "build_limit")
def test_builds_never_exceed_the_concurrent_builds_limit(
        localcloud: LocalCloud, cloud: Cloud, knobs: LocalCloudSettings, tmp_path: Path) -> None:
    knobs.build_latency_s = 1.0
    functions = names(3)
    manifest = write_fleet(tmp_path, functions, localcloud_dir=localcloud.state_dir)

    outcome, report = run_fleet(manifest, max_parallel=3)

    assert outcome.name == "Completed", report.summary
    spans = sorted((b.start_time, b.finish_time) for fn in functions for b in builds_of(cloud, fn))
    assert len(spans) == 3
    assert all(earlier[1] <= later[0] for earlier, later in pairwise(spans)), spans


@pytest.mark.usefixtures("prefect_api")
def test_setup_creates_pool_and_limits_once_and_leaves_sized_limits_alone() -> None:
    with get_client(sync_client=True) as client:
        delete_quota_limits(client)
        first = setup(pool="cf2run-test-pool")
        assert first == ["work pool cf2run-test-pool", f"limit {BUILD_LIMIT}", f"limit {RUN_WRITES_LIMIT}"]
        client.upsert_global_concurrency_limit_by_name(BUILD_LIMIT, 30)
        assert setup(pool="cf2run-test-pool") == []
        builds = client.read_global_concurrency_limit_by_name(BUILD_LIMIT)
        writes = client.read_global_concurrency_limit_by_name(RUN_WRITES_LIMIT)
        pool = client.read_work_pool("cf2run-test-pool")
    assert builds.limit == 30, "setup changed a limit the user sized"
    assert (writes.limit, writes.slot_decay_per_second) == (60, 1.0)
    assert pool.type == "process"


@pytest.mark.usefixtures("prefect_api")
def test_single_migrations_create_missing_quota_limits_as_a_fleet_does() -> None:
    """`cf2run migrate` / `demo` take the same limits; none are silently skipped as missing."""
    with get_client(sync_client=True) as client:
        delete_quota_limits(client)
        migrate_each([], Target())
        after = limit_names(client)
    assert {BUILD_LIMIT, RUN_WRITES_LIMIT} <= after


@pytest.mark.usefixtures("prefect_api")
def test_cli_dry_run_prints_a_row_per_function_and_exits_0(localcloud: LocalCloud, tmp_path: Path) -> None:
    functions = names(2)
    manifest = write_fleet(tmp_path, functions, localcloud_dir=localcloud.state_dir)
    run = subprocess.run(
        [str(Path(sys.executable).with_name("cf2run")), "fleet", str(manifest), "--dry-run",
         "--exclude", functions[1]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = next(line for line in run.stdout.splitlines() if functions[0] in line)
    assert "needed" in row and "create" in row
    assert functions[1] not in run.stdout


def test_only_and_exclude_select_functions_and_refuse_unknown_names(tmp_path: Path) -> None:
    manifest = load_manifest(write_fleet(tmp_path, ["one", "two", "three"]))
    assert manifest.select(exclude=["two"]).names == ["one", "three"]
    assert manifest.select(only=["one", "two"], exclude=["one"]).names == ["two"]
    with pytest.raises(SpecError, match="exclude names 'tow'"):
        manifest.select(exclude=["tow"])
    with pytest.raises(SpecError, match="leave no function"):
        manifest.select(only=["one"], exclude=["one"])


def test_report_rows_fit_a_pane_and_the_report_lists_each_failure_in_full_under_its_table() -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    why = ("smoke test answered 500 | body: Traceback ... . Candidate orders-00002 was not promoted: "
           "orders-00001 keep(s) all the traffic at http://orders (check the function's logs)")
    report = FleetReport(seconds=3.0, results=[
        MigrationResult(function="a", status="succeeded", url="http://a", digest=digest, revision="a-1",
                        build_cached=True, parity="same",
                        timings={"package": 0.14, "build": 0.2, "deploy": 0.3}),
        MigrationResult(function="b", status="failed", failed_step="smoke", message=why,
                        build_cached=None, timings={"package": 0.1, "build": 1.04})])
    rows = report.rows()
    assert [(r["function"], r["status"], r["failed step"], r["build"], r["parity"]) for r in rows] == \
        [("a", "succeeded", "", "cached", "same"), ("b", "failed", "smoke", "", "")]
    assert list(rows[0])[:3] == ["function", "status", "message"], "the message comes early"
    assert rows[0]["digest"] == "sha256:0123456789ab" and rows[0]["seconds"] == 0.6
    assert rows[1]["seconds"] == 1.1 and len(rows[1]["message"]) <= 48
    assert rows[1]["message"].endswith("…") and why.startswith(rows[1]["message"][:-1])
    assert report.summary == "1 of 2 functions failed: b (smoke)"
    markdown = report.markdown()
    assert "| a | succeeded | cached | same | 0.6 | http://a |" in markdown
    assert "| b | failed | - | - | 1.1 | - |" in markdown
    failures = markdown[markdown.index("## Failed"):]
    assert markdown.index("## Functions") < markdown.index("## Failed")
    assert f"- **b** failed at `smoke`: {why}" in failures, "in full: what keeps serving, the hint"


def test_pull_step_finds_the_checkout_or_says_how_to_name_it(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.delenv(CHECKOUT_ENV, raising=False)
    assert checkout_dir() == ROOT
    monkeypatch.setenv(CHECKOUT_ENV, str(tmp_path))
    with pytest.raises(Cf2RunError, match=CHECKOUT_ENV):
        checkout_dir()


def test_the_deployments_fleet_manifest_is_valid() -> None:
    manifest = load_manifest(ROOT / "deployments" / "fleet.yaml")
    assert manifest.names and all(spec.source.is_dir() for spec in manifest.functions)
