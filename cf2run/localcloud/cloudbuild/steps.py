"""What the local Cloud Build understands of a build: pack steps, substitutions, the source.

Builds shaped like ``gcloud builds submit --pack`` (REFERENCE §1) run; anything else fails
with a message naming what is not supported. The source is a Cloud Storage object (tar.gz or
zip) fetched with google-cloud-storage from the local storage emulator, by generation.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]
from google.cloud.storage.retry import DEFAULT_RETRY

PACK_STEP = "gcr.io/k8s-skaffold/pack"
_PACK_NAME = re.compile(rf"^{re.escape(PACK_STEP)}(?::[\w][\w.-]*)?(?:@sha256:[a-f0-9]{{64}})?$")
#: ``$$``, ``$NAME`` or ``${NAME}`` in a build field (Cloud Build's substitution syntax).
_SUBSTITUTION = re.compile(r"\$(?:(\$)|\{([A-Z_][A-Z0-9_]*)\}|([A-Z_][A-Z0-9_]*))")
#: Calls to the storage emulator: retried briefly, so a stopped emulator fails a build fast.
_RETRY = DEFAULT_RETRY.with_timeout(15)
_TIMEOUT_S = 30.0


class StepNotSupported(Exception):
    """A build step the local Cloud Build cannot run; the message names it."""


class SourceUnavailable(Exception):
    """The build's source cannot be fetched or unpacked; the message says which and why."""


@dataclass(frozen=True)
class PackConfig:
    """``pack config default-builder B``."""

    builder: str


@dataclass(frozen=True)
class PackBuild:
    """``pack build IMAGE --network cloudbuild --env K=V ... [--builder B] [--path P]``."""

    image: str
    env: dict[str, str] = field(default_factory=dict)
    builder: str | None = None
    path: str | None = None


def describe_step(index: int, name: str, args: list[str]) -> str:
    shown = " ".join([name, *args])
    return f"step #{index} ({shown[:200]})"


def parse_step(index: int, name: str, entrypoint: str, args: list[str]) -> PackConfig | PackBuild:
    """The pack command a step runs; raises StepNotSupported for anything else."""
    step = describe_step(index, name, args)
    if not _PACK_NAME.match(name):
        raise StepNotSupported(
            f"{step} is not supported by the local Cloud Build: it runs only the steps of "
            f"`gcloud builds submit --pack` ({PACK_STEP} `config default-builder` and `build`)")
    if entrypoint not in ("", "pack"):
        raise StepNotSupported(f"{step}: entrypoint {entrypoint!r} is not supported (only 'pack')")
    if args[:2] == ["config", "default-builder"] and len(args) == 3:
        return PackConfig(builder=args[2])
    if args[:1] == ["build"] and len(args) >= 2 and not args[1].startswith("-"):
        return _parse_build(step, args[1], args[2:])
    raise StepNotSupported(f"{step}: pack {' '.join(args[:2])!r} is not supported "
                           "(only `config default-builder B` and `build IMAGE ...`)")


def _parse_build(step: str, image: str, flags: list[str]) -> PackBuild:
    env: dict[str, str] = {}
    options: dict[str, str] = {}
    names = {"--env": "env", "-e": "env", "--builder": "builder", "-B": "builder",
             "--path": "path", "-p": "path", "--network": "network"}
    i = 0
    while i < len(flags):
        flag, has_value, value = flags[i].partition("=")
        if flag == "--publish":
            i += 1
            continue
        if flag not in names:
            raise StepNotSupported(f"{step}: pack build flag {flag!r} is not supported")
        if not has_value:
            if i + 1 >= len(flags):
                raise StepNotSupported(f"{step}: pack build flag {flag!r} needs a value")
            value = flags[i + 1]
            i += 1
        i += 1
        if names[flag] == "env":
            key, has_eq, val = value.partition("=")
            if not key or not has_eq:
                raise StepNotSupported(f"{step}: --env {value!r} is not KEY=VALUE")
            env[key] = val
        else:
            options[names[flag]] = value
    return PackBuild(image=image, env=env, builder=options.get("builder"), path=options.get("path"))


def substitute(text: str, values: Mapping[str, str], *, loose: bool = False) -> str:
    """Apply Cloud Build substitutions: ``$$`` -> ``$``; ``$NAME``/``${NAME}`` -> its value.

    An unknown name is an error (ValueError with Cloud Build's wording) unless `loose`
    (``substitution_option: ALLOW_LOOSE``), where it becomes empty.
    """
    def replace(match: re.Match[str]) -> str:
        if match[1]:
            return "$"
        name = match[2] or match[3]
        if name in values:
            return values[name]
        if loose:
            return ""
        kind = "user-defined" if name.startswith("_") else "built-in"
        raise ValueError(f'key in the template "{name}" is not a valid {kind} substitution')

    return _SUBSTITUTION.sub(replace, text)


# -- the source ---------------------------------------------------------------------------------------

class StorageAccess:
    """The local storage emulator through the official google-cloud-storage client."""

    def __init__(self, storage_url: str, project: str) -> None:
        self.url = storage_url.rstrip("/")
        self.client = storage.Client(project=project, credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": self.url})

    def fetch(self, bucket: str, name: str, generation: int | None) -> bytes:
        where = f"gs://{bucket}/{name}" + (f"#{generation}" if generation else "")
        try:
            blob = self.client.bucket(bucket).blob(name, generation=generation or None)
            return bytes(blob.download_as_bytes(timeout=_TIMEOUT_S, retry=_RETRY))
        except gexc.NotFound:
            current = self._current_generation(bucket, name)
            if current is None:
                raise SourceUnavailable(f"source {where} does not exist") from None
            raise SourceUnavailable(f"source {where}: generation {generation} not found; the object's "
                                    f"current generation is {current}") from None
        except gexc.GoogleAPICallError as error:
            raise SourceUnavailable(f"source {where} cannot be fetched: {error.message}") from None

    def _current_generation(self, bucket: str, name: str) -> int | None:
        try:
            blob = self.client.bucket(bucket).get_blob(name, timeout=_TIMEOUT_S, retry=_RETRY)
        except gexc.NotFound:
            return None
        return int(blob.generation) if blob is not None and blob.generation else None

    def ensure_bucket(self, name: str) -> None:
        with contextlib.suppress(gexc.Conflict):
            self.client.create_bucket(name, timeout=_TIMEOUT_S, retry=_RETRY)

    def upload_text(self, bucket: str, name: str, text: str) -> None:
        self.client.bucket(bucket).blob(name).upload_from_string(
            text, content_type="text/plain", timeout=_TIMEOUT_S, retry=_RETRY)



def download_url(storage_url: str, bucket: str, name: str) -> str:
    """The JSON API media URL of an object in the storage emulator (what ``log_url`` is)."""
    return f"{storage_url.rstrip('/')}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"


def unpack_source(data: bytes, dest: Path, where: str) -> None:
    """Unpack a tar.gz / tar or zip source archive into `dest` (paths cannot escape it)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.namelist():
                    if Path(member).is_absolute() or ".." in Path(member).parts:
                        raise SourceUnavailable(f"source {where}: entry {member!r} escapes the archive")
                archive.extractall(dest)
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
                archive.extractall(dest, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise SourceUnavailable(f"source {where} is not a tar.gz or zip archive: {error}") from None
