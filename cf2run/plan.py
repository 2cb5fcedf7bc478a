"""`cf2run plan MANIFEST`: what a migration would change, before it changes anything.

Per function: whether the build is cached (HEAD of the image tag the build would push, via
cf2run.fleet.plan), the Cloud Run service the deploy step would send (`service_for`) and,
where the service exists, a readable diff against it: image, env, limits, scaling, IAM and the
other gen1 settings; and a problem line for each secret the manifest names that Secret Manager
lacks or has disabled (cf2run.gcp.secret_check: the plan is then not ok). Read-only calls only.
Secret values are never printed (cf2run never has them: the manifest and the service only name
secrets).

    plans = [plan_function(spec, target, cloud) for spec in manifest.functions]
    print(render(plans))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from google.api_core import exceptions as api_exceptions
from google.cloud import run_v2
from pydantic import BaseModel, ConfigDict, Field

from cf2run.errors import Cf2RunError, SourceError, SpecError
from cf2run.events import eventarc_command
from cf2run.fleet.plan import plan as build_plan
from cf2run.gcp import secret_check
from cf2run.gcp.cloud import Cloud
from cf2run.gcp.oci import ImageRef
from cf2run.gcp.traffic import serving
from cf2run.manifest import mapping
from cf2run.manifest.principals import ALL_USERS
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.parity import planned
from cf2run.results import VerifiedImage
from tasks.deploy import get_service, service_for, service_path
from tasks.invokers import (
    INVOKER_ROLE,
    invoker_members,
    read_policy,
    removal_command,
    unlisted,
    wanted_invokers,
)

#: Shown for the image when the build has not run yet (its digest is not known).
UNBUILT = "(built by this migration)"
Action = Literal["create", "update", "unchanged"]
#: What the plan says of an invoker the service has and the manifest does not name.
KEPT = "cf2run does not remove invokers; remove it by hand"


class Change(BaseModel):
    """One setting that differs: None = not set on that side."""

    model_config = ConfigDict(extra="forbid")

    key: str
    before: str | None
    after: str | None

    def line(self) -> str:
        if self.before is None:
            return f"  + {self.key}: {self.after}"
        if self.after is None:
            return f"  - {self.key}: {self.before}"
        return f"  ~ {self.key}: {self.before} -> {self.after}"


class ServicePlan(BaseModel):
    """What migrating one function would do to its Cloud Run service."""

    model_config = ConfigDict(extra="forbid")

    function: str
    ok: bool = True
    bad_input: bool = Field(default=False, description="It failed on the user's input (the source "
                                                       "directory), not on the cloud: exit 2.")
    message: str | None = Field(default=None, description="Why it could not be planned.")
    action: Action | None = None
    build: Literal["cached", "needed"] | None = None
    image: str | None = Field(default=None, description="Image tag the build pushes.")
    service: str | None = None
    url: str | None = None
    serving: list[str] = Field(default_factory=list, description="Revisions serving now.")
    revision: str | None = Field(default=None, description="Revision the deploy would create.")
    reuses: bool = Field(default=False, description="The revision exists already (it served before: "
                                                    "a rollback moved the traffic off it).")
    changes: list[Change] = Field(default_factory=list)
    eventarc: str | None = Field(default=None, description="The Eventarc trigger to create.")
    parity: str | None = Field(default=None, description="What the parity step compares against.")
    notes: list[str] = Field(default_factory=list, description="Settings cf2run chose, and why.")
    problems: list[str] = Field(default_factory=list, description="What would stop the migration "
                                                                  "(a missing or disabled secret).")


def settings_view(service: run_v2.Service, public: bool | None, invokers: Iterable[str] = ()
                  ) -> dict[str, str]:
    """The settings a user reads in a plan, flattened to ``key: value`` (secrets by reference);
    `invokers`: the members besides allUsers that may invoke it."""
    template = service.template
    container = template.containers[0] if template.containers else run_v2.Container()
    view = {"image": container.image or UNBUILT}
    for var in container.env:
        if "value_source" in var:
            ref = var.value_source.secret_key_ref
            view[f"env.{var.name}"] = f"secret {ref.secret}:{ref.version or 'latest'}"
        else:
            view[f"env.{var.name}"] = repr(var.value)
    limits = dict(container.resources.limits)
    view.update({f"limits.{key}": value for key, value in sorted(limits.items())})
    view["scaling.min_instances"] = str(template.scaling.min_instance_count)
    view["scaling.max_instances"] = (str(template.scaling.max_instance_count)
                                     if template.scaling.max_instance_count
                                     else f"{mapping.CLOUD_RUN_DEFAULT_MAX_INSTANCES} (Cloud Run's default)")
    view["scaling.concurrency"] = str(template.max_instance_request_concurrency or 80)
    view["timeout"] = f"{int(template.timeout.total_seconds()) if 'timeout' in template else 300}s"
    view["service_account"] = template.service_account or "(Cloud Run's compute default)"
    view["ingress"] = run_v2.IngressTraffic(service.ingress).name
    if template.vpc_access.connector:
        view["vpc.connector"] = template.vpc_access.connector
        view["vpc.egress"] = run_v2.VpcAccess.VpcEgress(template.vpc_access.egress).name
    mounts = {mount.name: mount.mount_path for mount in container.volume_mounts}
    for volume in template.volumes:
        files = ", ".join(f"{item.path}={item.version or 'latest'}" for item in volume.secret.items)
        view[f"volume.{mounts.get(volume.name, volume.name)}"] = \
            f"secret {volume.secret.secret}" + (f" ({files})" if files else " (latest)")
    view.update({f"label.{key}": value for key, value in sorted(service.labels.items())})
    if public is not None:
        view["iam"] = "public (allUsers may invoke)" if public else "private (ID token needed)"
    view.update({f"invoker {member}": INVOKER_ROLE for member in invokers})
    return view


def diff(before: dict[str, str], after: dict[str, str]) -> list[Change]:
    """The keys whose values differ, in `after`'s order, then the ones only `before` has."""
    changes = [Change(key=key, before=before.get(key), after=value)
               for key, value in after.items() if before.get(key) != value]
    return changes + [Change(key=key, before=value, after=None)
                      for key, value in before.items() if key not in after]


def plan_function(spec: FunctionSpec, target: Target, cloud: Cloud) -> ServicePlan:
    """What migrating `spec` would do (read-only); a failure to find out is a plan with ok=False."""
    try:
        result = _plan(spec, target, cloud)
        if secret_check.uses(spec, target):
            found = secret_check.check(spec, target, cloud.secrets)
            result.problems, result.ok = found.problems, not found.problems
            result.notes += found.warnings
        return result
    except (SpecError, SourceError) as error:  # the source: empty, over the limits, unreadable
        return ServicePlan(function=spec.name, ok=False, bad_input=True, message=str(error))
    except (Cf2RunError, api_exceptions.GoogleAPICallError, OSError) as error:
        return ServicePlan(function=spec.name, ok=False, message=str(error))


def _plan(spec: FunctionSpec, target: Target, cloud: Cloud) -> ServicePlan:
    built = build_plan(spec, target, cloud)
    image = built.image or ""
    digest = built.digest or "sha256:" + "0" * 64
    verified = VerifiedImage(image=f"{ImageRef.parse(image).name}@{digest}", digest=digest,
                             platform="linux/amd64", web_process="")
    wanted = service_for(spec, target, verified)
    if built.digest is None:
        wanted.template.containers[0].image = ""  # unknown until the build runs
    name = service_path(target, spec.name)
    existing = get_service(cloud.services, name, step="plan")
    note = mapping.max_instances_note(spec)
    result = ServicePlan(function=spec.name, build=built.build, image=image, service=name,
                         revision=built.revision, eventarc=eventarc_command(spec, target),
                         parity=planned(spec.parity),
                         notes=[note] if note else [])
    wanted_view = settings_view(wanted, spec.allow_unauthenticated, spec.invokers)
    if existing is None:
        result.action = "create"
        result.changes = diff({}, wanted_view)
        return result
    members = invoker_members(read_policy(cloud.services, name))
    public, others = ALL_USERS in members, [member for member in members if member != ALL_USERS]
    kept = unlisted(members, wanted_invokers(spec))  # cf2run does not remove invokers
    if ALL_USERS in kept:
        wanted_view["iam"] += f"; {KEPT}: {removal_command(name, ALL_USERS)}"
    wanted_view.update({f"invoker {member}": f"{INVOKER_ROLE}; not in the manifest, {KEPT}: "
                        f"{removal_command(name, member)}" for member in kept if member != ALL_USERS})
    result.url, result.serving = existing.uri, serving(existing)
    result.action = "unchanged" if built.deploy == "unchanged" else "update"
    if result.action == "update" and built.revision:
        result.reuses = _revision_exists(cloud, f"{name}/revisions/{built.revision}")
    result.changes = [change for change in diff(settings_view(existing, public, others), wanted_view)
                      if not change.key.startswith("label.cf2run-source")]
    return result


def render(plans: list[ServicePlan]) -> str:
    """The plans as text, one block per function."""
    blocks = []
    for plan in plans:
        if not plan.ok and not plan.problems:
            blocks.append(f"{plan.function}: cannot plan: {plan.message}")
            continue
        build = "cached (image exists)" if plan.build == "cached" else "needed"
        head = [f"{plan.function}: {_action_text(plan)}", f"  build: {build}: {plan.image}"]
        if plan.url:
            head.append(f"  url: {plan.url} (serving {', '.join(plan.serving) or 'nothing'})")
        body = [change.line() for change in plan.changes]
        if plan.action == "unchanged" and not body:
            body = ["  no changes"]
        if plan.parity:
            body.append(f"  parity: {plan.parity}")
        if plan.eventarc:
            body.append(f"  eventarc trigger to create: {plan.eventarc}")
        body += [f"  note: {note}" for note in plan.notes]
        body += [f"  problem: {problem}" for problem in plan.problems]
        blocks.append("\n".join(head + body))
    return "\n\n".join(blocks) + "\n"


def _action_text(plan: ServicePlan) -> str:
    if plan.action == "create":
        return f"create service {plan.service}"
    if plan.action == "unchanged":
        if any(change.key == "ingress" for change in plan.changes):
            return "no new revision: the service serves this image; promote changes its ingress"
        return "unchanged: the service already serves this image and these settings"
    checks = "smoke-tested and compared with the old function" if plan.parity else "smoke-tested"
    if plan.reuses:  # what tasks/deploy.py does with a revision it made before (A, B, then A again)
        return (f"update: revision {plan.revision} exists and serves nothing now: it is the candidate "
                f"again (tag URL), {checks}, then promoted; no new revision")
    return (f"update: new revision as a candidate (no traffic, tag URL), {checks}, then promoted"
            + (f" (revision {plan.revision})" if plan.revision else ""))


def _revision_exists(cloud: Cloud, name: str) -> bool:
    try:
        cloud.revisions.get_revision(name=name)
    except api_exceptions.NotFound:
        return False
    return True
