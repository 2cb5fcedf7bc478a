"""Artifact Registry repositories on the local cloud: images go only into repositories that exist.

A repository that does not exist is refused as Artifact Registry refuses it: HTTP 403 with
distribution's error body, code DENIED, "Permission ... denied on resource ... (or it may not
exist)" (cf2run/localcloud/registry/repositories.py cites where that text is seen). Real sockets and the
local cloud's own token service; no mocks.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from cf2run.errors import RegistryError
from cf2run.gcp.oci import ImageRef, Layer, RegistryClient
from cf2run.localcloud.iam.metadata import CLOUD_PLATFORM_SCOPE, TokenAuthority
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.registry.repositories import DEFAULT_REPOSITORY, DockerRepositories, RepositoryExists
from cf2run.localcloud.server import LocalCloud
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings
from cf2run.manifest.spec import Target

CF2RUN = Path(sys.executable).with_name("cf2run")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _basic(localcloud: LocalCloud) -> str:
    token = TokenAuthority(localcloud.state_dir).mint_access(
        "tester@local-project.iam.gserviceaccount.com", [CLOUD_PLATFORM_SCOPE])[0]
    return "Basic " + base64.b64encode(f"oauth2accesstoken:{token}".encode()).decode()


def _push(client: RegistryClient, image: str) -> str:
    return client.push_image(ImageRef.parse(image), b'{"architecture":"amd64","os":"linux"}',
                             [Layer(data=uuid.uuid4().bytes)])


def test_token_for_a_missing_repository_is_403_denied_with_googles_text(localcloud: LocalCloud) -> None:
    repository = _unique("missing")
    registry = localcloud.endpoints.registry
    with httpx.Client() as http:
        response = http.get(
            f"http://{registry}/v2/token",
            params={"service": "us-central1-docker.pkg.dev",
                    "scope": f"repository:local-project/{repository}/img:pull"},
            headers={"Host": "us-central1-docker.pkg.dev", "Authorization": _basic(localcloud)})
    assert response.status_code == 403
    assert response.json() == {"errors": [{
        "code": "DENIED",
        "message": 'Permission "artifactregistry.repositories.downloadArtifacts" denied on resource '
                   f'"projects/local-project/locations/us-central1/repositories/{repository}" '
                   "(or it may not exist)"}]}


def test_push_to_a_missing_repository_names_it_and_the_create_command(localcloud: LocalCloud) -> None:
    repository = _unique("nope")
    client = RegistryClient(resolve=lambda host: f"http://{localcloud.endpoints.registry}",
                            auth=lambda: _basic(localcloud))
    with pytest.raises(RegistryError) as refused:
        _push(client, f"europe-west1-docker.pkg.dev/local-project/{repository}/img:v1")
    error = refused.value
    assert error.status == 403 and error.code == "DENIED" and not error.transient
    assert error.registry_message == (
        'Permission "artifactregistry.repositories.uploadArtifacts" denied on resource '
        f'"projects/local-project/locations/europe-west1/repositories/{repository}" (or it may not exist)')
    assert error.hint is not None
    assert (f"gcloud artifacts repositories create {repository} --repository-format=docker "
            "--location=europe-west1 --project=local-project") in error.hint
    assert "roles/artifactregistry.writer" in error.hint


def test_a_created_repository_takes_images_in_its_location_only(localcloud: LocalCloud) -> None:
    repository = _unique("apps")
    client = RegistryClient(resolve=lambda host: f"http://{localcloud.endpoints.registry}",
                            auth=lambda: _basic(localcloud))
    assert localcloud.create_repository(repository, location="europe-west1") == \
        f"projects/local-project/locations/europe-west1/repositories/{repository}"
    image = f"europe-west1-docker.pkg.dev/local-project/{repository}/img:v1"
    digest = _push(client, image)
    assert client.head_manifest(ImageRef.parse(image)).digest == digest  # type: ignore[union-attr]
    with pytest.raises(RegistryError) as elsewhere:  # the same id in another region is another repository
        client.head_manifest(ImageRef.parse(f"us-central1-docker.pkg.dev/local-project/{repository}/img:v1"))
    assert elsewhere.value.status == 403
    assert "locations/us-central1" in (elsewhere.value.registry_message or "")
    with pytest.raises(RepositoryExists):
        localcloud.create_repository(repository, location="europe-west1")


def test_the_default_targets_repository_exists_from_the_start(localcloud: LocalCloud) -> None:
    target = Target()
    assert (target.project, target.region, target.repository) == DEFAULT_REPOSITORY
    repositories = DockerRepositories.of(localcloud.state_dir)
    assert repositories.exists(target.project, target.repository, target.region)


def test_domain_scoped_project_repository(tmp_path: Path) -> None:
    repositories = DockerRepositories(tmp_path / "repos")
    with RegistryServer(tmp_path / "registry", FaultInjector(LocalCloudSettings()),
                        repositories=repositories) as server:
        client = RegistryClient(resolve=lambda host: server.url)
        image = "us-docker.pkg.dev/example.com/my-proj/repo/img:v1"
        with pytest.raises(RegistryError) as refused:  # no auth: refused at /v2/NAME/... itself
            client.list_tags(ImageRef.parse(image))
        assert refused.value.status == 403
        assert '"projects/example.com:my-proj/locations/us/repositories/repo"' in \
            (refused.value.registry_message or "")
        repositories.create("example.com:my-proj", "us", "repo")
        _push(client, image)


def test_manifest_head_without_token_auth_is_403_denied(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "registry", FaultInjector(LocalCloudSettings()),
                        repositories=DockerRepositories(tmp_path / "repos")) as server:
        response = httpx.head(f"{server.url}/v2/p-roject/r/img/manifests/v1",
                              headers={"Host": "asia-east1-docker.pkg.dev"})
        assert response.status_code == 403
        got = httpx.get(f"{server.url}/v2/p-roject/r/img/manifests/v1",
                        headers={"Host": "asia-east1-docker.pkg.dev"})
        assert json.loads(got.content)["errors"][0]["code"] == "DENIED"


def test_a_standalone_registry_without_repositories_stays_open(tmp_path: Path) -> None:
    with RegistryServer(tmp_path, FaultInjector(LocalCloudSettings())) as server:
        _push(RegistryClient(resolve=lambda host: server.url), "us-central1-docker.pkg.dev/p/r/img:v1")


def test_cli_create_repository_as_gcloud_words_it(localcloud: LocalCloud) -> None:
    repository = _unique("cli")
    state = ["--state-dir", str(localcloud.state_dir)]
    args = [str(CF2RUN), "localcloud", "create-repository", repository, "--location", "us-east1", *state]
    created = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [f"Create request issued for: [{repository}]",
                                           f"Created repository [{repository}]."]
    client = RegistryClient(resolve=lambda host: f"http://{localcloud.endpoints.registry}",
                            auth=lambda: _basic(localcloud))
    _push(client, f"us-east1-docker.pkg.dev/local-project/{repository}/img:v1")  # the running cloud sees it
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr
    bad = subprocess.run([*args[:3], "Bad_Repo", *state], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "300"})
    assert bad.returncode == 2 and "'Bad_Repo' is not a repository id" in bad.stderr
