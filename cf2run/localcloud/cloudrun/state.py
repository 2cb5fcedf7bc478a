"""What the local Cloud Run keeps: services, revisions, IAM policies and URL ports, on disk.

One JSON document (``STATE_DIR/state.json``), rewritten atomically (temp file + os.replace)
after changes, so a restarted local cloud finds its services, and their URLs on the same
ports. Messages are stored in their proto3 JSON form (`to_json` / `from_json`). The document is
written behind (`Store`): a burst of changes (ten deploys at once make dozens) is one write,
at most `SAVE_DELAY_S` after the first of them, and closing writes what is pending; only a
local cloud killed outright (SIGKILL) can lose its last `SAVE_DELAY_S` of changes.

Saving stays cheap with many services: each message's JSON text is kept beside its binary
form (`_Rendered`) and made again only when that changed, so a save re-encodes what the change
touched and joins the rest; the document is compact JSON (one line).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.cloud import run_v2
from google.iam.v1 import policy_pb2
from google.protobuf import json_format

from cf2run.localcloud.cloudrun.rules import violation

FILENAME = "state.json"
#: How long a change waits for the ones after it before the state is written.
SAVE_DELAY_S = 0.2
T = TypeVar("T")


def tag_key(service_name: str, tag: str) -> str:
    """The router key (and port key) of a traffic tag's URL."""
    return f"{service_name}#{tag}"


@dataclass
class CloudRunState:
    """Everything the local Cloud Run knows, keyed by full resource names."""

    services: dict[str, run_v2.Service] = field(default_factory=dict)
    revisions: dict[str, run_v2.Revision] = field(default_factory=dict)
    #: the (defaults-filled) template each revision was made from
    templates: dict[str, run_v2.RevisionTemplate] = field(default_factory=dict)
    policies: dict[str, policy_pb2.Policy] = field(default_factory=dict)
    #: router key (service name, or `tag_key`) -> the port its URL listens on
    ports: dict[str, int] = field(default_factory=dict)
    _rendered: _Rendered = field(default_factory=lambda: _Rendered(), repr=False, compare=False)

    def revisions_of(self, service_name: str) -> list[run_v2.Revision]:
        return [r for r in self.revisions.values() if r.service == service_name]

    def render(self) -> str:
        """The state as its JSON document (hold the store's lock: it reads every message)."""
        render = self._rendered.start()
        services = [render(name, run_v2.Service, s) for name, s in self.services.items()]
        revisions = [render(name, run_v2.Revision, r) for name, r in self.revisions.items()]
        templates = {name: render("template " + name, run_v2.RevisionTemplate, t)
                     for name, t in self.templates.items()}
        policies = {name: render("policy " + name, None, p) for name, p in self.policies.items()}
        self._rendered.finish()
        return ('{"policies":' + _json_object(policies) + ',"ports":' + _compact(self.ports)
                + ',"revisions":[' + ",".join(revisions) + '],"services":[' + ",".join(services)
                + '],"templates":' + _json_object(templates) + "}\n")

    @classmethod
    def load(cls, state_dir: Path) -> CloudRunState:
        path = state_dir / FILENAME
        if not path.exists():
            return cls()
        document = json.loads(path.read_text())
        services = [_from_dict(run_v2.Service, d) for d in document.get("services", [])]
        revisions = [_from_dict(run_v2.Revision, d) for d in document.get("revisions", [])]
        return cls(
            services={s.name: s for s in services},
            revisions={r.name: r for r in revisions},
            templates={name: _from_dict(run_v2.RevisionTemplate, d)
                       for name, d in document.get("templates", {}).items()},
            policies={name: json_format.ParseDict(d, policy_pb2.Policy())
                      for name, d in document.get("policies", {}).items()},
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
    """The JSON text of each stored message, by key, with the binary form it was made from."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[bytes, str]] = {}
        self._used: dict[str, tuple[bytes, str]] = {}

    def start(self) -> Callable[[str, Any, Any], str]:
        """A renderer for one save: `render(key, proto-plus type or None for a protobuf
        message, message)` -> its JSON text, made again only if the message changed."""
        self._used = {}

        def render(key: str, message_type: Any, message: Any) -> str:
            binary = (message_type.serialize(message) if message_type is not None
                      else message.SerializeToString())
            known = self._texts.get(key)
            if known is None or known[0] != binary:
                data = (message_type.to_json(message, indent=None) if message_type is not None
                        else json.dumps(json_format.MessageToDict(message)))
                known = (binary, _compact(json.loads(data)))
            self._used[key] = known
            return known[1]

        return render

    def finish(self) -> None:
        """Forget the messages the last save did not see (deleted ones)."""
        self._texts = self._used


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _json_object(texts: dict[str, str]) -> str:
    """A JSON object from keys and already-encoded values, keys sorted."""
    return "{" + ",".join(f"{json.dumps(key)}:{text}" for key, text in sorted(texts.items())) + "}"


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
