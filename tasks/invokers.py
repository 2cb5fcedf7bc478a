"""Who may invoke a service: the ``roles/run.invoker`` members the spec names, granted at promote.

The members a spec wants (`wanted_invokers`) are ``allUsers`` when ``allow_unauthenticated`` and
every entry of ``invokers``. `ensure_invokers` (called by tasks/promote.py after the smoke test, so
nobody outside reaches a revision before it passed) reads the service's IAM policy at version 3
(conditional bindings come back as they are, and are written back as they were), adds the
missing members to the unconditional ``roles/run.invoker`` binding and writes the policy with the
etag it read (ABORTED: read and redo, `again_on_aborted`). A failure fails the step (transient
errors are retried by Prefect): a migration is not done while the callers it names are refused.

cf2run adds members and never removes them, the same for ``allUsers`` as for the others: members
granted outside cf2run (by hand, Terraform, another team) are not its to take away, and a member
dropped from the manifest stays until someone removes it. What the service has beyond the
manifest is logged with the command that removes it, and `cf2run plan` shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from google.api_core import exceptions as api_exceptions
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from cf2run.fleet.quotas import cloud_run_write
from cf2run.gcp.traffic import short_name
from cf2run.manifest.principals import ALL_USERS
from cf2run.manifest.spec import FunctionSpec
from tasks.deploy import Log, again_on_aborted, api_step

INVOKER_ROLE = "roles/run.invoker"
#: The IAM policy version that carries conditional role bindings as they are.
POLICY_VERSION = 3

#: What to check when the members cannot be granted.
GRANT_HINT = ("the credentials need run.services.setIamPolicy on the service (roles/run.admin); an "
              "organization policy may forbid members outside your domains "
              "(constraints/iam.allowedPolicyMemberDomains); or grant it yourself: gcloud run services "
              f"add-iam-policy-binding SERVICE --member=MEMBER --role={INVOKER_ROLE}")


def wanted_invokers(spec: FunctionSpec) -> list[str]:
    """``allUsers`` for a public spec, then the spec's `invokers`."""
    return [ALL_USERS] * spec.allow_unauthenticated + list(spec.invokers)


def read_policy(services: run_v2.ServicesClient, service: str) -> policy_pb2.Policy:
    """The service's IAM policy at version 3: conditional bindings as they are, so that writing
    it back keeps them (read at a lower version, they come back renamed ``ROLE_withcond_HASH``
    and cannot be written: cloud.google.com/iam/docs/policies#versions)."""
    return services.get_iam_policy(request={
        "resource": service, "options": {"requested_policy_version": POLICY_VERSION}})


def invoker_members(policy: policy_pb2.Policy) -> list[str]:
    """The members of the unconditional ``roles/run.invoker`` bindings (a conditional one grants
    only when its condition holds: it does not count)."""
    return [member for binding in policy.bindings
            if binding.role == INVOKER_ROLE and not binding.HasField("condition")
            for member in binding.members]


def with_invokers(policy: policy_pb2.Policy, members: Iterable[str]) -> policy_pb2.Policy:
    """A copy of `policy` (etag, version and conditional bindings kept) with `members` in the
    unconditional ``roles/run.invoker`` binding."""
    updated = policy_pb2.Policy()
    updated.CopyFrom(policy)
    missing = [member for member in members if member not in invoker_members(policy)]
    if not missing:
        return updated
    for binding in updated.bindings:
        if binding.role == INVOKER_ROLE and not binding.HasField("condition"):
            binding.members.extend(missing)
            return updated
    updated.bindings.add(role=INVOKER_ROLE, members=missing)
    return updated


class Invokers(NamedTuple):
    """What `ensure_invokers` found: the members holding the role afterwards (None: the policy
    could not be read) and those it granted now."""

    members: list[str] | None
    granted: list[str]


def ensure_invokers(services: run_v2.ServicesClient, service: str, wanted: Sequence[str],
                    logger: Log) -> Invokers:
    """Grant `wanted` ``roles/run.invoker`` on `service` (once; nothing is removed). Returns the
    members that hold it afterwards (None when the policy of a service that wants nobody could
    not be read: reported, not a failure, nothing had to change) and those granted now."""
    granted: list[str] = []
    if not wanted:
        try:
            members = invoker_members(read_policy(services, service))
        except api_exceptions.GoogleAPICallError as error:
            logger.warning("could not read the IAM policy of %s (%s)", service, error.message or error)
            return Invokers(None, [])
    else:
        def grant() -> list[str]:
            policy = read_policy(services, service)
            updated = with_invokers(policy, wanted)
            if updated != policy:
                cloud_run_write()
                services.set_iam_policy(request={"resource": service, "policy": updated})
                granted[:] = [member for member in wanted if member not in invoker_members(policy)]
                logger.info("%s: %s may invoke it now", service, ", ".join(granted))
            return invoker_members(updated)

        with api_step(f"granting {INVOKER_ROLE} on {short_name(service)} to {', '.join(wanted)} "
                      "(SetIamPolicy)", hint=GRANT_HINT, step="promote"):
            members = again_on_aborted(grant, f"SetIamPolicy {service}", logger)
    for member in unlisted(members, wanted):
        logger.warning("%s: %s may invoke it but the manifest does not name it (%s); cf2run does not "
                       "remove invokers: %s", service, member, _not_wanted_because(member),
                       removal_command(service, member))
    return Invokers(members, granted)


def unlisted(members: Iterable[str], wanted: Sequence[str]) -> list[str]:
    """The invoker members the manifest does not name (cf2run leaves them)."""
    return [member for member in members if member not in wanted]


def removal_command(service: str, member: str) -> str:
    """The gcloud command that takes `member`'s invoker role on `service` away."""
    return (f"gcloud run services remove-iam-policy-binding {short_name(service)} "
            f"--member={member} --role={INVOKER_ROLE}")


def _not_wanted_because(member: str) -> str:
    return ("the spec says allow_unauthenticated: false" if member == ALL_USERS
            else "not in invokers")
