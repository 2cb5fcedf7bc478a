"""One gen1 function -> its manifest entry: the settings in manifest order, the notes, and what
is not carried (each from one function of `settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.cloud import functions_v1
from google.iam.v1 import policy_pb2

from cf2run.discovery import settings as s
from cf2run.discovery.names import rename_reason
from cf2run.discovery.signature import Declared


@dataclass(frozen=True)
class Entry:
    """A function's manifest entry: `settings` become fields, `notes` comments above them."""

    function: str  # projects/P/locations/R/functions/ID
    settings: list[s.Setting]
    notes: list[str] = field(default_factory=list)
    not_carried: list[s.NotCarried] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(next(item.value for item in self.settings if item.field == "name"))


def check_migratable(fn: functions_v1.CloudFunction) -> None:
    """CannotMigrate before anything is downloaded: runtime, source kind, trigger type."""
    s.runtime(fn)
    if "source_repository" in fn:
        raise s.CannotMigrate(
            f"source from a Cloud Source Repository ({fn.source_repository.url})",
            "clone the repository at the deployed revision "
            f"({fn.source_repository.deployed_url or 'see sourceRepository.deployedUrl'}) and add "
            "the function to the manifest by hand with `source:` the clone's function directory")
    s.trigger(fn)


def entry_for(fn: functions_v1.CloudFunction, policy: policy_pb2.Policy, *, name: str,
              source: str, source_origin: str, declared: Declared | None) -> Entry:
    """The manifest entry of `fn` (already accepted by `check_migratable`): service `name`,
    `source` relative to the manifest, `declared` the signature its source registers."""
    renamed = rename_reason(s.function_id(fn), name)
    env, env_dropped = s.env(fn)
    build_env, build_dropped = s.build_env(fn)
    trigger = s.trigger(fn)
    settings = [
        s.Setting("name", name, f"function {s.function_id(fn)}" + (f", renamed: {renamed}" if renamed
                                                                     else "")),
        s.Setting("source", source, source_origin),
        s.runtime(fn), s.entry_point(fn), s.signature_type(fn, declared),
        s.memory(fn), s.timeout(fn), s.concurrency(fn), s.min_instances(fn), s.max_instances(fn),
        s.service_account(fn), s.ingress(fn), s.vpc_connector(fn), s.vpc_egress(fn),
        env, build_env, s.secret_env(fn), s.secret_volumes(fn), s.labels(fn),
        s.allow_unauthenticated(policy), s.invokers(policy),
        *([trigger] if trigger else []),
        s.parity(fn),
    ]
    not_carried = [*env_dropped, *build_dropped, *s.other_bindings(policy), *s.platform_settings(fn),
                   *(item for item in (s.network(fn), s.security_level(fn), s.retry_policy(fn)) if item)]
    notes = [note for note in (s.description(fn), _status(fn)) if note]
    return Entry(function=fn.name, settings=settings, notes=notes, not_carried=not_carried)


def _status(fn: functions_v1.CloudFunction) -> str | None:
    status = functions_v1.CloudFunctionStatus
    if fn.status in (status.ACTIVE, status.CLOUD_FUNCTION_STATUS_UNSPECIFIED):
        return None
    return (f"status {fn.status.name}: the function is not serving as deployed; the source and "
            "settings are those of its current version")
