"""A 1st-gen function's deployed source, fetched without changing anything in the project.

First the v1 API's GenerateDownloadUrl (a signed URL of the deployed source, which needs
cloudfunctions.functions.sourceCodeGet; https://cloud.google.com/functions/docs/reference/rest/
v1/projects.locations.functions/generateDownloadUrl), else the function's `sourceArchiveUrl`
object read with the Cloud Storage client. The bytes stop at the zipped-size limit; the archive
is then checked and extracted by `archive.extract_zip`. A transient failure of either call (an
UNAVAILABLE GenerateDownloadUrl; a 429, a 5xx or a dropped connection on the download, which
Cloud Storage says to retry with backoff) is tried again, within one budget per call
(`TRANSIENT_RETRY`): discover is no Prefect task with retries of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import requests
from google.api_core import exceptions
from google.api_core.retry import Retry
from google.cloud import functions_v1
from google.cloud.storage import Client as StorageClient

from cf2run.discovery.archive import CHUNK, Limits, megabytes
from cf2run.discovery.inventory import DiscoveryError, api_error
from cf2run.errors import SourceError, TransientError
from tasks.policy import TRANSIENT_HTTP_STATUSES, is_transient

DOWNLOAD_TIMEOUT_S = 120
#: The retries of one call that failed transiently: 0.5 s, 1 s, 2 s ... for up to 60 s in all.
TRANSIENT_RETRY = Retry(predicate=is_transient, initial=0.5, maximum=8.0, multiplier=2.0, timeout=60.0)


def download_source(functions: functions_v1.CloudFunctionsServiceClient, storage: StorageClient,
                    fn: functions_v1.CloudFunction, archive: Path, limits: Limits) -> str:
    """Write `fn`'s deployed source zip to `archive`; where it came from (the manifest comment).
    DiscoveryError when Google refuses (permission), SourceError when this function's source
    cannot be had (too big, gone)."""
    project = fn.name.split("/")[1]
    try:
        url = functions.generate_download_url(
            request=functions_v1.GenerateDownloadUrlRequest(name=fn.name, version_id=fn.version_id),
            retry=TRANSIENT_RETRY).download_url
    except (exceptions.PermissionDenied, exceptions.Unauthenticated) as error:
        raise api_error(error, "cloudfunctions.functions.sourceCodeGet", fn.name, project) from None
    except (exceptions.GoogleAPICallError, exceptions.RetryError) as error:
        if not fn.source_archive_url:
            raise SourceError(f"GenerateDownloadUrl failed ({getattr(error, 'message', None) or error}) "
                              "and the function has no sourceArchiveUrl") from None
        _from_storage(storage, fn.source_archive_url, archive, limits, project)
        return f"deployed source: sourceArchiveUrl {fn.source_archive_url}"
    try:
        TRANSIENT_RETRY(_from_url)(url, archive, limits)
    except exceptions.RetryError as error:  # still failing when the budget ran out
        raise SourceError(f"downloading the source kept failing for {TRANSIENT_RETRY.timeout:.0f} s: "
                          f"{error.cause}", hint="run discover again later") from None
    return f"deployed source of version {fn.version_id} (GenerateDownloadUrl)"


def _from_url(url: str, archive: Path, limits: Limits) -> None:
    """Download `url` into `archive` (from the start: a retry writes it again); TransientError
    for what Cloud Storage says to retry, SourceError for the rest."""
    try:
        with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT_S) as response:
            if response.status_code != 200:
                failure = TransientError if response.status_code in TRANSIENT_HTTP_STATUSES else SourceError
                raise failure(f"downloading the source answered HTTP {response.status_code}: "
                              f"{response.text[:200]}")
            _write_capped(response.iter_content(CHUNK), archive, limits)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
        raise TransientError(f"downloading the source failed: {error}") from None
    except requests.RequestException as error:
        raise SourceError(f"downloading the source failed: {error}") from None


def _from_storage(storage: StorageClient, url: str, archive: Path, limits: Limits, project: str) -> None:
    bucket, _, name = url.removeprefix("gs://").partition("/")
    try:
        blob = storage.bucket(bucket).get_blob(name)
        if blob is None:
            raise SourceError(f"{url} does not exist any more", hint="redeploy the function, then "
                              "discover again")
        if (blob.size or 0) > limits.zipped:
            raise SourceError(f"{url}: {blob.size} bytes, above Cloud Functions' "
                              f"{megabytes(limits.zipped)} limit for a function's source")
        blob.download_to_filename(str(archive))
    except exceptions.Forbidden as error:
        raise DiscoveryError(f"permission storage.objects.get denied on {url}: {error.message}",
                             hint=f"grant your credentials roles/storage.objectViewer on bucket {bucket} "
                                  f"(project {project})") from None


def _write_capped(chunks: Iterable[bytes], archive: Path, limits: Limits) -> None:
    written = 0
    with archive.open("wb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > limits.zipped:
                raise SourceError(f"the source is more than {megabytes(limits.zipped)} zipped, "
                                  "Cloud Functions' limit for a function's source; refused")
            out.write(chunk)
