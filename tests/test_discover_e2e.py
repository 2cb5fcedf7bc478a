"""`cf2run discover` against the local Cloud Functions (a local cloud of this module's own, seeded
with the samples in examples/ as 1st-gen functions): the manifest it writes, what it refuses,
its error messages, reruns, and that the old functions are left as they were."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from discover_fixtures.seeds import (
    CALLER,
    EXAMPLES,
    PROJECT,
    SAMPLES,
    function_name,
    odd_seed,
    samples_seed,
    write_function,
)
from google.cloud import functions_v1
from typer.testing import CliRunner, Result

from cf2run.cli import app
from cf2run.gcp.cloud import Cloud
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import Fault, LocalCloudSettings
from cf2run.manifest.spec import FunctionSpec, load_manifest

GOLDEN = Path(__file__).parent / "discover_fixtures" / "samples.golden.yaml"
HELLO = {"httpsTrigger": {}, "runtime": "python312", "entryPoint": "hello"}


@pytest.fixture(scope="module")
def functions_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    """A local cloud with the samples (and the odd functions) seeded as 1st-gen functions."""
    seeds = tmp_path_factory.mktemp("seeds")
    with LocalCloud(settings=LocalCloudSettings()) as cloud:
        cloud.seed_functions(samples_seed(seeds / "samples"))
        cloud.seed_functions(odd_seed(seeds / "odd"))
        yield cloud


def discover(cloud: LocalCloud, out: Path, *args: str, project: str = PROJECT) -> Result:
    return CliRunner().invoke(app, ["discover", "--project", project, "--out", str(out),
                                    "--localcloud-dir", str(cloud.state_dir), *args])


def normalized(text: str, cloud: LocalCloud) -> str:
    """The manifest without what differs between local clouds (its directory and port)."""
    return text.replace(str(cloud.state_dir), "LOCALCLOUD_DIR").replace(
        cloud.endpoints.functions, "http://FUNCTIONS")


def test_each_sample_comes_back_with_its_settings_and_source(functions_cloud: LocalCloud,
                                                             tmp_path: Path) -> None:
    run = discover(functions_cloud, tmp_path, "--filter", "*-*")
    assert run.exit_code == 0, run.output
    manifest = tmp_path / "manifest.yaml"
    assert normalized(manifest.read_text(), functions_cloud) == GOLDEN.read_text()
    for function_id, (example, _, _) in SAMPLES.items():
        extracted = tmp_path / "functions" / function_id
        for path in (EXAMPLES / example).rglob("*"):
            if path.is_file():
                assert (extracted / path.relative_to(EXAMPLES / example)).read_bytes() == path.read_bytes()
    assert f"next: cf2run plan {manifest}" in run.output.replace("\n", "")


def test_the_discovered_manifest_loads(functions_cloud: LocalCloud, tmp_path: Path) -> None:
    """invokers and parity are left out while FunctionSpec does not have them (other branches)."""
    assert discover(functions_cloud, tmp_path / "out").exit_code == 0
    data = yaml.safe_load((tmp_path / "out" / "manifest.yaml").read_text())
    for item in data["functions"]:
        for key in [key for key in item if key not in FunctionSpec.model_fields]:
            del item[key]
    (tmp_path / "out" / "loadable.yaml").write_text(yaml.safe_dump(data))
    manifest = load_manifest(tmp_path / "out" / "loadable.yaml")
    assert sorted(manifest.names) == sorted(SAMPLES)
    assert manifest.target.project == PROJECT and manifest.target.kind == "local"


def test_iam_invoker_members_are_carried(functions_cloud: LocalCloud, tmp_path: Path) -> None:
    assert discover(functions_cloud, tmp_path, "--filter", "hello-*").exit_code == 0
    written = yaml.safe_load((tmp_path / "manifest.yaml").read_text())
    entries = {item["name"]: item for item in written["functions"]}
    assert entries["hello-python"]["allow_unauthenticated"] is True  # allUsers
    assert entries["hello-python"]["invokers"] == []
    assert entries["hello-node"]["allow_unauthenticated"] is False
    assert entries["hello-node"]["invokers"] == [CALLER]
    assert entries["hello-node"]["parity"] == {"old_url": f"{functions_cloud.endpoints.functions}/hello-node"}


def test_second_gen_is_skipped_and_what_cannot_be_migrated_is_refused_with_why(
        functions_cloud: LocalCloud, tmp_path: Path) -> None:
    run = discover(functions_cloud, tmp_path)
    assert run.exit_code == 0, run.output
    output = " ".join(run.output.split())
    assert "already-run" in output and "already a Cloud Run service" in output
    assert "legacy-go" in output and "cf2run builds Python and Node.js functions only" in output
    assert "old-python" in output and "runtime python37" in output
    assert "climbs-out" in output and "points outside the function's folder" in output
    names = [item["name"] for item in yaml.safe_load((tmp_path / "manifest.yaml").read_text())["functions"]]
    assert sorted(names) == sorted(SAMPLES)  # none of the refused or skipped ones
    assert not (tmp_path / "functions" / "climbs-out").exists()
    assert not list(tmp_path.parent.glob("escaped.py")) and not list(tmp_path.rglob("escaped.py"))


@pytest.mark.parametrize(("knob", "says"), [
    ("functions_denied", "permission cloudfunctions.functions.list denied"),
    ("functions_api_disabled", "gcloud services enable cloudfunctions.googleapis.com"),
])
def test_refusals_of_the_api_exit_2_naming_the_fix_and_write_nothing(
        functions_cloud: LocalCloud, tmp_path: Path, knob: str, says: str) -> None:
    setattr(functions_cloud.settings, knob, True)
    try:
        run = discover(functions_cloud, tmp_path / "out")
    finally:
        setattr(functions_cloud.settings, knob, False)
    assert run.exit_code == 2
    assert says in " ".join(run.output.split())
    if knob == "functions_denied":
        assert "roles/cloudfunctions.viewer" in run.output
    assert not (tmp_path / "out").exists()


def test_a_project_without_functions_exits_2(functions_cloud: LocalCloud, tmp_path: Path) -> None:
    run = discover(functions_cloud, tmp_path / "out", project="empty-project")
    assert run.exit_code == 2
    assert "no Cloud Functions in project empty-project" in " ".join(run.output.split())
    assert not (tmp_path / "out").exists()


def test_a_rerun_keeps_the_users_edits_and_says_what_changed(functions_cloud: LocalCloud,
                                                             tmp_path: Path) -> None:
    assert discover(functions_cloud, tmp_path, "--filter", "hello-*").exit_code == 0
    again = discover(functions_cloud, tmp_path, "--filter", "hello-*")
    assert again.exit_code == 0 and "no function changed since the last discover" in again.output

    manifest = tmp_path / "manifest.yaml"
    edited = manifest.read_text().replace("# smoke: the default", "smoke: {path: /?name=x}\n    # was")
    manifest.write_text(edited)
    refused = discover(functions_cloud, tmp_path, "--filter", "hello-*")
    assert refused.exit_code == 2
    assert str(manifest) in " ".join(refused.output.split()) and "--force" in refused.output
    assert manifest.read_text() == edited

    source = tmp_path / "functions" / "hello-python" / "main.py"
    source.write_text(source.read_text() + "# my note\n")
    seeds = tmp_path / "new-seed"
    write_function(seeds, "hello-three", HELLO, source=EXAMPLES / "python-http")
    functions_cloud.seed_functions(seeds)
    forced = discover(functions_cloud, tmp_path, "--filter", "hello-*", "--force")
    assert forced.exit_code == 0, forced.output
    assert "new since the last discover: " + function_name("hello-three") in " ".join(forced.output.split())
    assert "# smoke: the default" in manifest.read_text()  # --force wrote it anew
    assert source.read_text().endswith("# my note\n")  # the function did not change: edits kept
    assert "kept your edits in" in forced.output

    (seeds / "hello-three" / "function.json").write_text(
        (seeds / "hello-three" / "function.json").read_text().replace('"python312"', '"python311"'))
    functions_cloud.seed_functions(seeds)
    updated = discover(functions_cloud, tmp_path, "--filter", "hello-*")
    assert updated.exit_code == 0, updated.output
    said = " ".join(updated.output.split())
    assert "updated since the last discover: " + function_name("hello-three") in said
    assert "runtime: python311" in manifest.read_text().split("functions/hello-three")[-1]


def test_functions_of_several_regions_get_a_manifest_per_region(functions_cloud: LocalCloud,
                                                                tmp_path: Path) -> None:
    seeds = tmp_path / "seed"
    for function_id, region in (("eu-hello", "europe-west1"), ("us-hello", "us-central1")):
        write_function(seeds, function_id, HELLO, source=EXAMPLES / "python-http", project="two-regions",
                       region=region)
    functions_cloud.seed_functions(seeds)
    assert discover(functions_cloud, tmp_path / "all", project="two-regions").exit_code == 0
    for function_id, region in (("eu-hello", "europe-west1"), ("us-hello", "us-central1")):
        written = yaml.safe_load((tmp_path / "all" / region / "manifest.yaml").read_text())
        assert written["target"]["region"] == region
        assert [item["name"] for item in written["functions"]] == [function_id]
        assert (tmp_path / "all" / region / "functions" / function_id / "main.py").exists()
    assert not (tmp_path / "all" / "manifest.yaml").exists()
    one = discover(functions_cloud, tmp_path / "eu", "--region", "europe-west1", project="two-regions")
    assert one.exit_code == 0, one.output
    written = yaml.safe_load((tmp_path / "eu" / "manifest.yaml").read_text())
    assert [item["name"] for item in written["functions"]] == ["eu-hello"]


def test_the_old_functions_are_unchanged_by_discover(functions_cloud: LocalCloud, tmp_path: Path) -> None:
    cloud = Cloud.local(functions_cloud.endpoints, project=PROJECT)
    names = [function_name(function_id) for function_id in SAMPLES]

    def snapshot() -> list[tuple[functions_v1.CloudFunction, bytes]]:
        taken = []
        for name in names:
            url = cloud.functions.generate_download_url(
                request=functions_v1.GenerateDownloadUrlRequest(name=name)).download_url
            taken.append((cloud.functions.get_function(name=name), requests.get(url, timeout=30).content))
        return taken

    before = snapshot()
    assert discover(functions_cloud, tmp_path).exit_code == 0
    assert snapshot() == before
    answer = requests.get(f"{functions_cloud.endpoints.functions}/hello-python?name=old", timeout=60)
    assert answer.status_code == 200 and "Hello, old!" in answer.text
    shutil.rmtree(tmp_path)


def test_transient_failures_of_the_download_url_and_its_download_are_retried(
        functions_cloud: LocalCloud, tmp_path: Path) -> None:
    """GenerateDownloadUrl answering UNAVAILABLE, then its signed URL answering 503 (Cloud Storage's
    XML API: retry with backoff), each for the first calls (100% of them, then 0%): discover still
    takes the deployed source from GenerateDownloadUrl, not the fallback, and the knob fired."""
    faults = functions_cloud.faults
    functions_cloud.settings.faults = [
        Fault(method="CloudFunctionsService.GenerateDownloadUrl", code="UNAVAILABLE", first_n=1),
        Fault(method="Storage.SignedGET", code="UNAVAILABLE", first_n=2, message="backend down")]
    before = faults.injected.copy()
    try:
        run = discover(functions_cloud, tmp_path, "--filter", "hello-python")
    finally:
        functions_cloud.settings.faults = []
    assert run.exit_code == 0, run.output
    assert "# deployed source of version 1 (GenerateDownloadUrl)" in (tmp_path / "manifest.yaml").read_text()
    example = EXAMPLES / SAMPLES["hello-python"][0]
    for path in example.rglob("*"):
        if path.is_file():
            extracted = tmp_path / "functions" / "hello-python" / path.relative_to(example)
            assert extracted.read_bytes() == path.read_bytes()
    injected = faults.injected - before
    assert injected["CloudFunctionsService.GenerateDownloadUrl"] == 1
    assert injected["Storage.SignedGET"] == 2
