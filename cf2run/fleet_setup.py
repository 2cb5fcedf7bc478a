"""What a Prefect server needs before `prefect deploy --all`: the work pool and the quota limits.

    cf2run setup                    # pool `cf2run` (process) + limits with their defaults
    cf2run setup --builds 30        # ... and set the concurrent-builds limit to 30

Also the pull step of the deployments in prefect.yaml (`use_checkout`): a worker runs the
flows from the checkout its cf2run is installed from, so a worker started from any clone of
this repository (with `pip install -e .`) runs that clone's flows without further setup.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.workers.process import ProcessWorker

from cf2run.errors import Cf2RunError
from cf2run.fleet.quotas import QuotaLimits, ensure_limits

WORK_POOL = "cf2run"
CHECKOUT_ENV = "CF2RUN_CHECKOUT"
#: A file every checkout has: how `use_checkout` recognizes one.
CHECKOUT_MARKER = Path("flows") / "migrate_fleet.py"


def setup(pool: str = WORK_POOL, quotas: QuotaLimits | None = None,
          replace: Collection[str] = ()) -> list[str]:
    """Create the process work pool and the quota limits where missing; what was created or set."""
    done = []
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type=ProcessWorker.type,
                description="cf2run migrations: each flow run is a process on a worker's machine",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            done.append(f"work pool {pool}")
        except ObjectAlreadyExists:
            pass
        done += [f"limit {name}" for name in ensure_limits(quotas, replace=replace, client=client)]
    return done


def checkout_dir() -> Path:
    """$CF2RUN_CHECKOUT, else the checkout this cf2run is installed from (`pip install -e .`)."""
    given = os.environ.get(CHECKOUT_ENV)
    candidate = Path(given).expanduser() if given else Path(__file__).resolve().parents[1]
    if not (candidate / CHECKOUT_MARKER).is_file():
        where = f"${CHECKOUT_ENV}={given}" if given else f"cf2run's install location {candidate}"
        raise Cf2RunError(f"{where} is not a checkout of cf2run (no {CHECKOUT_MARKER})",
                          hint=f"start the worker with {CHECKOUT_ENV}=/path/to/your/cf2run/checkout")
    return candidate.resolve()


def use_checkout() -> dict[str, str]:
    """Prefect pull step: change into the cf2run checkout (see `checkout_dir`)."""
    directory = checkout_dir()
    os.chdir(directory)
    return {"directory": str(directory)}
