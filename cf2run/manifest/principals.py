"""IAM principal identifiers: the forms a member of an allow policy's binding may take.

The forms are IAM v1's (https://cloud.google.com/iam/docs/principal-identifiers, "Principal
identifiers for allow policies"):

    user:EMAIL            serviceAccount:EMAIL        group:EMAIL          domain:DOMAIN
    allUsers              allAuthenticatedUsers
    principal://iam.googleapis.com/...                (one identity of a workforce/workload pool)
    principalSet://iam.googleapis.com/... or principalSet://cloudresourcemanager.googleapis.com/...

plus GKE's ``serviceAccount:PROJECT.svc.id.goog[NAMESPACE/KSA]`` (a Kubernetes service account,
cloud.google.com/kubernetes-engine/docs/how-to/workload-identity), and ``deleted:TYPE:EMAIL?uid=N``,
which Google writes into policies for deleted principals (and accepts back, unchanged, in a
read-modify-write; cloud.google.com/iam/docs/policies "deleted principals").

The manifest (cf2run.manifest.spec) and the local Cloud Run (localcloud/cloudrun/rules.py) both read a
member through `parse`; each words its own refusal.

    member = parse("serviceAccount:ci@p.iam.gserviceaccount.com")
    member.kind, member.value, well_formed(member)   # 'serviceAccount', 'ci@p...', True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALL_USERS = "allUsers"
ALL_AUTHENTICATED_USERS = "allAuthenticatedUsers"
SPECIAL = (ALL_USERS, ALL_AUTHENTICATED_USERS)
EMAIL_TYPES = ("user", "serviceAccount", "group")
URI_TYPES = ("principal", "principalSet")
TYPES = (*EMAIL_TYPES, "domain", *URI_TYPES)
DELETED = "deleted"

EMAIL_RE = re.compile(r"^[^@\s:]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
GKE_SERVICE_ACCOUNT_RE = re.compile(r"^[a-z][a-z0-9.:-]*\.svc\.id\.goog\[[^/\[\]\s]+/[^/\[\]\s]+\]$")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")
URI_RE = re.compile(r"^//[a-z0-9.-]+/\S+$")
DELETED_RE = re.compile(r"^deleted:(?:user|serviceAccount|group):[^@\s]+@\S+\?uid=\d+$")


@dataclass(frozen=True)
class Member:
    """A member split into its type (``user``, ``allUsers``, ...) and what follows ``TYPE:``."""

    kind: str
    value: str = ""


def parse(member: str) -> Member | None:
    """The member's type and value, or None when it is of no form IAM knows (no ``TYPE:``, an
    unknown type, or the wrong case: IAM's types are case-sensitive)."""
    if member in SPECIAL:
        return Member(member)
    if DELETED_RE.match(member):
        return Member(DELETED, member.removeprefix(f"{DELETED}:"))
    kind, colon, value = member.partition(":")
    if not colon or kind not in TYPES:
        return None
    return Member(kind, value)


def well_formed(member: Member) -> bool:
    """Whether the value fits its type: an email, a domain name, a principal URI."""
    if member.kind in SPECIAL or member.kind == DELETED:
        return True
    if member.kind == "serviceAccount":
        return bool(EMAIL_RE.match(member.value) or GKE_SERVICE_ACCOUNT_RE.match(member.value))
    if member.kind in EMAIL_TYPES:
        return bool(EMAIL_RE.match(member.value))
    if member.kind == "domain":
        return bool(DOMAIN_RE.match(member.value))
    return bool(URI_RE.match(member.value))


def misspelled_type(member: str) -> str | None:
    """The type a member with an unknown one probably meant (``serviceaccount:`` -> ``serviceAccount``;
    ``allusers`` -> ``allUsers``), or None."""
    kind = member.partition(":")[0].lower()
    return next((known for known in (*TYPES, *SPECIAL) if known.lower() == kind), None)
