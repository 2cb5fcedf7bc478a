"""The nested parts of a function's manifest entry: Secret Manager references, triggers, the
smoke request and the parity check against the old function.

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
import typing
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from cf2run.forms import form_schema

SECRET_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
#: 'latest', a version number, or an alias (Secret Manager alias rules).
SECRET_VERSION_RE = re.compile(r"^(?:latest|[1-9][0-9]*|[A-Za-z][A-Za-z0-9_-]{0,62})$")
PROJECT_ID_RE = re.compile(r"^(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[0-9]{1,20}$")
#: gen1 SecretVolume.mount_path: "Restricted mount paths: /cloudsql, /dev/log, /pod, /proc, /var/log".
RESTRICTED_MOUNT_PATHS = ("/cloudsql", "/dev/log", "/pod", "/proc", "/var/log")


class StrictModel(BaseModel):
    """Unknown fields are errors; fields may be given by name or alias; the JSON schema is the
    Prefect UI's form (cf2run/forms.py)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              json_schema_extra=form_schema)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML reads `true` as a boolean, and pydantic would take it as the number 1
        (`timeout_s: true` a one-second timeout): a number field refuses it."""
        if isinstance(value, bool) and info.field_name and _is_number(cls.model_fields[info.field_name]):
            raise ValueError(f"{info.field_name} takes a number, and YAML reads "
                             f"{str(value).lower()} as a boolean; write the number")
        return value


def _is_number(field: FieldInfo) -> bool:
    """Whether the field takes an int or a float (optionally None), and no boolean."""
    kinds = set(typing.get_args(field.annotation)) or {field.annotation}
    kinds.discard(type(None))
    return bool(kinds) and kinds <= {int, float}


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


# -- requests ------------------------------------------------------------------------------------

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class SmokeRequest(StrictModel):
    """The HTTP request that proves a migrated function works, and what it must answer."""

    method: HttpMethod = Field(default="GET", description="HTTP method of the smoke request.")
    path: str = Field(default="/", description="Path (and query string) on the service URL; starts with '/'.")
    body: str | None = Field(
        default=None, description="Raw request body (text). Mutually exclusive with `json`.")
    json_body: Any | None = Field(
        default=None, alias="json",
        description="Request body sent as JSON (Content-Type: application/json). "
                    "Mutually exclusive with `body`.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers, e.g. CloudEvents binary-mode `ce-*` headers.")
    expect_status: int = Field(
        default=200, ge=100, le=599, description="HTTP status the service must answer.")
    expect_body: str | None = Field(
        default=None, description="Text the response body must contain (substring); unset = any body.")
    deadline_s: float = Field(
        default=60, gt=0, le=3600,
        description="Seconds to keep retrying connection errors, 429 and 5xx (cold starts) before failing.")
    accept_unreachable: StrictBool = Field(
        default=False,
        description="When the service's ingress (internal-only, internal-and-gclb) keeps the worker "
                    "out (it runs outside the service's VPC network), skip the smoke test and report "
                    "it as unreachable instead of failing; nothing is then tested before promote.")

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"path {path!r} must start with '/', e.g. '/{path}'")
        return path

    @model_validator(mode="after")
    def _one_body(self) -> SmokeRequest:
        if self.body is not None and self.json_body is not None:
            raise ValueError("smoke request sets both `body` and `json`; keep only one of them")
        return self



# -- parity with the old function -----------------------------------------------------------

#: gen1 function names: a letter, then letters, digits, '_' and '-', at most 63 characters.
OLD_FUNCTION_RE = re.compile(r"^projects/[^/\s]+/locations/[a-z]+-[a-z]+[0-9]+/functions/"
                             r"[A-Za-z][A-Za-z0-9_-]{0,62}$")
#: An HTTP header name (RFC 9110 token).
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: A JSON path: keys (or list indexes) joined by dots, e.g. ``order.items.0.id``.
JSON_FIELD_RE = re.compile(r"^[^.\s]+(?:\.[^.\s]+)*$")
Compare = Literal["auto", "exact", "json", "status"]


class ParityCheck(StrictModel):
    """How the new service proves it answers like the old function, before it is promoted."""

    old_url: str | None = Field(
        default=None,
        description="URL of the old function (gen1: https://REGION-PROJECT.cloudfunctions.net/NAME). "
                    "The smoke request (or the trigger's event) and every parity request go to it and "
                    "to the new revision, each with an ID token whose audience is its URL.")
    old_function: str | None = Field(
        default=None,
        description="Event functions: the old function as projects/P/locations/R/functions/NAME. It "
                    "gets the smoke event's data through the Cloud Functions API's CallFunction, the "
                    "new revision the event itself; parity = each accepted it. Set old_url or this, "
                    "not both.")
    requests: list[SmokeRequest] = Field(
        default_factory=list,
        description="More requests sent to both, beside the smoke request (method, path, body, "
                    "headers, deadline_s as in smoke; expect_* are not checked: the old function's "
                    "answer is the expectation).")
    compare: Compare = Field(
        default="auto",
        description="What must be equal besides the status: 'auto' (JSON-equal when both bodies are "
                    "JSON, else byte for byte), 'exact' (byte for byte), 'json' (JSON-equal) or "
                    "'status' (the status only).")
    json_fields: list[str] = Field(
        default_factory=list,
        description="With compare auto or json: compare only these parts of the JSON bodies, as "
                    "dotted paths (order.id, items.0.sku); empty = the whole body.")
    headers: list[str] = Field(
        default_factory=list,
        description="Response headers whose values must be equal too, e.g. content-type.")
    on_difference: Literal["fail", "warn"] = Field(
        default="fail",
        description="'fail': a difference fails the migration at step parity and the candidate is "
                    "discarded, as for a failed smoke test; 'warn': it is promoted and the report "
                    "shows the difference.")

    @field_validator("old_url")
    @classmethod
    def _old_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"old_url {url!r} is not an http(s) URL; give the old function's URL, "
                             "e.g. https://us-central1-PROJECT.cloudfunctions.net/NAME")
        if parts.query or parts.fragment:
            raise ValueError(f"old_url {url!r} has a query or fragment; give the function's URL only "
                             "and put paths and queries in smoke.path or parity.requests[].path")
        return url

    @field_validator("old_function")
    @classmethod
    def _old_function(cls, name: str | None) -> str | None:
        if name is not None and not OLD_FUNCTION_RE.match(name):
            raise ValueError(f"old_function {name!r} is not a Cloud Functions resource name; write it "
                             "as projects/PROJECT/locations/REGION/functions/NAME")
        return name

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: list[str]) -> list[str]:
        for name in headers:
            if not HEADER_NAME_RE.match(name):
                raise ValueError(f"headers: {name!r} is not an HTTP header name (e.g. content-type)")
        return [name.lower() for name in headers]

    @field_validator("json_fields")
    @classmethod
    def _json_fields(cls, fields: list[str]) -> list[str]:
        for path in fields:
            if not JSON_FIELD_RE.match(path):
                raise ValueError(f"json_fields: {path!r} is not a dotted path; write keys (or list "
                                 "indexes) joined by '.', e.g. order.id or items.0.sku")
        return fields

    @model_validator(mode="after")
    def _settings_together(self) -> ParityCheck:
        if self.old_url and self.old_function:
            raise ValueError("parity sets both old_url and old_function; set old_url for an HTTP "
                             "function (or to send the event over HTTP), old_function for an event "
                             "function called through CallFunction")
        if self.json_fields and self.compare not in ("auto", "json"):
            raise ValueError(f"json_fields compares parts of JSON bodies, but compare is "
                             f"{self.compare!r}; set compare: json (or auto), or remove json_fields")
        if self.old_function:
            given = [name for name in ("requests", "json_fields", "headers") if getattr(self, name)]
            if given:
                raise ValueError(f"parity.{given[0]} needs HTTP answers, but old_function is called "
                                 "through CallFunction, which only says whether the event was "
                                 f"accepted; remove {given[0]}, or give old_url instead")
        return self

    @property
    def enabled(self) -> bool:
        """Whether there is anything to compare against (neither URL nor function: no check)."""
        return bool(self.old_url or self.old_function)


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
