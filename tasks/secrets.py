"""check_secrets: every secret the manifest names exists and is enabled, before anything is created.

Run by the migration right after the credentials check, before the source is uploaded, built or
deployed: a missing or disabled secret would otherwise surface only as a revision that fails to
start (cf2run/gcp/secret_check.py). Never cached (a secret can be added or disabled at any time);
retried only on transient errors. A check Secret Manager refuses is returned as a warning.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cf2run.errors import SecretsUnavailable
from cf2run.gcp import secret_check
from cf2run.gcp.cloud import Cloud
from cf2run.manifest.spec import FunctionSpec, Target
from tasks.policy import RETRIES


def secrets_ready(spec: FunctionSpec, target: Target, cloud: Cloud) -> list[str]:
    """The warnings of the check; SecretsUnavailable naming each field, secret and fix when a secret
    is missing or not enabled."""
    found = secret_check.check(spec, target, cloud.secrets)
    if found.problems:
        raise SecretsUnavailable(
            f"{spec.name}: {len(found.problems)} secret(s) the manifest names cannot be used: "
            + "; ".join(found.problems),
            hint="nothing was created; fix the secrets (or the manifest) and run the migration again")
    return found.warnings


@task(name="secrets", task_run_name="secrets[{spec.name}]", cache_policy=NO_CACHE, **RETRIES)
def check_secrets(spec: FunctionSpec, target: Target) -> list[str]:
    """Check the secrets `spec` names in Secret Manager; returns the warnings (checks refused)."""
    warnings = secrets_ready(spec, target, Cloud.for_target(target))
    for warning in warnings:
        get_run_logger().warning("%s", warning)
    return warnings
