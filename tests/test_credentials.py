"""Every credential type a user has, for every call the pipeline makes (issue 14 §1).

The local cloud authenticates as Google does (cf2run/localcloud/iam/accounts.py,
frontend/grpcauth.py, storage/emulator.py):
google-auth's own classes refresh against its OAuth token endpoint, STS and IAM Credentials; Cloud
Storage's front end, Cloud Build and Cloud Run refuse calls without a valid access token, the registry's
token exchange wants one, and a private Cloud Run URL wants an ID token.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import google.auth.transport.requests
import grpc
import httpx
import pytest
from credential_calls import exercise
from flowruns import migrate
from google.api_core import exceptions as api_exceptions
from google.auth.exceptions import RefreshError
from google.cloud import run_v2
from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from cf2run.errors import Cf2RunError
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.credentials import CLOUD_PLATFORM, application_default, from_block
from cf2run.localcloud.cloudbuild.builder import build_function
from cf2run.localcloud.iam.accounts import (
    DEFAULT_ACCOUNT,
    INSUFFICIENT_SCOPES,
    KINDS,
    MISSING_CREDENTIAL,
    UNAUTHENTICATED,
)
from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import Target, load_manifest

ROOT = Path(__file__).resolve().parents[1]
DEPLOYER = "deployer@local-project.iam.gserviceaccount.com"
USER = "developer@example.com"
PARENT = "projects/local-project/locations/us-central1"


@pytest.fixture(scope="module")
def private_service(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(name, URL, image) of a private service that every credential type calls."""
    source = tmp_path_factory.mktemp("src")
    (source / "main.py").write_text("def hello(request):\n    return 'hello'\n")
    image = f"us-central1-docker.pkg.dev/local-project/cf2run/creds-{uuid.uuid4().hex[:6]}:v1"
    build_function(source, {"GOOGLE_FUNCTION_TARGET": "hello"}, image, cloud.registry,
                   tmp_path_factory.mktemp("cache"), log=lambda line: None)
    service = run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)]))
    created = cloud.services.create_service(parent=PARENT, service=service,
                                            service_id=f"creds-{uuid.uuid4().hex[:6]}").result(timeout=120)
    return created.name, created.uri, image


@pytest.fixture
def adc(localcloud: LocalCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Makes a credentials file of a kind (pointing at the local cloud) the Application Default
    Credentials."""
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud ADC file of the user's

    def use(kind: str, account: str = DEFAULT_ACCOUNT) -> Path:
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps(localcloud.accounts.credentials_info(kind, account)))  # type: ignore[arg-type]
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        return path

    return use


# who the private service sees calling, per kind of ADC
CALLER = {"service_account": DEPLOYER, "authorized_user": USER, "impersonated_service_account": DEPLOYER,
          "external_account": DEPLOYER}


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_works_with_each_kind_of_application_default_credentials(
        kind: str, adc: Callable[..., Path], localcloud: LocalCloud,
        private_service: tuple[str, str, str]) -> None:
    adc(kind, DEPLOYER)
    cloud = Cloud.local(localcloud.endpoints, base=application_default)
    cloud.check_identity()
    assert exercise(cloud, *private_service) == CALLER[kind]


def test_the_impersonate_service_account_option_acts_as_that_account(
        adc: Callable[..., Path], localcloud: LocalCloud, private_service: tuple[str, str, str]) -> None:
    adc("authorized_user")
    cloud = Cloud.local(localcloud.endpoints, base=application_default, impersonate=DEPLOYER)
    assert exercise(cloud, *private_service) == DEPLOYER


def test_the_metadata_server_of_a_worker_on_google(localcloud: LocalCloud, tmp_path: Path,
                                                   private_service: tuple[str, str, str]) -> None:
    """A worker on GCE / Cloud Run / GKE: no key, no gcloud; google.auth.default finds the metadata
    server (GCE_METADATA_HOST is read when google-auth is imported: a process of its own)."""
    metadata = localcloud.endpoints.metadata.removeprefix("http://")
    env = {key: value for key, value in os.environ.items() if key != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(GCE_METADATA_HOST=metadata, GCE_METADATA_IP=metadata, CLOUDSDK_CONFIG=str(tmp_path),
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "credential_calls.py"),
                          str(localcloud.state_dir), *private_service],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1])["caller"].endswith(".iam.gserviceaccount.com")


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("block", ["key file", "key info", "no key (ADC)"])
def test_a_gcp_credentials_block(block: str, adc: Callable[..., Path], localcloud: LocalCloud,
                                 private_service: tuple[str, str, str]) -> None:
    from prefect_gcp import GcpCredentials

    key = adc("service_account", DEPLOYER)
    name = f"creds-{uuid.uuid4().hex[:8]}"
    if block == "key file":
        GcpCredentials(service_account_file=key).save(name)
    elif block == "key info":
        GcpCredentials(service_account_info=json.loads(key.read_text())).save(name)
    else:  # google.auth.default() without scopes inside prefect-gcp: cf2run scopes it (invalid_scope before)
        GcpCredentials().save(name)
    cloud = Cloud.local(localcloud.endpoints, base=functools.partial(from_block, name))
    assert exercise(cloud, *private_service) == DEPLOYER


def test_an_unscoped_service_account_key_is_refused_by_the_token_endpoint_and_cf2run_scopes_it(
        adc: Callable[..., Path], localcloud: LocalCloud) -> None:
    info = json.loads(adc("service_account").read_text())
    unscoped = service_account.Credentials.from_service_account_info(info)
    with pytest.raises(RefreshError, match="invalid_scope"):
        unscoped.refresh(google.auth.transport.requests.Request())
    cloud = Cloud.local(localcloud.endpoints, base=lambda: unscoped)
    assert list(cloud.services.list_services(parent=PARENT)) is not None


def test_the_local_apis_refuse_calls_as_google_does(localcloud: LocalCloud) -> None:
    anonymous = run_v2.ServicesClient(transport=ServicesGrpcTransport(
        channel=grpc.insecure_channel(localcloud.endpoints.cloudrun)))
    with pytest.raises(api_exceptions.Unauthenticated) as refused:
        anonymous.get_service(name=f"{PARENT}/services/anything")
    assert refused.value.message == MISSING_CREDENTIAL

    expired, _ = localcloud.accounts.tokens.mint_access(USER, [CLOUD_PLATFORM], lifetime_s=-1)
    stale = Cloud.local(localcloud.endpoints, base=lambda: user_credentials.Credentials(token=expired))
    with pytest.raises(api_exceptions.Unauthenticated) as refused:
        stale.services.get_service(name=f"{PARENT}/services/anything")
    assert refused.value.message == UNAUTHENTICATED

    token, _ = localcloud.accounts.tokens.mint_access(USER, ["https://www.googleapis.com/auth/userinfo.email"])
    narrow = Cloud.local(localcloud.endpoints, base=lambda: user_credentials.Credentials(token=token))
    with pytest.raises(api_exceptions.PermissionDenied) as scoped:
        narrow.services.get_service(name=f"{PARENT}/services/anything")
    assert scoped.value.message == INSUFFICIENT_SCOPES


def test_cloud_storage_refuses_calls_as_google_does(localcloud: LocalCloud) -> None:
    """The JSON API's answers, as a client sees them on the wire (the official client would try to
    refresh these credentials on a 401 first)."""
    def listing(token: str | None) -> tuple[int, str]:
        answer = httpx.get(f"{localcloud.endpoints.storage}/storage/v1/b/any-bucket/o", timeout=30,
                           headers={"Authorization": f"Bearer {token}"} if token else {})
        return answer.status_code, answer.json()["error"]["message"] if answer.status_code >= 400 else ""

    status, message = listing(None)
    assert status == 401 and message.startswith(
        "Anonymous caller does not have storage.objects.list access to the Google Cloud Storage bucket.")
    tokens = localcloud.accounts.tokens
    expired, _ = tokens.mint_access(USER, [CLOUD_PLATFORM], lifetime_s=-1)
    assert listing(expired) == (401, "Invalid Credentials")
    narrow, _ = tokens.mint_access(USER, ["https://www.googleapis.com/auth/userinfo.email"])
    assert listing(narrow) == (403, "Request had insufficient authentication scopes.")
    read_only, _ = tokens.mint_access(USER, ["https://www.googleapis.com/auth/devstorage.read_only"])
    assert listing(read_only)[0] == 404  # through to fake-gcs-server: there is no such bucket


def test_credentials_that_cannot_get_an_id_token_are_named_before_anything_changes(
        localcloud: LocalCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = localcloud.accounts.credentials_info("external_account")
    del info["service_account_impersonation_url"]  # federation with direct resource access
    path = tmp_path / "wif.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    cloud = Cloud.local(localcloud.endpoints, base=application_default)
    with pytest.raises(Cf2RunError, match="workload identity federation without service-account "
                                          "impersonation") as error:
        cloud.check_identity()
    assert "impersonate_service_account" in str(error.value)


@pytest.mark.usefixtures("prefect_api")
def test_user_adc_migrates_a_public_function(adc: Callable[..., Path], localcloud: LocalCloud,
                                             tmp_path: Path) -> None:
    """The README's `gcloud auth application-default login`: the smoke test of a new public service
    needs an ID token (it is made public only after it passes); fetch_id_token gave none for user ADC."""
    from prefect_gcp import GcpCredentials

    adc("authorized_user")
    name = f"adc-{uuid.uuid4().hex[:8]}"
    GcpCredentials().save(name)
    spec = next(s for s in load_manifest(ROOT / "examples" / "manifest.yaml").functions
                if s.name == "hello-python")
    spec = spec.model_copy(update={"name": f"adc-{uuid.uuid4().hex[:6]}", "allow_unauthenticated": True})
    target = Target(kind="local", localcloud_dir=localcloud.state_dir, credentials_block=name)
    result, _ = migrate(spec, target)
    assert result.status == "succeeded", result.message
    assert httpx.get(result.url, timeout=30).status_code == 200  # public, after its smoke test


CLI = Path(sys.executable).with_name("cf2run")


@pytest.fixture
def gcp_manifest(tmp_path: Path) -> Path:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"target: {{kind: gcp, project: my-project}}\nfunctions:\n"
                        f"  - {{name: hello-python, source: {ROOT / 'examples' / 'python-http'}, "
                        f"runtime: python311, entry_point: hello}}\n")
    return manifest


@pytest.mark.parametrize("command", [["plan", "M"], ["migrate", "M"], ["fleet", "M"],
                                     ["rollback", "hello-python", "--manifest", "M"]])
def test_missing_credentials_for_gcp_is_one_line_naming_the_fix(command: list[str], gcp_manifest: Path,
                                                                tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True", COLUMNS="200")
    args = [str(gcp_manifest) if arg == "M" else arg for arg in command]
    run = subprocess.run([str(CLI), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("error: no Google credentials found")
    assert "gcloud auth application-default login" in lines[0]


def test_credentials_are_google_auths_own_classes(adc: Callable[..., Path], localcloud: LocalCloud) -> None:
    """What each kind resolves to (the matrix above runs these very classes)."""
    from google.auth import external_account, impersonated_credentials

    expected: dict[str, type] = {
        "service_account": service_account.Credentials, "authorized_user": user_credentials.Credentials,
        "impersonated_service_account": impersonated_credentials.Credentials,
        "external_account": external_account.Credentials}
    for kind, cls in expected.items():
        adc(kind)
        assert isinstance(Cloud.local(localcloud.endpoints, base=application_default).credentials, cls)


def test_a_process_whose_google_auth_talks_to_a_local_cloud_refuses_google_cloud(
        localcloud: LocalCloud) -> None:
    """google-auth's token hosts point at the local cloud process-wide (accounts.route_google_auth):
    a Google Cloud target in the same process would send its tokens there, so it is refused."""
    Cloud.local(localcloud.endpoints)
    with pytest.raises(Cf2RunError, match="cannot migrate to Google Cloud"):
        Cloud.gcp("my-project")
