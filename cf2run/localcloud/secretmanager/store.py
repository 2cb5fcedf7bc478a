"""A local stand-in for Secret Manager's data: secret versions as files, with their state.

cf2run itself never reads a secret's value (it only passes references to Cloud Run): the local
Cloud Run resolves a revision's secret environment variables from here when it starts the
revision, and fails the revision, as Cloud Run does, when a secret version it names does not
exist or is disabled. The Secret Manager API over this store (secretmanager/api.py) answers what
cf2run does read: whether a version exists and its state. Secret volumes are checked the same way, but
their files are not mounted at the mount path: the local runtime runs revisions as plain host
processes, without a container filesystem to mount into (code that reads the mount path works
on GCP only).

Layout: ``STATE/secretmanager/PROJECT/SECRET/VERSION`` (version numbers from 1), file mode 0600;
a disabled version has a marker ``VERSION.disabled`` beside it.
Several processes may add versions at once (`cf2run localcloud add-secret` while the local cloud
serves): a version file is created exclusively, and a number taken meanwhile is skipped.

    store = SecretStore.of(localcloud.state_dir)
    store.add_version("local-project", "api-key", b"s3cret")   # -> 1
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_PROJECT_RE = re.compile(r"^[A-Za-z0-9.:-]{1,100}$")
_DISABLED = ".disabled"


class SecretUnavailable(LookupError):
    """A secret version that cannot be read: missing or disabled."""


class SecretMissing(SecretUnavailable):
    """The secret, or the version of it, does not exist (`secret_exists`: the secret has versions)."""

    def __init__(self, message: str, secret_exists: bool = False) -> None:
        super().__init__(message)
        self.secret_exists = secret_exists


class VersionDisabled(SecretUnavailable):
    """The version exists and is disabled."""


@dataclass(frozen=True)
class VersionInfo:
    """What Secret Manager says of a version without its data."""

    number: int
    enabled: bool
    created: float  # seconds since the epoch


class InvalidSecretName(ValueError):
    """A project or secret id that Secret Manager would refuse."""


class SecretStore:
    """Secret versions on disk. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, localcloud_dir: Path) -> SecretStore:
        """The secrets of the local cloud whose state is in `localcloud_dir`."""
        return cls(Path(localcloud_dir) / "secretmanager")

    def add_version(self, project: str, secret: str, data: bytes) -> int:
        """Store a new version of `secret` (created if needed); returns its number.
        InvalidSecretName when Secret Manager would refuse the project or secret id."""
        problem = _id_problem(project, secret)
        if problem is not None:
            raise InvalidSecretName(problem)
        directory = self._dir(project, secret)
        with self._lock:
            directory.mkdir(parents=True, exist_ok=True)
            while True:
                number = max(self._versions(directory), default=0) + 1
                try:  # another process may take the same number between the listing and here
                    fd = os.open(directory / str(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                return number

    def access(self, project: str, secret: str, version: str = "latest") -> bytes:
        """The data of a version ('latest', a number); SecretMissing when there is none,
        VersionDisabled when it is disabled."""
        with self._lock:
            found = self._info(project, secret, version)
            if not found.enabled:
                raise VersionDisabled(f"Secret projects/{project}/secrets/{secret}/versions/"
                                      f"{found.number} is disabled")
            return (self._dir(project, secret) / str(found.number)).read_bytes()

    def version(self, project: str, secret: str, version: str = "latest") -> VersionInfo:
        """A version's number, state and creation time ('latest': the newest version, whatever its
        state, as Google resolves it); SecretMissing when there is none."""
        with self._lock:
            return self._info(project, secret, version)

    def exists(self, project: str, secret: str) -> bool:
        """Whether the secret has any version (the local store has no secret without one)."""
        with self._lock:
            return _id_problem(project, secret) is None and bool(self._versions(self._dir(project, secret)))

    def set_enabled(self, project: str, secret: str, version: str, enabled: bool) -> VersionInfo:
        """Enable or disable a version (idempotent); SecretMissing when there is none."""
        with self._lock:
            found = self._info(project, secret, version)
            marker = self._dir(project, secret) / f"{found.number}{_DISABLED}"
            if enabled:
                marker.unlink(missing_ok=True)
            else:
                marker.touch()
            return VersionInfo(found.number, enabled, found.created)

    def _info(self, project: str, secret: str, version: str) -> VersionInfo:
        if _id_problem(project, secret) is not None:
            raise SecretMissing(f"Secret projects/{project}/secrets/{secret} was not found "
                                "(not a valid project and secret id)")
        directory = self._dir(project, secret)
        numbers = self._versions(directory)
        chosen = max(numbers, default=None) if version == "latest" else \
            (int(version) if version.isdigit() and int(version) in numbers else None)
        if chosen is None:
            raise SecretMissing(f"Secret projects/{project}/secrets/{secret}/versions/{version} "
                                "was not found", secret_exists=bool(numbers))
        path = directory / str(chosen)
        return VersionInfo(chosen, not (directory / f"{chosen}{_DISABLED}").exists(), path.stat().st_mtime)

    def _dir(self, project: str, secret: str) -> Path:
        return self.root / project.replace(":", "_") / secret

    @staticmethod
    def _versions(directory: Path) -> list[int]:
        if not directory.is_dir():
            return []
        return [int(path.name) for path in directory.iterdir() if path.name.isdigit()]


def _id_problem(project: str, secret: str) -> str | None:
    """Why Secret Manager would refuse this project or secret id; None when it would not."""
    if not _PROJECT_RE.match(project):
        return f"project {project!r} is not a valid project id"
    if not _ID_RE.match(secret):
        return f"secret {secret!r} is not a valid secret id: use 1 to 255 letters, digits, '_' and '-'"
    return None
