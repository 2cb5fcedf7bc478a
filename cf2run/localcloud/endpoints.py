"""Where each local service listens: `DIR/endpoints.json`, readable by any process."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILENAME = "endpoints.json"


@dataclass(frozen=True)
class Endpoints:
    """Addresses of a running local cloud.

    `storage`, `metadata` and `accounts` (Google's token services) are ``http://host:port`` URLs
    (HTTP APIs); `registry`, `cloudbuild`, `cloudrun` and `cloudfunctions` (the Cloud Functions
    API, v1 and v2) are ``host:port`` (OCI registry and gRPC services). `functions` is the 1st-gen
    functions' front end, ``http://host:port``: function NAME answers at ``{functions}/NAME``, as at
    ``https://REGION-PROJECT.cloudfunctions.net/NAME``. `credentials` is the path of the local
    cloud's own service-account key, what a local target authenticates with unless told otherwise.
    """

    storage: str
    registry: str
    cloudbuild: str
    cloudrun: str
    metadata: str
    accounts: str
    cloudfunctions: str
    functions: str
    credentials: str

    #: The fields that are listeners (their ports are reused after a restart).
    SERVICES = ("storage", "registry", "cloudbuild", "cloudrun", "metadata", "accounts", "cloudfunctions",
                "functions")

    def write(self, state_dir: Path) -> Path:
        path = state_dir / FILENAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, state_dir: Path) -> Endpoints:
        path = state_dir / FILENAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            from cf2run.errors import Cf2RunError

            raise Cf2RunError(
                f"no local cloud found: {path} does not exist",
                hint="start one with `cf2run localcloud serve --state-dir DIR` and point the "
                     "target's localcloud_dir (or CF2RUN_LOCALCLOUD_DIR) at DIR") from None
        missing = [key for key in cls.__dataclass_fields__ if key not in data]
        if missing:
            from cf2run.errors import Cf2RunError

            raise Cf2RunError(f"{path} was written by an older cf2run (no {', '.join(missing)})",
                              hint="restart the local cloud: `cf2run localcloud serve --state-dir "
                                   f"{state_dir}`")
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    @staticmethod
    def port_of(address: str) -> int:
        """The port of ``host:port`` or ``http://host:port`` (reused after a restart)."""
        return int(address.rsplit(":", 1)[1])
