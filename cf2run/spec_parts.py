"""The nested parts of a function's manifest entry: Secret Manager references and triggers.

gen1 names (Cloud Functions v1 API) -> manifest:

- ``secretEnvironmentVariables[] {key, secret, version, projectId}`` -> ``secret_env: {KEY: SecretRef}``
  (``KEY: SECRET``, ``KEY: SECRET:VERSION`` or ``KEY: {secret, version, project}``);
- ``secretVolumes[] {mountPath, secret, projectId, versions[] {path, version}}`` -> ``secret_volumes[]``;
- ``eventTrigger {eventType, resource}`` -> ``trigger {event_type, topic | bucket}`` (or a custom
  CloudEvent type with its filters and sample data).

Only references are kept: cf2run never reads, logs or prints a secret's value.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

SECRET_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
#: 'latest', a version number, or an alias (Secret Manager alias rules).
SECRET_VERSION_RE = re.compile(r"^(?:latest|[1-9][0-9]*|[A-Za-z][A-Za-z0-9_-]{0,62})$")
PROJECT_ID_RE = re.compile(r"^(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[0-9]{1,20}$")
#: gen1 SecretVolume.mount_path: "Restricted mount paths: /cloudsql, /dev/log, /pod, /proc, /var/log".
RESTRICTED_MOUNT_PATHS = ("/cloudsql", "/dev/log", "/pod", "/proc", "/var/log")


class StrictModel(BaseModel):
    """Unknown fields are errors; fields may be given by name or alias."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)


def _check_secret_id(secret: str) -> str:
    if not SECRET_ID_RE.match(secret):
        raise ValueError(f"secret {secret!r} is not a Secret Manager secret id; use 1 to 255 letters, "
                         "digits, '_' and '-' (the id, not projects/P/secrets/ID: set `project` for "
                         "a secret in another project)")
    return secret


def _check_version(version: str) -> str:
    if not SECRET_VERSION_RE.match(version):
        raise ValueError(f"secret version {version!r} is not 'latest', a version number (1, 2, ...) or "
                         "an alias")
    return version


def _check_project(project: str | None) -> str | None:
    if project is not None and not PROJECT_ID_RE.match(project):
        raise ValueError(f"project {project!r} is not a Google Cloud project id or number")
    return project


#: A secret version: a number, an alias or 'latest' (checked by `_check_version`).
SecretVersion = Annotated[str, AfterValidator(_check_version),
                          Field(description="Version number, alias or 'latest'.")]


class _Secret(StrictModel):
    secret: str = Field(description="Secret id in Secret Manager (not the full resource name).")
    project: str | None = Field(
        default=None, description="Project that holds the secret (gen1 projectId); unset = the "
                                  "target's project.")

    @field_validator("secret")
    @classmethod
    def _secret_id(cls, secret: str) -> str:
        return _check_secret_id(secret)

    @field_validator("project")
    @classmethod
    def _project_id(cls, project: str | None) -> str | None:
        return _check_project(project)


class SecretRef(_Secret):
    """One version of a secret, as an environment variable's value."""

    version: SecretVersion = "latest"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``SECRET`` or ``SECRET:VERSION``."""
        if isinstance(data, str):
            secret, _, version = data.partition(":")
            return {"secret": secret, "version": version or "latest"}
        return data


class SecretFile(StrictModel):
    """One file of a secret volume: a secret version at a path under the mount path."""

    path: str = Field(description="File path relative to the mount path, e.g. 'password'.")
    version: SecretVersion = "latest"

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"path {path!r} must be a relative file path under the mount path, "
                             "without '..' or empty parts, e.g. 'password' or 'db/password'")
        return path


class SecretVolume(_Secret):
    """A secret mounted as files (gen1 secretVolumes)."""

    mount_path: str = Field(description="Absolute directory the secret's files appear in, e.g. "
                                        "/etc/secrets (it is shadowed entirely).")
    versions: list[SecretFile] = Field(
        default_factory=list, description="Files to create; empty = the latest version in a file "
                                          "named after the secret.")

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, mount_path: str) -> str:
        normal = posixpath.normpath(mount_path)
        if not mount_path.startswith("/") or normal == "/":
            raise ValueError(f"mount_path {mount_path!r} must be an absolute directory other than '/', "
                             "e.g. /etc/secrets")
        restricted = next((p for p in RESTRICTED_MOUNT_PATHS
                           if normal == p or normal.startswith(p + "/")), None)
        if restricted:
            raise ValueError(f"mount_path {mount_path!r} is under {restricted}, which Cloud Functions "
                             f"and Cloud Run reserve ({', '.join(RESTRICTED_MOUNT_PATHS)}); use "
                             "e.g. /etc/secrets")
        return normal

    @field_validator("versions")
    @classmethod
    def _unique_paths(cls, versions: list[SecretFile]) -> list[SecretFile]:
        seen: set[str] = set()
        for item in versions:
            if item.path in seen:
                raise ValueError(f"path {item.path!r} is given twice; each file needs its own path")
            seen.add(item.path)
        return versions


def overlapping_mounts(volumes: list[SecretVolume]) -> tuple[str, str] | None:
    """Two mount paths of which one is the other or inside it (Cloud Run refuses both)."""
    paths = [volume.mount_path for volume in volumes]
    for i, first in enumerate(paths):
        for second in paths[i + 1:]:
            outer, inner = sorted((first, second), key=len)
            if inner == outer or inner.startswith(outer + "/"):
                return outer, inner
    return None


# -- event triggers ----------------------------------------------------------------------------

PUBSUB_CLOUDEVENT = "google.cloud.pubsub.topic.v1.messagePublished"
#: gen1 event types (and their legacy names) -> the CloudEvent type Eventarc delivers (REFERENCE §5).
GEN1_EVENT_TYPES = {
    "google.pubsub.topic.publish": PUBSUB_CLOUDEVENT,
    "providers/cloud.pubsub/eventTypes/topic.publish": PUBSUB_CLOUDEVENT,
    "google.storage.object.finalize": "google.cloud.storage.object.v1.finalized",
    "google.storage.object.delete": "google.cloud.storage.object.v1.deleted",
    "google.storage.object.archive": "google.cloud.storage.object.v1.archived",
    "google.storage.object.metadataUpdate": "google.cloud.storage.object.v1.metadataUpdated",
}
STORAGE_CLOUDEVENTS = frozenset(t for t in GEN1_EVENT_TYPES.values() if ".storage." in t)
TOPIC_RE = re.compile(r"^(?:projects/[a-z0-9.:-]+/topics/)?[A-Za-z][A-Za-z0-9._~+%-]{2,254}$")
BUCKET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
CLOUDEVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.[A-Za-z0-9._-]+$")
TriggerKind = Literal["pubsub", "storage", "custom"]


class Trigger(StrictModel):
    """What an event function reacts to (gen1 eventTrigger); the smoke test sends such an event
    and the report gives the Eventarc trigger to create."""

    event_type: str = Field(
        description="gen1 eventType (google.pubsub.topic.publish, google.storage.object.finalize, "
                    ".delete, .archive, .metadataUpdate) or a CloudEvent type (e.g. "
                    "google.cloud.pubsub.topic.v1.messagePublished, or any custom type).")
    topic: str | None = Field(
        default=None, description="Pub/Sub triggers: the topic id (or projects/P/topics/T).")
    bucket: str | None = Field(default=None, description="Storage triggers: the bucket name.")
    filters: dict[str, str] = Field(
        default_factory=dict, description="Custom event types: Eventarc event filters besides "
                                          "`type` (attribute: value).")
    source: str | None = Field(
        default=None, description="Custom event types: ce-source of the smoke event; unset = "
                                  "//cf2run/NAME.")
    data: Any | None = Field(
        default=None, description="Data of the smoke event: Pub/Sub = the message (text, or JSON "
                                  "that is encoded); Storage = object fields over a sample object; "
                                  "custom = the event data (JSON).")
    service_account: str | None = Field(
        default=None, description="Identity of the Eventarc trigger (needs roles/run.invoker); "
                                  "unset = the function's service account.")
    location: str | None = Field(
        default=None, description="Eventarc trigger location; unset = the target region (a Storage "
                                  "trigger must be in the bucket's location).")

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str | None) -> str | None:
        if topic is not None and not TOPIC_RE.match(topic):
            raise ValueError(f"topic {topic!r} is not a Pub/Sub topic id (3 to 255 characters, starting "
                             "with a letter) nor projects/PROJECT/topics/TOPIC")
        return topic

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, bucket: str | None) -> str | None:
        if bucket is not None and not BUCKET_NAME_RE.match(bucket.removeprefix("gs://")):
            raise ValueError(f"bucket {bucket!r} is not a Cloud Storage bucket name")
        return None if bucket is None else bucket.removeprefix("gs://")

    @field_validator("event_type")
    @classmethod
    def _event_type(cls, event_type: str) -> str:
        if event_type not in GEN1_EVENT_TYPES and not CLOUDEVENT_TYPE_RE.match(event_type):
            raise ValueError(f"event_type {event_type!r} is neither a gen1 event type "
                             f"({', '.join(sorted(GEN1_EVENT_TYPES)[:2])}, ...) nor a CloudEvent type "
                             "such as google.cloud.pubsub.topic.v1.messagePublished")
        return event_type

    @field_validator("filters")
    @classmethod
    def _filters(cls, filters: dict[str, str]) -> dict[str, str]:
        if "type" in filters:
            raise ValueError("filters sets `type`; set trigger.event_type instead")
        return filters

    @model_validator(mode="after")
    def _what_the_kind_needs(self) -> Trigger:
        kind = self.kind
        needs = {"pubsub": "topic", "storage": "bucket"}.get(kind)
        if needs and getattr(self, needs) is None:
            raise ValueError(f"a {kind} trigger ({self.event_type}) needs `{needs}`; add it (gen1: "
                             "eventTrigger.resource)")
        stray = [name for name in ("topic", "bucket") if name != needs and getattr(self, name) is not None]
        if stray:
            raise ValueError(f"`{stray[0]}` does not apply to a {kind} trigger ({self.event_type}); "
                             "remove it")
        if self.filters and kind != "custom":
            raise ValueError(f"`filters` are for custom event types; a {kind} trigger is filtered by "
                             f"its {needs}")
        if self.source is not None and kind != "custom":
            raise ValueError(f"`source` is for custom event types; a {kind} trigger's source is its "
                             f"{needs}")
        return self

    @property
    def cloudevent_type(self) -> str:
        """The CloudEvent type Eventarc delivers for this trigger."""
        return GEN1_EVENT_TYPES.get(self.event_type, self.event_type)

    @property
    def kind(self) -> TriggerKind:
        ce_type = self.cloudevent_type
        if ce_type == PUBSUB_CLOUDEVENT:
            return "pubsub"
        return "storage" if ce_type in STORAGE_CLOUDEVENTS else "custom"
