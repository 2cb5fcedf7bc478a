"""migrate_from_manifest: one function of a manifest, as a fleet run would migrate it.

The short form for the Prefect UI: a manifest in the worker's checkout and a function's name.
The manifest's `defaults` and `target` apply, and its relative `source` paths start at the
manifest's directory, exactly as in a fleet run (`migrate-fleet` with `only: [NAME]`); the
steps, artifacts and final state are those of `migrate-function`.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.states import State
from pydantic import Field

from cf2run.fleet.fanout import load
from cf2run.manifest.spec import MAX_NAME_WITH_TAG, SERVICE_NAME_RE, TargetChanges
from cf2run.results import MigrationResult
from flows.migrate_function import migrate_and_publish

#: A function's name on a form: the UI checks its shape before it creates the run (forms.py).
FunctionName = Annotated[str, Field(json_schema_extra={
    "allOf": [{"pattern": SERVICE_NAME_RE.pattern, "maxLength": MAX_NAME_WITH_TAG}]})]


@flow(name="migrate-from-manifest", flow_run_name="migrate[{name}]", log_prints=False,
      persist_result=True)
def migrate_from_manifest(name: FunctionName, manifest: str = "deployments/fleet.yaml",
                          target: TargetChanges = None, recheck: bool = False
                          ) -> State[MigrationResult]:
    """Migrate one function of a manifest, with the manifest's defaults and target.

    Args:
        name: The function's name in the manifest (lowercase letters, digits and '-', at most
            45 characters).
        manifest: Path of the YAML manifest in the worker's checkout, e.g. deployments/fleet.yaml.
        target: Fields that replace the manifest target's (empty = the manifest's target).
        recheck: Smoke-test (and compare with the old function) even when nothing changed; off, an
            unchanged function whose revision passed when it was promoted is sent no request.
    """
    fleet = load(manifest, target, only=[name])
    return migrate_and_publish(fleet.functions[0], fleet.target, recheck)
