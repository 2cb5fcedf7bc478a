"""Results on Cloud Storage (cf2run/result_storage.py): `cf2run setup --results-bucket`.

On the session's local cloud and a temporary Prefect server: setup creates the bucket and makes a
GcsBucket block on it the server's default result storage; a cached task's record is then an
object in that bucket, found by the next run. Bad bucket names are refused before anything is
touched.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.states import State
from test_cli import cf2run

from cf2run.errors import Cf2RunError, SpecError
from cf2run.gcp.cloud import STORAGE_EMULATOR_HOST, Cloud
from cf2run.localcloud.iam import accounts
from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import Target
from cf2run.result_storage import RESULTS_BLOCK, check_bucket_name, setup_result_storage


@pytest.fixture
def server_default_cleared() -> Iterator[None]:
    """The temporary server's default result storage, cleared after the test (other tests share it)."""
    yield
    with get_client(sync_client=True) as client:
        client.clear_server_default_result_storage()


@pytest.mark.parametrize("name", ["Results", "ab", "-results", "my-google-results", "goog-results",
                                  "results bucket"])
def test_a_name_cloud_storage_refuses_is_refused_naming_the_option(name: str) -> None:
    with pytest.raises(SpecError, match="--results-bucket"):
        check_bucket_name(name)


def test_setup_with_a_bad_bucket_name_exits_2_before_any_server_or_cloud_call(tmp_path: Path) -> None:
    run = cf2run("setup", "--results-bucket", "Not_A_Bucket",
                 env={"PREFECT_API_URL": "http://127.0.0.1:9/api", "CF2RUN_LOCALCLOUD_DIR": str(tmp_path)})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--results-bucket 'Not_A_Bucket' is not a Cloud Storage bucket name" in run.stderr
    assert "work pool" not in run.stdout and not list(tmp_path.iterdir())


def test_setup_refuses_a_target_without_a_results_bucket() -> None:
    run = cf2run("setup", "--target", "gcp", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--results-bucket" in run.stderr and "work pool" not in run.stdout


@pytest.mark.usefixtures("prefect_api", "server_default_cleared")
def test_setup_makes_the_bucket_the_servers_default_and_cache_records_go_there(
        localcloud: LocalCloud) -> None:
    target = Target(localcloud_dir=localcloud.state_dir)
    bucket = f"cf2run-results-{secrets.token_hex(4)}"

    done, notes = setup_result_storage(target, f"gs://{bucket}")

    assert done[0] == f"bucket gs://{bucket} (created)" and not notes
    assert f"gcs-bucket/{RESULTS_BLOCK}" in done[1]
    key = f"cf2run-test-{secrets.token_hex(4)}"
    first, again = _cached_twice(key)
    assert (first.name, again.name) == ("Completed", "Cached")
    assert again.result() == {"answer": 42}
    cloud = Cloud.for_target(target)
    assert key in {blob.name for blob in cloud.storage.list_blobs(bucket)}, \
        "the cache record is an object of the bucket, where any worker finds it"
    assert setup_result_storage(target, bucket)[0][0] == f"bucket gs://{bucket} (exists)"


def _cached_twice(key: str) -> tuple[State[Any], State[Any]]:
    """A cached task (its key: `key`) run by two flow runs: the states of both task runs."""

    @task(cache_key_fn=lambda *_: key, persist_result=True)
    def answer() -> dict[str, int]:
        return {"answer": 42}

    @flow
    def ask() -> State[Any]:
        return answer(return_state=True)

    return ask(), ask()


def test_a_process_whose_storage_clients_go_to_an_emulator_refuses_google_cloud(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cf2run's own Google Cloud storage client names no endpoint: with STORAGE_EMULATOR_HOST set, its
    source archives (and results) would go to the emulator, so the target is refused."""
    monkeypatch.setattr(accounts, "_routed_to", None)  # as in a process that never used a local cloud
    monkeypatch.setenv(STORAGE_EMULATOR_HOST, "http://127.0.0.1:4443")
    with pytest.raises(Cf2RunError, match=re.escape("STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 is set")):
        Cloud.gcp("my-project")
