"""Artifact Registry's Docker repositories, locally: which exist, creating one, and Google's refusal.

Artifact Registry keeps images only in a repository created beforehand
(``gcloud artifacts repositories create REPO --repository-format=docker --location=LOCATION``,
https://cloud.google.com/artifact-registry/docs/repositories/create-repos). An image is
``LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE``; a domain-scoped project ``example.com:proj`` is
written ``example.com/proj`` (https://cloud.google.com/artifact-registry/docs/docker/names).
A pull or push into a repository that does not exist is refused exactly as one without the
permission: HTTP 403 with distribution's error body, code ``DENIED`` (`denied_message`).

Layout: ``STATE/registry/docker-repositories/PROJECT/LOCATION/REPO.json``, one file per
repository, written once (`cf2run localcloud create-repository` may write one while the local
cloud serves; the registry looks the file up on each request, so it sees it at once).

    repositories = DockerRepositories.of(localcloud.state_dir)
    repositories.create("local-project", "us-central1", "cf2run")
    repositories.exists("local-project", "cf2run", "us-central1")   # True
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

from cf2run.gcp.oci import ArtifactRepository
from cf2run.manifest.spec import PROJECT_RE as _PROJECT_RE
from cf2run.manifest.spec import (
    REPOSITORY_RE as REPOSITORY_ID_RE,  # Artifact Registry's rule for repository ids
)

_LOCATION_RE = re.compile(r"^[a-z]+(?:-[a-z]+[0-9]+)?$")  # us-central1, europe-west1; us, europe, asia

#: What the token endpoint checks for each action (https://cloud.google.com/artifact-registry/docs/access-control).
PULL_PERMISSION = "artifactregistry.repositories.downloadArtifacts"
PUSH_PERMISSION = "artifactregistry.repositories.uploadArtifacts"
#: (project, location, repository) of cf2run.manifest.spec.Target's defaults: created when the local cloud
#: starts, so a manifest without a target (`make demo`) has somewhere to push.
DEFAULT_REPOSITORY = ("local-project", "us-central1", "cf2run")


class InvalidRepository(ValueError):
    """A project, location or repository id Artifact Registry would refuse."""


class RepositoryExists(ValueError):
    """`create` of a repository that exists (gcloud: ALREADY_EXISTS)."""


def denied_message(repository: ArtifactRepository, push: bool) -> str:
    """What Artifact Registry says for a repository that does not exist (or may not be used).

    Seen from its token endpoint (``GET /v2/token?scope=repository:P/R/IMG:pull``, the body's
    first error formatted ``CODE: message`` by go-containerregistry's transport.Error:
    GoogleContainerTools/skaffold#6743, GoogleCloudPlatform/gcr-cleaner#76; HTTP 403:
    argoproj/argo-cd#26260) and from a manifest HEAD
    (terraform-google-modules/terraform-google-kubernetes-engine#1779); a push names
    uploadArtifacts (GoogleCloudPlatform/cymbal-superstore#4).
    """
    permission = PUSH_PERMISSION if push else PULL_PERMISSION
    return (f'Permission "{permission}" denied on resource "{repository.resource}" '
            "(or it may not exist)")


class DockerRepositories:
    """Repositories of the local Artifact Registry, on disk. Safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, localcloud_dir: Path) -> DockerRepositories:
        """The repositories of the local cloud whose state is in `localcloud_dir`."""
        return cls(Path(localcloud_dir) / "registry" / "docker-repositories")

    def create(self, project: str, location: str, repository: str, description: str = "") -> str:
        """Create a Docker repository; returns its resource name. InvalidRepository for ids
        Artifact Registry refuses, RepositoryExists when it is there already."""
        problem = _problem(project, location, repository)
        if problem:
            raise InvalidRepository(problem)
        path = self._file(project, location, repository)
        path.parent.mkdir(parents=True, exist_ok=True)
        name = ArtifactRepository(project, repository, location).resource
        record = {"name": name, "format": "DOCKER", "mode": "STANDARD_REPOSITORY",
                  "description": description,
                  "createTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise RepositoryExists(f"the repository already exists: {name}") from None
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        return name

    def ensure(self, project: str, location: str, repository: str) -> None:
        """Create the repository unless it exists."""
        with contextlib.suppress(RepositoryExists):
            self.create(project, location, repository)

    def exists(self, project: str, repository: str, location: str | None = None) -> bool:
        """Whether the repository exists in `location` (None: in any location)."""
        if _problem(project, location or "us", repository):
            return False
        if location is not None:
            return self._file(project, location, repository).exists()
        return any((self.root / project).glob(f"*/{repository}.json"))

    def _file(self, project: str, location: str, repository: str) -> Path:
        return self.root / project / location / f"{repository}.json"


def _problem(project: str, location: str, repository: str) -> str | None:
    if not _PROJECT_RE.match(project):
        return f"{project!r} is not a Google Cloud project id"
    if not _LOCATION_RE.match(location):
        return f"{location!r} is not an Artifact Registry location (e.g. us-central1, europe-west1, us)"
    if not REPOSITORY_ID_RE.match(repository):
        return (f"{repository!r} is not a repository id: lowercase letters, digits and hyphens, "
                "starting with a letter and ending with a letter or digit, at most 63 characters")
    return None
