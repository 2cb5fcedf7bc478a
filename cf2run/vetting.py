"""Which revision passed its checks on which service: what lets an unchanged rerun test nothing.

A rerun of a function whose deploy changes nothing (the revision already serves all the
traffic, no candidate) has no candidate to vet, but only if that revision really passed its
smoke test (and parity) when it was promoted. The traffic alone does not say so: a new
service's first revision takes all its traffic at once (private until its smoke test passes),
so a first deploy whose smoke test failed, or a run killed between deploy and promote, leaves a
revision serving that nothing vetted. So the flow records, after a successful promote, that
this revision of this service passed these checks (`record`), and a rerun skips the checks only
when it finds that record (`recorded`).

The record lives beside the deploy step's cache records (that task's result store in this run:
the local PREFECT_HOME, or the bucket `cf2run setup --results-bucket` made the default), under a key of
the service's uid (Cloud Run gives a service deleted and created again a new one), the revision
and the smoke and parity settings (changed checks are run again). It never expires: a promoted
revision stays vetted; `recheck` tests it again (and records it again).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from prefect.results import ResultStore, get_result_store
from prefect.utilities.hashing import hash_objects

from cf2run.manifest.spec import FunctionSpec
from tasks.deploy import deploy_service

log = logging.getLogger(__name__)

#: Result-store keys of the records begin with this.
KEY_PREFIX = "cf2run-vetted-"


def vetting_key(spec: FunctionSpec, service: str, uid: str, revision: str) -> str:
    """The record's key: the service (name and uid), the revision, the checks' settings."""
    checks = (spec.smoke.model_dump(mode="json"), spec.parity.model_dump(mode="json"))
    return KEY_PREFIX + str(hash_objects(service, uid, revision, checks, raise_on_failure=True))


def record(key: str, revision: str, checks: str) -> None:
    """`revision` passed `checks` (what they found, e.g. ``smoke 200 in 0.05s``) and was promoted.
    A record that cannot be written only costs the next rerun its checks: logged, not raised."""
    try:
        _store().write(obj={"revision": revision, "checks": checks}, key=key)
    except Exception as error:  # result storage unreachable: the migration itself is done
        log.warning("could not record that %s passed its checks (%s); the next rerun tests it again",
                    revision, error)


def recorded(key: str) -> str | None:
    """What the checks found when the revision was promoted, or None when nothing vetted it."""
    store = _store()
    try:
        if not store.exists(key):
            return None
        found: Any = store.read(key).result
    except Exception as error:  # unreadable: test it again rather than trust it
        log.warning("could not read the record of %s (%s); testing again", key, error)
        return None
    return str(found["checks"]) if isinstance(found, dict) and "checks" in found else None


def _store() -> ResultStore:
    """The result store the deploy step's cache records go to, in this run's context."""
    return cast(ResultStore, get_result_store().update_for_task(deploy_service))  # sync: no event loop here
