"""What the local Cloud Run keeps: services, revisions, IAM policies and URL ports, on disk.

One JSON document (``STATE_DIR/state.json``), rewritten atomically (temp file + os.replace)
after changes, so a restarted local cloud finds its services, and their URLs on the same
ports. Messages are stored in their proto3 JSON form (`to_json` / `from_json`). The document is
written behind (`Store`): a burst of changes (ten deploys at once make dozens) is one write,
at most `SAVE_DELAY_S` after the first of them, and closing writes what is pending; only a
local cloud killed outright (SIGKILL) can lose its last `SAVE_DELAY_S` of changes.

Saving stays cheap with many services: the stored messages are kept in `Tracked` mappings
that note the keys set or removed since the last save, and each message's JSON text is kept
(`_Rendered`) and made again only for those, so a save encodes what changed and joins the
other texts, whatever the number of services; the document is compact JSON (one line). So a
stored message is never changed in place: a change stores a changed copy (`state.services[name]
= changed`), which is what marks it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import ItemsView, Iterator, Mapping, MutableMapping, Sequence, ValuesView
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.cloud import run_v2
from google.iam.v1 import policy_pb2
from google.protobuf import json_format

from cf2run.localcloud.cloudrun.rules import violation

FILENAME = "state.json"
#: How long a change waits for the ones after it before the state is written.
SAVE_DELAY_S = 0.2
T = TypeVar("T")
V = TypeVar("V")


def tag_key(service_name: str, tag: str) -> str:
    """The router key (and port key) of a traffic tag's URL."""
    return f"{service_name}#{tag}"


class Tracked(MutableMapping[str, V], Generic[V]):
    """A dict of stored messages that notes which keys were set or removed (`take_changed`)."""

    def __init__(self, items: Mapping[str, V] | None = None) -> None:
        self._items: dict[str, V] = dict(items or {})
        self._changed: set[str] = set(self._items)

    def __getitem__(self, key: str) -> V:
        return self._items[key]

    def __setitem__(self, key: str, value: V) -> None:
        self._items[key] = value
        self._changed.add(key)

    def __delitem__(self, key: str) -> None:
        del self._items[key]
        self._changed.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def values(self) -> ValuesView[V]:
        return self._items.values()

    def items(self) -> ItemsView[str, V]:
        return self._items.items()

    def take_changed(self) -> set[str]:
        """The keys set or removed since the last call."""
        changed, self._changed = self._changed, set()
        return changed


@dataclass
class CloudRunState:
    """Everything the local Cloud Run knows, keyed by full resource names."""

    services: Tracked[run_v2.Service] = field(default_factory=Tracked)
    revisions: Tracked[run_v2.Revision] = field(default_factory=Tracked)
    #: the (defaults-filled) template each revision was made from
    templates: Tracked[run_v2.RevisionTemplate] = field(default_factory=Tracked)
    policies: Tracked[policy_pb2.Policy] = field(default_factory=Tracked)
    #: router key (service name, or `tag_key`) -> the port its URL listens on
    ports: dict[str, int] = field(default_factory=dict)
    _rendered: dict[str, _Rendered] = field(default_factory=dict, repr=False, compare=False)

    def revisions_of(self, service_name: str) -> list[run_v2.Revision]:
        return [r for r in self.revisions.values() if r.service == service_name]

    def render(self) -> str:
        """The state as its JSON document (hold the store's lock: it reads the changed messages)."""
        services = self._texts("services", self.services, run_v2.Service)
        revisions = self._texts("revisions", self.revisions, run_v2.Revision)
        templates = self._texts("templates", self.templates, run_v2.RevisionTemplate)
        policies = self._texts("policies", self.policies, None)
        return "".join(['{"policies":{', ",".join(policies.member(key) for key in sorted(self.policies)),
                        '},"ports":', _compact(self.ports),
                        ',"revisions":[', ",".join(revisions.text(key) for key in self.revisions),
                        '],"services":[', ",".join(services.text(key) for key in self.services),
                        '],"templates":{', ",".join(templates.member(key) for key in sorted(self.templates)),
                        "}}\n"])

    def _texts(self, kind: str, messages: Tracked[Any], message_type: Any) -> _Rendered:
        rendered = self._rendered.setdefault(kind, _Rendered(message_type))
        rendered.update(messages)
        return rendered

    @classmethod
    def load(cls, state_dir: Path) -> CloudRunState:
        path = state_dir / FILENAME
        if not path.exists():
            return cls()
        document = json.loads(path.read_text())
        services = [_from_dict(run_v2.Service, d) for d in document.get("services", [])]
        revisions = [_from_dict(run_v2.Revision, d) for d in document.get("revisions", [])]
        return cls(
            services=Tracked({s.name: s for s in services}),
            revisions=Tracked({r.name: r for r in revisions}),
            templates=Tracked({name: _from_dict(run_v2.RevisionTemplate, d)
                               for name, d in document.get("templates", {}).items()}),
            policies=Tracked({name: json_format.ParseDict(d, policy_pb2.Policy())
                              for name, d in document.get("policies", {}).items()}),
            ports={key: int(port) for key, port in document.get("ports", {}).items()},
        )


class Store:
    """The state, the one lock that guards it, and writing it behind changes.

    Hold `lock` while reading or changing `state`, and call `save()` before letting go of it
    after a change; never hold it while waiting on a process or a socket. A writer thread
    writes the state at most `SAVE_DELAY_S` after a change, one write for all the changes of
    that time. `close()` (the local cloud is stopping) writes what is pending and saves nothing
    after: what shutting down does to revisions is not a change a restart should see.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.lock = threading.Lock()
        self.state = CloudRunState.load(self.dir)
        self.closed = False
        self._pending = False
        self._changed = threading.Condition(self.lock)
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_behind, name="cloudrun-state", daemon=True)
        self._writer.start()

    def save(self) -> None:
        """The state changed (call with `lock` held); it is written shortly."""
        if not self.closed:
            self._pending = True
            self._changed.notify()

    def close(self) -> None:
        """Write what is pending and stop saving (call without `lock`)."""
        with self.lock:
            self.closed = True
            text = self.state.render() if self._pending else None
            self._pending = False
            self._changed.notify()
        self._closing.set()
        self._writer.join()
        if text is not None:
            write(self.dir, text)

    def _write_behind(self) -> None:
        while True:
            with self.lock:
                while not (self._pending or self.closed):
                    self._changed.wait()
                if self.closed:
                    return  # close() writes what is pending
            self._closing.wait(SAVE_DELAY_S)  # the changes that follow go in the same write
            with self.lock:
                if self.closed:
                    return
                self._pending = False
                text = self.state.render()
            write(self.dir, text)


def write(state_dir: Path, text: str) -> None:
    """Replace the state document with `text`, atomically (only the store's writer or its
    `close()` writes, one after the other)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILENAME
    tmp = path.with_name(f".{FILENAME}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Rendered:
    """The JSON text of each message of one `Tracked` mapping (and its ``"key":text`` member of a
    JSON object), made again only for the keys it says changed (`message_type`: a proto-plus
    type, or None for protobuf messages)."""

    def __init__(self, message_type: Any) -> None:
        self._type = message_type
        self._texts: dict[str, tuple[str, str]] = {}

    def update(self, messages: Tracked[Any]) -> None:
        """Encode the messages changed since the last update; forget the removed ones."""
        for key in messages.take_changed():
            message = messages.get(key)
            if message is None:
                self._texts.pop(key, None)
                continue
            if self._type is not None:
                text = _compact(json.loads(self._type.to_json(message, indent=None)))
            else:
                text = _compact(json_format.MessageToDict(message))
            self._texts[key] = (text, f"{json.dumps(key)}:{text}")

    def text(self, key: str) -> str:
        return self._texts[key][0]

    def member(self, key: str) -> str:
        return self._texts[key][1]


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _from_dict(message_type: Any, data: Any) -> Any:
    return message_type.from_json(json.dumps(data), ignore_unknown_fields=True)


def page(items: Sequence[T], page_size: int, page_token: str, field: str) -> tuple[list[T], str]:
    """One page of `items` and the token of the next one ('' at the end)."""
    try:
        start = int(page_token) if page_token else 0
    except ValueError:
        start = -1
    if start < 0 or start > len(items):
        raise violation(f"{field}.page_token", f"invalid page token {page_token!r}; pass the "
                                               "next_page_token of the previous page.")
    if page_size < 0:
        raise violation(f"{field}.page_size", "must not be negative.")
    end = len(items) if page_size == 0 else min(len(items), start + page_size)
    return list(items[start:end]), str(end) if end < len(items) else ""
