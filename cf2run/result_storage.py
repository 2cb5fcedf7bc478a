"""Flow and task results on Cloud Storage, for workers that share nothing but the Prefect server
and the cloud.

    cf2run setup --results-bucket BUCKET [--manifest M | --target local|gcp --project P --region R]

With `fanout="deployments"` each function is a migrate-function run on any worker, and the fleet
reads its `MigrationResult` back from result storage; a rerun finds the build and deploy steps'
cached results there. On one machine `$PREFECT_HOME/storage` serves; across machines this sets up:

1. the bucket, created when missing in the target's project (location: its region) with the
   target's credentials;
2. a prefect-gcp `GcsBucket` block, `gcs-bucket/cf2run-results`, whose `GcpCredentials` are the
   target's: its `credentials_block`, else Application Default Credentials on each worker (gcp:
   the service account a Cloud Run or GKE worker runs as), else the local cloud's own key (local:
   its token URL is the local cloud's, whose Cloud Storage checks the tokens);
3. that block as the Prefect server's default result storage (what `prefect result-storage set`
   does): Prefect 3 takes the storage from the `result_storage` keyword, the
   PREFECT_DEFAULT_RESULT_STORAGE_BLOCK setting, or "a server-side default result storage block"
   (https://docs.prefect.io/v3/advanced/results), so every worker, and the `cf2run` commands, use
   it with nothing set on their machines. The cache records of the build and deploy steps are
   written with their results (their cache policies set no `key_storage`;
   https://docs.prefect.io/v3/advanced/caching: "Storing cache records in a remote object store
   allows you to share cache records across multiple machines"), so a cache key computed on one
   worker resolves on every other;
4. a probe written and read back through the block: credentials that cannot use the bucket fail
   here, not in the middle of a fleet.

On the local target, prefect-gcp builds its Cloud Storage client with no endpoint; a process that
uses the local cloud sends such clients there (`cf2run.gcp.cloud.route_storage_clients`), and
`reach_results` makes a fleet that only reads results do so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from google.api_core import exceptions as api_exceptions
from prefect.client.orchestration import get_client

from cf2run.errors import Cf2RunError, SpecError
from cf2run.gcp.cloud import Cloud
from cf2run.manifest.spec import BUCKET_RE, Target

if TYPE_CHECKING:  # prefect-gcp is imported by setup only, not by every flow that reads results
    from prefect_gcp import GcpCredentials
    from prefect_gcp.cloud_storage import GcsBucket

#: The GcsBucket block the server's default result storage names.
RESULTS_BLOCK = "cf2run-results"
#: The GcpCredentials block saved for it when the target names none.
CREDENTIALS_BLOCK = "cf2run-results-credentials"
#: What `setup` writes and reads back through the block.
PROBE = "cf2run/setup-probe"


def check_bucket_name(bucket: str) -> str:
    """`bucket` without gs://; SpecError naming the option when it is no bucket name, before any
    cloud call (https://cloud.google.com/storage/docs/buckets#naming)."""
    name = bucket.removeprefix("gs://")
    if not BUCKET_RE.match(name) or "google" in name or name.startswith("goog"):
        raise SpecError(f"--results-bucket {bucket!r} is not a Cloud Storage bucket name",
                          hint="use 3 to 63 lowercase letters, digits, '-', '_' and '.', starting and "
                               "ending with a letter or digit, without 'google' or a 'goog' prefix")
    return name


def setup_result_storage(target: Target, bucket: str) -> tuple[list[str], list[str]]:
    """The bucket (created when missing), the block, the server's default: what was done, one line
    each, and what the user should know about it."""
    from prefect_gcp.cloud_storage import GcsBucket

    name = check_bucket_name(bucket)
    cloud = Cloud.for_target(target)
    done = [f"bucket gs://{name} ({'created' if _ensure_bucket(cloud, target, name) else 'exists'})"]
    credentials = _credentials(target)
    block = GcsBucket(bucket=name, gcp_credentials=credentials)
    block_id = block.save(RESULTS_BLOCK, overwrite=True)
    _probe(block)
    with get_client(sync_client=True) as client:
        client.update_server_default_result_storage(UUID(str(block_id)))
    done.append(f"result storage gcs-bucket/{RESULTS_BLOCK} (the server's default; "
                f"credentials: {_described(target)})")
    notes = []
    if target.impersonate_service_account:
        notes.append(f"results are read and written with the base credentials, not as "
                     f"{target.impersonate_service_account} (GcpCredentials cannot impersonate): "
                     f"they need roles/storage.objectUser on gs://{name}")
    return done, notes


def reach_results(target: Target) -> None:
    """Make results the workers wrote readable in this process: on the local target, its Cloud
    Storage clients go to the local cloud (`Cloud.for_target` routes them; LocalCloudNotRunning,
    naming the fix, when it is down). Nothing to do on Google Cloud."""
    if target.kind == "local":
        Cloud.for_target(target)


def _ensure_bucket(cloud: Cloud, target: Target, name: str) -> bool:
    """Whether the bucket had to be created; Cf2RunError naming the role or the fix otherwise."""
    create = (f"gcloud storage buckets create gs://{name} --project={target.project} "
              f"--location={target.region}")  # https://cloud.google.com/storage/docs/creating-buckets
    try:
        if cloud.storage.lookup_bucket(name) is not None:
            return False
        cloud.storage.create_bucket(name, project=target.project, location=target.region)
        return True
    except api_exceptions.Conflict as error:  # created meanwhile, or a name another project holds
        if _readable(cloud, name):
            return False
        raise Cf2RunError(f"bucket gs://{name} belongs to another project: {error.message}",
                          hint="bucket names are global; choose another --results-bucket") from None
    except api_exceptions.Forbidden as error:
        raise Cf2RunError(f"no permission to read or create bucket gs://{name} in project "
                          f"{target.project}: {error.message}",
                          hint=f"grant roles/storage.admin, or create it yourself: {create}") from None


def _readable(cloud: Cloud, name: str) -> bool:
    try:
        return cloud.storage.lookup_bucket(name) is not None
    except api_exceptions.Forbidden:
        return False


def _credentials(target: Target) -> GcpCredentials:
    """The target's credentials as a GcpCredentials block every worker can load."""
    from prefect_gcp import GcpCredentials

    if target.credentials_block:
        return GcpCredentials.load(target.credentials_block)
    if target.kind == "gcp":
        credentials = GcpCredentials(project=target.project)  # ADC, wherever the block is used
    else:
        key = Path(Cloud.for_target(target).endpoints.credentials)  # type: ignore[union-attr]
        credentials = GcpCredentials(service_account_info=json.loads(key.read_text()))
    credentials.save(CREDENTIALS_BLOCK, overwrite=True)
    return credentials


def _described(target: Target) -> str:
    if target.credentials_block:
        return f"gcp-credentials/{target.credentials_block}"
    kind = "Application Default Credentials on each worker" if target.kind == "gcp" else \
        "the local cloud's own key"
    return f"gcp-credentials/{CREDENTIALS_BLOCK}, {kind}"


def _probe(block: GcsBucket) -> None:
    """Write and read back an object through the block, as the workers will."""
    content = b"written by cf2run setup through gcs-bucket/" + RESULTS_BLOCK.encode()
    try:
        block.write_path(PROBE, content)
        same = block.read_path(PROBE) == content
    except Exception as error:  # google-auth and the storage client raise many kinds
        raise Cf2RunError(f"gs://{block.bucket}: cannot write and read back {PROBE} with the result "
                          f"storage's credentials: {error}",
                          hint="they need roles/storage.objectUser on the bucket") from error
    if not same:
        raise Cf2RunError(f"gs://{block.bucket}/{PROBE} read back other bytes than were written")
