"""Cloud Run service names for gen1 function ids, chosen the same way on every run.

A gen1 function id may hold uppercase letters and '_' and be up to 63 characters long (the v2
API narrowed new ids to "4-63 characters, and valid characters are /a-z][0-9]-/",
google.cloud.functions_v2 CreateFunctionRequest.function_id); a Cloud Run service name is
lowercase letters, digits and '-', and cf2run keeps it to 45 characters (`MAX_NAME_WITH_TAG`:
room for the candidate's traffic tag). So: lowercase, every run of other characters becomes
one '-', and a name that had to be cut, or that two functions of one manifest would share, gets
'-' and the first 6 hex digits of the sha256 of the function id (stable across runs, unlike a
counter). A function whose id already is a valid name keeps it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable

from cf2run.manifest.spec import MAX_NAME_WITH_TAG, SERVICE_NAME_RE

SUFFIX_LENGTH = 6


def cleaned(function_id: str) -> str:
    """The id as a service name, before length and clashes are considered."""
    name = re.sub(r"[^a-z0-9]+", "-", function_id.lower()).strip("-")
    return name if name[:1].isalpha() else f"fn-{name}".rstrip("-")


def suffixed(function_id: str, base: str) -> str:
    digest = hashlib.sha256(function_id.encode()).hexdigest()[:SUFFIX_LENGTH]
    head = base[:MAX_NAME_WITH_TAG - SUFFIX_LENGTH - 1].rstrip("-")
    return f"{head}-{digest}"


def service_names(function_ids: Iterable[str]) -> dict[str, str]:
    """Each function id's service name; unique among them, each a valid cf2run service name."""
    ids = sorted(set(function_ids))
    bases = {function_id: cleaned(function_id) for function_id in ids}
    taken = Counter(bases.values())
    names = {}
    for function_id, base in bases.items():
        keeps = function_id == base and len(base) <= MAX_NAME_WITH_TAG and SERVICE_NAME_RE.match(base)
        unique = taken[base] == 1 and len(base) <= MAX_NAME_WITH_TAG
        names[function_id] = base if keeps or unique else suffixed(function_id, base)
    return names


def rename_reason(function_id: str, name: str) -> str | None:
    """Why `function_id` became `name` (None when it kept its id)."""
    if name == function_id:
        return None
    reasons = []
    if cleaned(function_id) != function_id:
        reasons.append("Cloud Run service names are lowercase letters, digits and '-'")
    if name != cleaned(function_id):
        reasons.append(f"cut to {MAX_NAME_WITH_TAG} characters or shared with another function, "
                       "so a hash of the id is appended")
    return "; ".join(reasons)
