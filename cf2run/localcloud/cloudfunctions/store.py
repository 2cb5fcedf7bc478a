"""The local Cloud Functions' functions on disk, as the API answers them.

Layout: ``STATE/cloudfunctions/functions/PROJECT/REGION/ID.json``, one record per function
(written atomically, read back after a restart): the function in its own API's JSON (a 1st-gen
one as v1 CloudFunction, a 2nd-gen one as v2 Function) with the fields the service sets, its IAM
policy, the digest of the seed it came from (an unchanged seed changes nothing) and where its
source archive is in Cloud Storage.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from cf2run.localcloud.cloudfunctions.shapes import Json, split_name


@dataclass(frozen=True)
class Record:
    """One function as stored."""

    name: str
    generation: str  # GEN_1 or GEN_2
    function: Json
    policy: Json
    digest: str
    version: int
    source: tuple[str, str] | None = None  # (bucket, object) of its zip in Cloud Storage

    @property
    def project(self) -> str:
        return split_name(self.name)[0]

    @property
    def region(self) -> str:
        return split_name(self.name)[1]

    @property
    def function_id(self) -> str:
        return split_name(self.name)[2]


class FunctionStore:
    """The records under `root` (``STATE/cloudfunctions/functions``). Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records = {record.name: record for record in self._load()}

    def get(self, name: str) -> Record | None:
        return self._records.get(name)

    def put(self, record: Record) -> None:
        path = self._path(record.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(asdict(record), indent=1, sort_keys=True))
        with self._lock:
            os.replace(tmp, path)
            self._records[record.name] = record

    def in_location(self, project: str, region: str) -> list[Record]:
        """The project's functions in `region` (``-``: every region), sorted by name."""
        return sorted((r for r in self._records.values()
                       if r.project == project and region in ("-", r.region)), key=lambda r: r.name)

    def all(self) -> list[Record]:
        return sorted(self._records.values(), key=lambda r: r.name)

    def _path(self, name: str) -> Path:
        project, region, function_id = split_name(name)
        return self.root / project / region / f"{function_id}.json"

    def _load(self) -> Iterator[Record]:
        for path in sorted(self.root.glob("*/*/*.json")):
            data = json.loads(path.read_text())
            source = data.pop("source", None)
            yield Record(**data, source=tuple(source) if source else None)
