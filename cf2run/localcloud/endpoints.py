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

    `storage` and `metadata` are ``http://host:port`` URLs (HTTP APIs); `registry`,
    `cloudbuild` and `cloudrun` are ``host:port`` (OCI registry and gRPC services).
    """

    storage: str
    registry: str
    cloudbuild: str
    cloudrun: str
    metadata: str

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
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    def port(self, service: str) -> int:
        """The port a service listens on (for reusing it after a restart)."""
        return int(getattr(self, service).rsplit(":", 1)[1])
