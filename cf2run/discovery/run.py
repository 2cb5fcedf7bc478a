"""`cf2run discover`: list, read, download, map, then write the manifest(s) and the record.

Everything is read and checked first (sources extracted into a temporary directory); only then
is the output directory touched, so a refusal (permission, API, an edited manifest) leaves it
as it was. Functions of several regions: one manifest per region (``DIR/REGION/manifest.yaml``
with its sources in ``DIR/REGION/functions/``), since a manifest has one target region and a
connector or trigger is regional; functions of one region: ``DIR/manifest.yaml`` and
``DIR/functions/ID/``.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.cloud import functions_v1, functions_v2
from google.cloud.storage import Client as StorageClient
from google.iam.v1 import policy_pb2
from pydantic import ValidationError

from cf2run.discovery import state as records
from cf2run.discovery.archive import Limits, extract_zip
from cf2run.discovery.download import download_source
from cf2run.discovery.entry import Entry, check_migratable, entry_for
from cf2run.discovery.inventory import DiscoveryError, Listed, list_functions, read_function
from cf2run.discovery.manifest_writer import render
from cf2run.discovery.names import service_names
from cf2run.discovery.settings import CannotMigrate, NotCarried
from cf2run.discovery.signature import declared_signature
from cf2run.errors import SourceError
from cf2run.manifest.spec import REGION_RE, FunctionSpec

MANIFEST = "manifest.yaml"
FUNCTIONS_DIR = "functions"
ALREADY_CLOUD_RUN = "2nd gen: already a Cloud Run service, nothing to migrate"


@dataclass(frozen=True)
class Request:
    project: str
    out: Path
    regions: Sequence[str] = ()
    name_glob: str | None = None
    kind: str = "local"
    localcloud_dir: Path | None = None
    force: bool = False
    limits: Limits = field(default_factory=Limits)

    def in_scope(self, name: str) -> bool:
        """Whether this run looks at function `name` (its regions and --filter)."""
        region, function_id = name.split("/")[3], name.rsplit("/", 1)[-1]
        return (not self.regions or region in self.regions) and (
            self.name_glob is None or fnmatch.fnmatchcase(function_id, self.name_glob))


@dataclass(frozen=True)
class Clients:
    functions: functions_v1.CloudFunctionsServiceClient
    functions_v2: functions_v2.FunctionServiceClient
    storage: StorageClient


@dataclass(frozen=True)
class Row:
    """One function's line of the report."""

    function: str
    region: str
    outcome: str  # discovered | skipped | refused
    service: str = ""
    detail: str = ""


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)
    not_carried: dict[str, list[NotCarried]] = field(default_factory=dict)  # service -> items
    changes: records.Changes | None = None
    kept_sources: list[Path] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Candidate:
    listed: Listed
    function: functions_v1.CloudFunction
    policy: policy_pb2.Policy


@dataclass(frozen=True)
class _Staged:
    candidate: _Candidate
    entry: Entry
    folder: Path  # the extracted source, in the staging directory

    @property
    def region(self) -> str:
        return self.candidate.listed.region

    @property
    def function_id(self) -> str:
        return self.candidate.listed.function_id


def discover(clients: Clients, request: Request) -> Result:
    """Discover the project's functions into `request.out`; DiscoveryError (nothing written)
    when it cannot."""
    bad = [region for region in request.regions if not REGION_RE.match(region)]
    if bad:
        raise DiscoveryError(f"--region {bad[0]!r} is not a Google Cloud region",
                             hint="write it like us-central1")
    out = request.out
    previous = records.load(out)
    recorded = [out / path for path in (previous.manifests if previous else {})]
    _refuse_edited(out, previous, [out / MANIFEST, *recorded], request.force)
    listing = list_functions(clients.functions_v2, request.project, request.regions, request.name_glob)
    result = Result(unreachable=listing.unreachable)
    seen: dict[str, records.Seen] = {}
    candidates = _read(clients, listing.functions, result, seen)
    with tempfile.TemporaryDirectory(prefix="cf2run-discover-") as staging:
        staged = _stage(clients, request, candidates, Path(staging), result)
        if not staged:
            return result
        regions = sorted({item.region for item in staged})
        layout = {region: out / region if len(regions) > 1 else out for region in regions}
        _refuse_edited(out, previous, [layout[region] / MANIFEST for region in regions], request.force)
        keep = _sources_to_keep(out, previous, staged, layout, request.force)
        _write(request, staged, layout, keep, result)
    for item in staged:
        folder = layout[item.region] / FUNCTIONS_DIR / item.function_id
        seen[item.entry.function] = records.Seen(
            "GEN_1", item.candidate.listed.update_time, item.candidate.function.version_id,
            "discovered", folder.relative_to(out).as_posix(), records.tree_digest(folder))
    if previous is not None:
        result.changes = records.changes(previous, seen, request.in_scope)
    manifests = {path.relative_to(out).as_posix(): records.file_digest(path) for path in result.manifests}
    records.save(out, records.State(request.project, manifests, seen))
    return result


def _refuse_edited(out: Path, previous: records.State | None, paths: list[Path], force: bool) -> None:
    edited = records.edited_manifests(out, previous, paths)
    if edited and not force:
        raise DiscoveryError(f"{edited[0]} was changed since cf2run discover wrote it (or was not "
                             "written by it); nothing was written",
                             hint="keep your edits by giving another --out, or overwrite them "
                                  "with --force")


def _read(clients: Clients, listed: list[Listed], result: Result,
          seen: dict[str, records.Seen]) -> list[_Candidate]:
    """The 1st-gen functions cf2run can migrate, read with v1; rows for the others."""
    candidates = []
    for item in listed:
        if item.generation != "GEN_1":
            detail = ALREADY_CLOUD_RUN if item.generation == "GEN_2" else \
                f"environment {item.generation}: not a 1st-gen function"
            result.rows.append(Row(item.function_id, item.region, "skipped", detail=detail))
            seen[item.name] = records.Seen(item.generation, item.update_time, outcome="skipped")
            continue
        function, policy = read_function(clients.functions, item.name)
        seen[item.name] = records.Seen("GEN_1", item.update_time, function.version_id, "refused")
        try:
            check_migratable(function)
        except CannotMigrate as verdict:
            result.rows.append(Row(item.function_id, item.region, "refused",
                                   detail=f"{verdict.reason}; {verdict.advice}"))
            continue
        candidates.append(_Candidate(item, function, policy))
    return candidates


def _stage(clients: Clients, request: Request, candidates: list[_Candidate], staging: Path,
           result: Result) -> list[_Staged]:
    """Each candidate's source downloaded, checked and extracted under `staging`, and its entry."""
    names: dict[tuple[str, str], str] = {}
    for region in {c.listed.region for c in candidates}:
        ids = [c.listed.function_id for c in candidates if c.listed.region == region]
        names.update({(region, fid): name for fid, name in service_names(ids).items()})
    staged = []
    for candidate in candidates:
        listed, function = candidate.listed, candidate.function
        name = names[(listed.region, listed.function_id)]
        base = staging / listed.region
        folder = base / FUNCTIONS_DIR / listed.function_id
        archive = staging / f"{listed.region}-{listed.function_id}.zip"
        try:
            origin = download_source(clients.functions, clients.storage, function, archive, request.limits)
            extract_zip(archive, folder, request.limits)
        except SourceError as error:
            result.rows.append(Row(listed.function_id, listed.region, "refused", name,
                                   f"source: {error}"))
            continue
        declared = declared_signature(folder, function.runtime, function.entry_point or listed.function_id)
        entry = entry_for(function, candidate.policy, name=name,
                          source=f"{FUNCTIONS_DIR}/{listed.function_id}", source_origin=origin,
                          declared=declared)
        problem = _invalid(entry, base)
        if problem:
            result.rows.append(Row(listed.function_id, listed.region, "refused", name,
                                   f"{problem}; fix it on the function or add it to the manifest by hand"))
            continue
        staged.append(_Staged(candidate, entry, folder))
        result.rows.append(Row(listed.function_id, listed.region, "discovered", name, _summary(entry)))
        if entry.not_carried:
            result.not_carried[name] = entry.not_carried
    return staged


def _invalid(entry: Entry, base: Path) -> str | None:
    """What cf2run's manifest rules refuse in `entry` (fields it does not know yet are left out)."""
    data = {item.field: item.value for item in entry.settings if item.field in FunctionSpec.model_fields}
    try:
        FunctionSpec.model_validate(data, context={"base_dir": base})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {str(first['msg']).removeprefix('Value error, ')}"
    return None


def _summary(entry: Entry) -> str:
    parts = []
    renamed = next(item.origin for item in entry.settings if item.field == "name")
    if "renamed" in renamed:
        parts.append(renamed)
    if entry.not_carried:
        parts.append(f"{len(entry.not_carried)} setting(s) not carried (see below)")
    return "; ".join(parts)


def _sources_to_keep(out: Path, previous: records.State | None, staged: list[_Staged],
                     layout: dict[str, Path], force: bool) -> set[Path]:
    """Source folders the user changed since discover extracted them: kept when the function
    did not change either; DiscoveryError when it did (unless `force`, which replaces them)."""
    keep = set()
    for item in staged:
        folder = layout[item.region] / FUNCTIONS_DIR / item.function_id
        if not folder.exists():
            continue
        before = previous.functions.get(item.entry.function) if previous else None
        if before is not None and before.source_sha256 == records.tree_digest(folder):
            continue
        unchanged = before is not None and (before.version_id, before.update_time) == (
            item.candidate.function.version_id, item.candidate.listed.update_time)
        if unchanged:
            keep.add(folder)
        elif not force:
            raise DiscoveryError(f"{folder} was changed since cf2run discover extracted it, and the "
                                 "function was redeployed since; nothing was written",
                                 hint="keep your edits by giving another --out, or replace them "
                                      "with the deployed source with --force")
    return keep


def _write(request: Request, staged: list[_Staged], layout: dict[str, Path], keep: set[Path],
           result: Result) -> None:
    for item in staged:
        folder = layout[item.region] / FUNCTIONS_DIR / item.function_id
        if folder in keep:
            result.kept_sources.append(folder)
            continue
        if folder.exists() or folder.is_symlink():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(item.folder), folder)
    for region, base in layout.items():
        entries = [item.entry for item in staged if item.region == region]
        path = base / MANIFEST
        path.write_text(render(entries, kind=request.kind, project=request.project, region=region,
                               localcloud_dir=request.localcloud_dir), encoding="utf-8")
        result.manifests.append(path)
