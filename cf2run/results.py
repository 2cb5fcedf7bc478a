"""What each pipeline step returns: small Pydantic models.

They are what Prefect persists (and caches across flow runs), what the next step takes,
and what the report shows. No clients, no secrets.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cf2run.gcp.oci import ImageRef


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceArchive(_Result):
    """The function's source as a deterministic .tgz in Cloud Storage (package step)."""

    uri: str = Field(description="gs://BUCKET/OBJECT of the archive.")
    bucket: str = Field(description="Cloud Storage bucket holding the archive.")
    object_name: str = Field(description="Object name inside the bucket.")
    generation: int = Field(description="Object generation (pins the exact bytes Cloud Build reads).")
    sha256: str = Field(description="Hex sha256 of the archive bytes.")
    files: int = Field(description="Number of files (and symlinks) in the archive.")
    bytes: int = Field(description="Size of the archive in bytes.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Files in it that look like secrets (cf2run/manifest/source_secrets.py).")


class BuiltImage(_Result):
    """The image the pack build produced in Artifact Registry (build step)."""

    image: str = Field(description="Image reference by tag: REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG.")
    digest: str = Field(description="Manifest digest, sha256:...")
    build_id: str | None = Field(
        default=None, description="Cloud Build id; None when an existing image was reused.")
    log_url: str | None = Field(default=None, description="Cloud Build log URL, when a build ran.")
    cached: bool = Field(description="True when the tag already existed and no build ran.")

    @property
    def by_digest(self) -> str:
        """``host/repository@sha256:...``: the immutable reference Cloud Run deploys."""
        return f"{ImageRef.parse(self.image).name}@{self.digest}"


#: Image label the local cloud's builder sets when the image runs another language version than
#: the build asked for (it builds and runs with the host's Python/Node); Google's buildpacks
#: install the version asked for (GOOGLE_RUNTIME_VERSION), so their images never carry it.
LOCAL_RUNTIME_NOTE_LABEL = "cf2run.runtime.note"


class VerifiedImage(_Result):
    """What the registry says about the built image (verify step)."""

    image: str = Field(description="Image reference by digest.")
    digest: str = Field(description="Manifest digest, sha256:...")
    platform: str = Field(description="os/architecture from the image config, e.g. linux/amd64.")
    web_process: str = Field(description="Command of the buildpack 'web' process.")
    runtime_note: str | None = Field(
        default=None, description="Local cloud only: the language version the image really has when "
                                  "it is not the one the function's runtime names (e.g. 'python "
                                  "3.11.9 (the host's), not 3.12 (GOOGLE_RUNTIME_VERSION)').")


class Deployment(_Result):
    """The Cloud Run service with a revision running the image (deploy step).

    On a service that already served, the new revision is a *candidate*: it gets no traffic,
    only a tag with its own URL (`candidate_url`), and the revisions in `previous` keep all
    the traffic until the promote step moves it.
    """

    service: str = Field(description="Full resource name: projects/P/locations/R/services/S.")
    revision: str = Field(description="Revision running the image (short name).")
    url: str = Field(description="Service URL.")
    digest: str = Field(description="Image digest the revision runs.")
    changed: bool = Field(description="False when the service already served this digest and settings.")
    created: bool = Field(default=False, description="True when this deploy created the service.")
    tag: str | None = Field(default=None, description="Traffic tag of a candidate revision.")
    candidate_url: str | None = Field(
        default=None, description="URL of the candidate's tag; None when the revision got the traffic "
                                  "right away (a new service) or nothing changed.")
    previous: list[str] = Field(
        default_factory=list, description="Revisions that carried the traffic before this deploy.")

    @property
    def smoke_url(self) -> str:
        """Where the smoke test goes: the candidate's tag URL, else the service URL."""
        return self.candidate_url or self.url


class TrafficChange(_Result):
    """Where a service's traffic went (promote, discard and rollback steps)."""

    service: str = Field(description="Full resource name: projects/P/locations/R/services/S.")
    url: str = Field(description="Service URL.")
    serving: list[str] = Field(description="Revisions that carry traffic now.")
    previous: list[str] = Field(default_factory=list, description="Revisions that carried it before.")
    changed: bool = Field(description="False when the traffic was already where it had to be.")
    uid: str | None = Field(default=None, description="The service's uid (Cloud Run gives a service "
                                                      "that is deleted and created again a new one).")
    public: bool | None = Field(default=None, description="Whether allUsers may invoke the service "
                                                          "(set by promote).")
    invokers: list[str] | None = Field(default=None, description="The other members that may invoke "
                                                                  "it (set by promote).")


class SmokeResult(_Result):
    """How the service answered the smoke request (smoke step)."""

    status: int = Field(description="HTTP status of the final answer.")
    latency_s: float = Field(description="Seconds the final request took.")
    excerpt: str = Field(description="Beginning of the response body.")
    attempts: int = Field(description="Requests made until the answer (cold starts retry).")
    unreachable: bool = Field(
        default=False, description="True when the service's ingress kept this worker out and the "
                                   "manifest accepts that (smoke.accept_unreachable): nothing was tested.")


class RequestParity(_Result):
    """One request sent to the old function and to the new revision, and whether they matched."""

    request: str = Field(description="What was sent, e.g. 'GET /orders' or 'event "
                                     "google.cloud.pubsub.topic.v1.messagePublished'.")
    old: str = Field(description="What the old function answered: 'HTTP 200', 'accepted', 'error ...'.")
    new: str = Field(description="What the new revision answered.")
    diff: list[str] = Field(
        default_factory=list, description="Each difference in one line (status a vs b, the first "
                                          "differing line or JSON path with both values, header a vs "
                                          "b); empty = the same.")

    @property
    def same(self) -> bool:
        return not self.diff


#: MigrationResult.parity's values.
ParityVerdict = Literal["same", "differs", "differs (warned)"]


class ParityResult(_Result):
    """The old function and the new revision, asked the same requests (parity step)."""

    old: str = Field(description="The old function: its URL, or its resource name (CallFunction).")
    compare: str = Field(description="How bodies were compared (auto, exact, json, status, accepted).")
    requests: list[RequestParity] = Field(description="One per request, the smoke request first.")
    warned: bool = Field(
        default=False, description="True when it differs and the manifest makes that a warning "
                                   "(parity.on_difference: warn).")

    @property
    def same(self) -> bool:
        return all(request.same for request in self.requests)

    @property
    def verdict(self) -> ParityVerdict:
        return "same" if self.same else "differs (warned)" if self.warned else "differs"

    @property
    def diffs(self) -> list[str]:
        """Every difference, each prefixed with its request: ``GET /: status: old 200, new 500``."""
        return [f"{request.request}: {line}" for request in self.requests for line in request.diff]


class MigrationResult(_Result):
    """One function's migration, as the flow returns it and the report shows it."""

    function: str = Field(description="Function (service) name.")
    status: Literal["succeeded", "failed"] = Field(description="Outcome of the migration.")
    failed_step: str | None = Field(default=None, description="Step that failed (package, build, ...).")
    message: str | None = Field(default=None, description="What went wrong and what to do.")
    url: str | None = Field(default=None, description="Service URL, when deployed.")
    digest: str | None = Field(default=None, description="Image digest, when built.")
    revision: str | None = Field(default=None, description="Revision deployed from the image.")
    serving: list[str] = Field(
        default_factory=list, description="Revisions carrying the service's traffic at the end.")
    build_cached: bool | None = Field(default=None, description="True when the build was skipped.")
    build_log_url: str | None = Field(default=None, description="Cloud Build log, when a build ran.")
    runtime_note: str | None = Field(
        default=None, description="Local cloud only: the image has another language version than "
                                  "the runtime names (VerifiedImage.runtime_note).")
    eventarc: str | None = Field(
        default=None, description="Event functions: the gcloud command that creates the Eventarc "
                                  "trigger routing their events to the service.")
    parity: ParityVerdict | None = Field(
        default=None, description="Parity with the old function: 'same', 'differs' (not promoted) or "
                                  "'differs (warned)' (promoted: parity.on_difference: warn); None "
                                  "without a parity check.")
    parity_diffs: list[str] = Field(
        default_factory=list, description="The differences parity found, one per line.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per step.")
    unchanged: bool = Field(
        default=False, description="True when nothing was deployed and nothing was tested again: the "
                                   "revision that serves all the traffic passed its checks when it was "
                                   "promoted (`recheck` tests it again).")
    warnings: list[str] = Field(
        default_factory=list, description="What the user should look at although it did not fail "
                                          "the migration (files in the source that look like secrets).")

    @property
    def build_note(self) -> str:
        """The report's build cell: built, cached or - (no build), and the local cloud's runtime
        note (``built; local cloud: python 3.11.9 (the host's), not 3.12 (...)``)."""
        done = {None: "-", True: "cached", False: "built"}[self.build_cached]
        return f"{done}; local cloud: {self.runtime_note}" if self.runtime_note else done
