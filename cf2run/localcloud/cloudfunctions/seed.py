"""Reading a seed directory of Cloud Functions for the local cloud, and refusing a bad one.

    SEED/NAME/function.json      a 1st-gen function: a v1 CloudFunction in the API's JSON
    SEED/NAME/function.v2.json   or a 2nd-gen one: a v2 Function (listed by the v2 API only)
    SEED/NAME/source/            the deployed source, a directory (may be a symlink) ...
    SEED/NAME/source.zip         ... or a zip, used byte for byte (a hostile one stays hostile)
    SEED/NAME/iam.json           optional: the function's IAM policy ({"bindings": [...]})

`name` may be left out (``projects/local-project/locations/us-central1/functions/NAME``); the
fields the service sets (status, versionId, updateTime, URLs, ...) are set by the store. Every
problem is a `SeedError` naming the file, raised before anything is stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.cloud import functions_v1, functions_v2
from google.iam.v1 import policy_pb2
from google.protobuf import json_format

from cf2run.errors import Cf2RunError
from cf2run.localcloud.cloudfunctions.shapes import FUNCTION_ID_RE, Json, split_name

DEFAULT_PROJECT = "local-project"
DEFAULT_REGION = "us-central1"
GEN1_FILE = "function.json"
GEN2_FILE = "function.v2.json"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # a source directory zips the same every time


class SeedError(Cf2RunError):
    """A seed directory the local Cloud Functions cannot take; the message names the file."""


@dataclass(frozen=True)
class Seed:
    """One function of a seed directory: its definition (API JSON, `name` set), source and policy."""

    name: str
    generation: str  # GEN_1 or GEN_2
    definition: Json
    source_zip: bytes | None
    policy: Json
    folder: Path

    @property
    def function_id(self) -> str:
        return split_name(self.name)[2]

    @property
    def digest(self) -> str:
        """What makes two seeds the same function (an unchanged one is not deployed again)."""
        hashed = hashlib.sha256(self.generation.encode())
        hashed.update(json.dumps([self.definition, self.policy], sort_keys=True).encode())
        hashed.update(self.source_zip or b"")
        return hashed.hexdigest()


def read_seeds(directory: Path) -> list[Seed]:
    """Every function of `directory` (one folder each, sorted by folder name); SeedError for the
    first problem found, naming its file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SeedError(f"the seed directory {directory} does not exist or is not a directory",
                        hint="give a directory holding one folder per function (NAME/function.json "
                             "and NAME/source/ or NAME/source.zip)")
    seeds = [read_seed(folder) for folder in sorted(directory.iterdir())
             if folder.is_dir() and not folder.name.startswith(".")]
    seen: dict[str, Path] = {}
    for seed in seeds:
        if seed.name in seen:
            raise SeedError(f"{seed.folder} and {seen[seed.name]} both define {seed.name}",
                            hint="give each function its own name")
        seen[seed.name] = seed.folder
    return seeds


def read_seed(folder: Path) -> Seed:
    gen1, gen2 = folder / GEN1_FILE, folder / GEN2_FILE
    if gen1.exists() == gen2.exists():
        raise SeedError(f"{folder} needs exactly one of {GEN1_FILE} (1st gen) and {GEN2_FILE} (2nd gen)",
                        hint="a seed folder describes one function")
    path = gen1 if gen1.exists() else gen2
    definition = _json_object(path)
    message_type: Any = functions_v1.CloudFunction if path == gen1 else functions_v2.Function
    try:
        message_type.from_json(json.dumps(definition))
    except json_format.ParseError as error:
        raise SeedError(f"{path} is not a {message_type.__name__} in the API's JSON: {error}",
                        hint="use the API's field names (camelCase, as `gcloud functions describe "
                             "--format=json` prints them)") from None
    name = definition.setdefault(
        "name", f"projects/{DEFAULT_PROJECT}/locations/{DEFAULT_REGION}/functions/{folder.name}")
    _check_name(name, path)
    if path == gen1:
        _check_gen1(definition, path)
    source = _source(folder, required=path == gen1 and "sourceRepository" not in definition)
    return Seed(name=name, generation="GEN_1" if path == gen1 else "GEN_2", definition=definition,
                source_zip=source, policy=_policy(folder / "iam.json"), folder=folder)


def _json_object(path: Path) -> Json:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SeedError(f"{path} cannot be read as JSON: {error}", hint="fix the file") from None
    if not isinstance(value, dict):
        raise SeedError(f"{path} must hold a JSON object, not {type(value).__name__}", hint="fix the file")
    return value


def _check_name(name: object, path: Path) -> None:
    try:
        _, _, function_id = split_name(str(name))
    except ValueError as error:
        raise SeedError(f"{path}: name: {error}", hint="leave name out, or give the full resource "
                                                       "name") from None
    if not FUNCTION_ID_RE.match(function_id):
        raise SeedError(f"{path}: name: {function_id!r} is not a function id",
                        hint="a letter, then letters, digits, - and _ (at most 63), as gcloud requires")


def _check_gen1(definition: Json, path: Path) -> None:
    """What a 1st-gen function cannot be deployed without (functions.proto: runtime "Required when
    deploying a new function"; the trigger oneof; EventTrigger.event_type "Required")."""
    if not definition.get("runtime"):
        raise SeedError(f"{path}: runtime is missing", hint='set it, e.g. "runtime": "python311"')
    triggers = [key for key in ("httpsTrigger", "eventTrigger") if key in definition]
    if len(triggers) != 1:
        raise SeedError(f"{path}: a 1st-gen function needs exactly one of httpsTrigger and eventTrigger "
                        f"(found {', '.join(triggers) or 'neither'})",
                        hint='"httpsTrigger": {} for an HTTP function')
    if "eventTrigger" in definition and not definition["eventTrigger"].get("eventType"):
        raise SeedError(f"{path}: eventTrigger.eventType is missing",
                        hint='e.g. "providers/cloud.pubsub/eventTypes/topic.publish"')


def _source(folder: Path, required: bool) -> bytes | None:
    directory, archive = folder / "source", folder / "source.zip"
    if directory.exists() and archive.exists():
        raise SeedError(f"{folder} has both source/ and source.zip", hint="keep one of them")
    if archive.exists():
        return archive.read_bytes()
    if directory.is_dir():
        return zip_directory(directory)
    if required:
        raise SeedError(f"{folder} has no source/ directory or source.zip",
                        hint="add the function's deployed source")
    return None


def zip_directory(directory: Path) -> bytes:
    """The files under `directory` as a zip, the same bytes for the same files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for file in sorted(files):
                path = Path(root) / file
                info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), _FIXED_TIME)
                info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _policy(path: Path) -> Json:
    if not path.exists():
        return {}
    policy = _json_object(path)
    try:
        json_format.ParseDict(policy, policy_pb2.Policy())
    except json_format.ParseError as error:
        raise SeedError(f"{path} is not an IAM policy: {error}",
                        hint='e.g. {"bindings": [{"role": "roles/cloudfunctions.invoker", '
                             '"members": ["allUsers"]}]}') from None
    return policy
