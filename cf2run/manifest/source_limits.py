"""How big a function's source may be: 1st gen's limits, checked before anything is uploaded.

"Max deployment size: 100MB (compressed) for sources. 500MB (uncompressed) for sources plus
modules" (https://cloud.google.com/functions/quotas-1st-gen, "Resource Limits"; not raised on
request). Cloud Build and Cloud Run set no such limit, but a function body over them never ran
on Cloud Functions: it holds something the function never shipped (a `.git`, a virtualenv,
`node_modules` with build caches, data files), and uploading it costs every rerun. The message
names the biggest entries and the fix (.gcloudignore).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cf2run.errors import SourceError

MB = 10**6
#: 1st gen's limits (decimal megabytes, as the quotas page counts them).
MAX_UNCOMPRESSED_BYTES = 500 * MB
MAX_COMPRESSED_BYTES = 100 * MB
QUOTAS_PAGE = "https://cloud.google.com/functions/quotas-1st-gen"
IGNORE_HINT = ("list what the function does not need in a .gcloudignore in the source directory "
               "(gcloud's ignore rules; e.g. .git, venv/, tests/, data files)")


def check_uncompressed(root: Path, files: Sequence[tuple[str, int]]) -> None:
    """SourceError when the files (name, size) add up to more than 500 MB."""
    total = sum(size for _, size in files)
    if total <= MAX_UNCOMPRESSED_BYTES:
        return
    raise SourceError(f"source directory {root} holds {total / MB:,.0f} MB to upload; Cloud Functions "
                      f"allowed at most {MAX_UNCOMPRESSED_BYTES // MB} MB uncompressed ({QUOTAS_PAGE}). "
                      f"Biggest: {_biggest(files)}", hint=IGNORE_HINT)


def check_compressed(root: Path, size: int) -> None:
    """SourceError when the source's archive is over 100 MB."""
    if size > MAX_COMPRESSED_BYTES:
        raise SourceError(f"the archive of {root} is {size / MB:,.0f} MB; Cloud Functions allowed at "
                          f"most {MAX_COMPRESSED_BYTES // MB} MB compressed ({QUOTAS_PAGE})",
                          hint=IGNORE_HINT)


def _biggest(files: Sequence[tuple[str, int]], shown: int = 3) -> str:
    """The top-level entries holding the most bytes, e.g. 'node_modules/ 420 MB, data.bin 90 MB'."""
    by_top: Counter[str] = Counter()
    for name, size in files:
        top, slash, _ = name.partition("/")
        by_top[top + slash] += size
    return ", ".join(f"{name} {size / MB:,.0f} MB" for name, size in by_top.most_common(shown))
