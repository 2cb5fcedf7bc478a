"""The Cloud Functions API, locally: what cf2run reads of a function fleet, over gRPC.

Serves, for the official `google.cloud.functions_v1` / `functions_v2` clients:

- ``google.cloud.functions.v1.CloudFunctionsService``: ListFunctions, GetFunction,
  GenerateDownloadUrl, GetIamPolicy, CallFunction (1st-gen functions, in gen1's own shape);
- ``google.cloud.functions.v2.FunctionService``: ListFunctions (1st-gen functions in the v2 shape,
  environment GEN_1, and 2nd-gen ones, GEN_2; ``locations/-`` lists every region), GetFunction.

Create, Update, Delete and the upload URL are not served: cf2run never changes a function, and
the functions come from a seed directory (`seed`, cloudfunctions/seed.py). Behind the same access
token check (frontend/grpcauth.py) and fault and field-behaviour layer (frontend/grpcapi.py) as
Cloud Build and Cloud Run. Google's answers:

- a missing function: NOT_FOUND "Function F in region R in project P does not exist"
  (mobizt/FirebaseClient#287; the v2 API's wording is taken to be the same, unverified);
- the `functions_denied` setting (a caller without roles/cloudfunctions.viewer): PERMISSION_DENIED
  "Permission 'cloudfunctions.functions.list' denied on 'projects/P/locations/-/functions'"
  (dart-lang/site-www#4269), and for one function "Permission 'cloudfunctions.functions.get'
  denied on resource 'NAME' (or resource may not exist)." (googleapis/repo-automation-bots#1553);
- the `functions_api_disabled` setting: PERMISSION_DENIED "Cloud Functions API has not been used
  in project NUMBER before or it is disabled. Enable it by visiting ..." with ErrorInfo reason
  SERVICE_DISABLED and a Help link (FirebaseExtended/action-hosting-deploy#203);
- a project without functions lists nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.api_core import exceptions as gexc
from google.cloud import functions_v1, functions_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import json_format
from google.rpc import error_details_pb2

from cf2run.localcloud.cloudbuild.steps import StorageAccess
from cf2run.localcloud.cloudfunctions.gen1 import Gen1Functions, NotServing
from cf2run.localcloud.cloudfunctions.seed import Seed, SeedError, read_seeds
from cf2run.localcloud.cloudfunctions.shapes import (
    activate_gen1,
    activate_gen2,
    archive_location,
    project_number,
    sources_bucket,
    split_name,
    v2_of_gen1,
)
from cf2run.localcloud.cloudfunctions.store import FunctionStore, Record
from cf2run.localcloud.cloudrun.state import page
from cf2run.localcloud.frontend.grpcapi import Method, RpcError, invalid, not_found, service_handler
from cf2run.localcloud.iam.metadata import TokenAuthority
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings
from cf2run.localcloud.storage.emulator import signed_url

V1 = "google.cloud.functions.v1.CloudFunctionsService"
V2 = "google.cloud.functions.v2.FunctionService"
API = "cloudfunctions.googleapis.com"
_LOCATION_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)$")
_ENVIRONMENT_FILTER = re.compile(r'^\s*environment\s*=\s*"?(GEN_1|GEN_2)"?\s*$')


class CloudFunctionsService:
    """The API over a `FunctionStore`, the sources in Cloud Storage (`storage_backend`: the
    emulator itself, as Google's service agents reach it; `storage_url`: the front end, where
    download URLs point) and the running 1st-gen functions (`gen1`)."""

    def __init__(self, store: FunctionStore, settings: LocalCloudSettings, faults: FaultInjector,
                 tokens: TokenAuthority, storage_backend: str, storage_url: str, gen1: Gen1Functions) -> None:
        self.store = store
        self.settings = settings
        self.faults = faults
        self.tokens = tokens
        self.storage = StorageAccess(storage_backend, "local-project")
        self.storage_url = storage_url
        self.gen1 = gen1

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        v1: dict[str, Method] = {
            "ListFunctions": (self.list_v1, functions_v1.ListFunctionsRequest,
                              functions_v1.ListFunctionsResponse),
            "GetFunction": (self.get_v1, functions_v1.GetFunctionRequest, functions_v1.CloudFunction),
            "GenerateDownloadUrl": (self.download_url, functions_v1.GenerateDownloadUrlRequest,
                                    functions_v1.GenerateDownloadUrlResponse),
            "GetIamPolicy": (self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy),
            "CallFunction": (self.call, functions_v1.CallFunctionRequest, functions_v1.CallFunctionResponse),
        }
        v2: dict[str, Method] = {
            "ListFunctions": (self.list_v2, functions_v2.ListFunctionsRequest,
                              functions_v2.ListFunctionsResponse),
            "GetFunction": (self.get_v2, functions_v2.GetFunctionRequest, functions_v2.Function),
        }
        return [service_handler(V1, v1, self.faults), service_handler(V2, v2, self.faults)]

    # -- seeding ---------------------------------------------------------------------------------

    def seed(self, directory: Path) -> list[str]:
        """Take the functions of a seed directory (SeedError before anything changes when it is
        bad); an unchanged one stays as it is. Returns their names; 1st-gen ones are served."""
        seeds = read_seeds(directory)
        self._check_urls(seeds)
        records = [self._stored(seed) for seed in seeds]
        self.gen1.serve([r for r in records if r.generation == "GEN_1"])
        return [r.name for r in records]

    def restore(self) -> None:
        """After a restart: route the 1st-gen functions again (built ones are not built again); their
        instances start on the first request, those minInstances keeps warm at once."""
        self.gen1.serve([r for r in self.store.all() if r.generation == "GEN_1"], start=False)

    def _check_urls(self, seeds: list[Seed]) -> None:
        """HTTP functions share one front end (``{functions}/ID``), so ids must differ across regions
        and projects."""
        taken = {r.function_id: r.name for r in self.store.all() if "httpsTrigger" in r.function}
        for seed in seeds:
            if "httpsTrigger" not in seed.definition:
                continue
            other = taken.setdefault(seed.function_id, seed.name)
            if other != seed.name:
                raise SeedError(f"{seed.folder}: {seed.name} would answer at the same local URL as {other}",
                                hint="the local cloud serves HTTP functions at {functions}/ID: give them "
                                     "different ids")

    def _stored(self, seed: Seed) -> Record:
        existing = self.store.get(seed.name)
        if existing is not None and existing.digest == seed.digest:
            return existing
        version = existing.version + 1 if existing else 1
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if seed.generation == "GEN_2":
            function = activate_gen2({"url": self.gen1.front.url_of(seed.function_id), **seed.definition},
                                     update_time=now)
            record = Record(seed.name, "GEN_2", function, seed.policy, seed.digest, version)
        else:
            definition, source = dict(seed.definition), None
            if seed.source_zip is not None:
                project, region, function_id = split_name(seed.name)
                folder = f"{function_id}-{uuid.uuid4()}/version-{version}"
                source = archive_location(definition) or (sources_bucket(project, region),
                                                          f"{folder}/function-source.zip")
                self.storage.ensure_bucket(source[0])
                self.storage.client.bucket(source[0]).blob(source[1]).upload_from_string(
                    seed.source_zip, content_type="application/zip")
                if "sourceArchiveUrl" not in definition:
                    # "The signature is stripped from the Function object on read methods" (functions.proto).
                    definition["sourceUploadUrl"] = f"{self.storage_url}/{source[0]}/{source[1]}"
            url = self.gen1.front.url_of(seed.function_id) if "httpsTrigger" in definition else None
            function = activate_gen1(definition, version=version, build_id=str(uuid.uuid4()),
                                     update_time=now, url=url)
            record = Record(seed.name, "GEN_1", function, seed.policy, seed.digest, version, source)
        self.store.put(record)
        return record

    def source_of(self, record: Record) -> bytes | None:
        """A function's zip, from Cloud Storage (None when it has none)."""
        if record.source is None:
            return None
        try:
            blob = self.storage.client.bucket(record.source[0]).blob(record.source[1])
            return bytes(blob.download_as_bytes())
        except gexc.NotFound:
            return None

    # -- v1 --------------------------------------------------------------------------------------

    def list_v1(self, request: functions_v1.ListFunctionsRequest) -> functions_v1.ListFunctionsResponse:
        records = self._listed(request.parent, gens=("GEN_1",))
        found, token = page(records, request.page_size, request.page_token, "ListFunctionsRequest")
        return functions_v1.ListFunctionsResponse(functions=[_v1(r) for r in found], next_page_token=token)

    def get_v1(self, request: functions_v1.GetFunctionRequest) -> functions_v1.CloudFunction:
        return _v1(self._found(request.name, "get", gens=("GEN_1",)))

    def download_url(self, request: functions_v1.GenerateDownloadUrlRequest
                     ) -> functions_v1.GenerateDownloadUrlResponse:
        record = self._found(request.name, "sourceCodeGet", gens=("GEN_1",))
        if record.source is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Function {record.function_id} has no source archive to download "
                           "(its source is in a Cloud Source Repositories repository)")
        signer = f"service-{project_number(record.project)}@gcf-admin-robot.iam.gserviceaccount.com"
        return functions_v1.GenerateDownloadUrlResponse(download_url=signed_url(
            self.storage_url, self.tokens, record.source[0], record.source[1], signer))

    def get_iam_policy(self, request: iam_policy_pb2.GetIamPolicyRequest) -> policy_pb2.Policy:
        """The function's policy ("Returns an empty policy if the function exists and does not have a
        policy set", functions.proto)."""
        record = self._found(request.resource, "getIamPolicy", gens=("GEN_1",))
        policy = json_format.ParseDict(record.policy, policy_pb2.Policy())
        policy.etag = policy.etag or record.digest[:12].encode()
        return policy

    def call(self, request: functions_v1.CallFunctionRequest) -> functions_v1.CallFunctionResponse:
        record = self._found(request.name, "call", gens=("GEN_1",))
        timeout_s = float(record.function.get("timeout", "60s").rstrip("s"))
        try:
            execution, result, error = self.gen1.call(record, request.data, timeout_s)
        except NotServing as reason:
            message = f"Function {record.function_id} is not serving in the local cloud: {reason}"
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, message) from None
        return functions_v1.CallFunctionResponse(execution_id=execution, result=result, error=error)

    # -- v2 --------------------------------------------------------------------------------------

    def list_v2(self, request: functions_v2.ListFunctionsRequest) -> functions_v2.ListFunctionsResponse:
        gens: tuple[str, ...] = ("GEN_1", "GEN_2")
        if request.filter:
            match = _ENVIRONMENT_FILTER.match(request.filter)
            if match is None:
                raise invalid(f"The local Cloud Functions filters only on environment: {request.filter!r}")
            gens = (match[1],)
        records = self._listed(request.parent, gens=gens)
        found, token = page(records, request.page_size, request.page_token, "ListFunctionsRequest")
        return functions_v2.ListFunctionsResponse(functions=[self._v2(r) for r in found],
                                                  next_page_token=token)

    def get_v2(self, request: functions_v2.GetFunctionRequest) -> functions_v2.Function:
        return self._v2(self._found(request.name, "get", gens=("GEN_1", "GEN_2")))

    def _v2(self, record: Record) -> functions_v2.Function:
        gen2 = record.generation == "GEN_2"
        shaped = record.function if gen2 else v2_of_gen1(record.function, record.source)
        return functions_v2.Function.from_json(json.dumps(shaped), ignore_unknown_fields=True)

    # -- access and lookup -----------------------------------------------------------------------

    def _listed(self, parent: str, gens: tuple[str, ...]) -> list[Record]:
        match = _LOCATION_RE.match(parent)
        if match is None:
            raise invalid(f"Invalid parent {parent!r}: expected projects/PROJECT/locations/LOCATION "
                          "(LOCATION - for every location)")
        project, region = match[1], match[2]
        self._check_access(project, "list", f"'{parent}/functions'")
        return [r for r in self.store.in_location(project, region) if r.generation in gens]

    def _found(self, name: str, verb: str, gens: tuple[str, ...]) -> Record:
        try:
            project, region, function_id = split_name(name)
        except ValueError as error:
            raise invalid(f"Invalid function name: {error}") from None
        self._check_access(project, verb, f"resource '{name}' (or resource may not exist).")
        record = self.store.get(name)
        if record is None or record.generation not in gens:
            raise not_found(f"Function {function_id} in region {region} in project {project} does not exist")
        return record

    def _check_access(self, project: str, verb: str, on: str) -> None:
        if self.settings.functions_api_disabled:
            raise api_disabled(project)
        if self.settings.functions_denied:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                           f"Permission 'cloudfunctions.functions.{verb}' denied on {on}")


def api_disabled(project: str) -> RpcError:
    """Google's answer when the Cloud Functions API is not enabled in `project`."""
    number = project_number(project)
    url = f"https://console.developers.google.com/apis/api/{API}/overview?project={number}"
    message = (f"Cloud Functions API has not been used in project {number} before or it is disabled. "
               f"Enable it by visiting {url} then retry. If you enabled this API recently, wait a few "
               "minutes for the action to propagate to our systems and retry.")
    info = error_details_pb2.ErrorInfo(reason="SERVICE_DISABLED", domain="googleapis.com", metadata={
        "service": API, "consumer": f"projects/{number}", "activationUrl": url})
    help_link = error_details_pb2.Help(links=[error_details_pb2.Help.Link(
        description="Google developers console API activation", url=url)])
    return RpcError(grpc.StatusCode.PERMISSION_DENIED, message, (help_link, info))


def _v1(record: Record) -> functions_v1.CloudFunction:
    return functions_v1.CloudFunction.from_json(json.dumps(record.function), ignore_unknown_fields=True)

