"""Parity: whether the new service answers like the old function (pure functions, no I/O).

Each request's two answers are compared as the manifest's `parity` section says: the status
always; the body byte for byte (`exact`), JSON-equal (`json`), JSON-equal when both bodies are
JSON else byte for byte (`auto`), or not at all (`status`); with `json_fields`, only those parts
of the JSON bodies; and the named response headers. A difference is one short line saying
where, with both values:

    status: old 200, new 500
    body line 3: old 'total: 10', new 'total: 11'
    body $.order.total: old 10, new 11
    header content-type: old 'text/plain', new 'application/json'

Event functions whose old function is called through CallFunction are compared on whether each
accepted the event (`acceptance_difference`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cf2run.manifest.spec_parts import ParityCheck

#: Characters of a value shown in a difference.
SHOWN_CHARS = 60


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


#: A JSON path that one body does not have.
MISSING: Any = _Missing()


@dataclass(frozen=True)
class Answer:
    """What one side answered: status, body and the compared headers (lower-case names; None =
    absent). `status` None: no answer at all, `error` says why."""

    status: int | None
    body: bytes = b""
    headers: Mapping[str, str | None] = field(default_factory=dict)
    error: str | None = None

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else f"no answer ({self.error})"


def differences(old: Answer, new: Answer, check: ParityCheck) -> list[str]:
    """Where `new` differs from `old` as `check` compares them; empty = the same."""
    if old.status is None or new.status is None:  # parity is not shown when either is silent
        return [f"answer: old {old.describe()}, new {new.describe()}"]
    if old.status != new.status:
        found = [f"status: old {old.status}, new {new.status}"]
    else:
        body = body_difference(old.body, new.body, check)
        found = [body] if body else []
    return found + header_differences(old.headers, new.headers, check.headers)


def body_difference(old: bytes, new: bytes, check: ParityCheck) -> str | None:
    """The first difference between two bodies, or None when `check` calls them the same."""
    if check.compare == "status":
        return None
    if check.compare in ("auto", "json"):
        old_json, new_json = parse_json(old), parse_json(new)
        if old_json is not MISSING and new_json is not MISSING:
            return json_difference(old_json, new_json, check.json_fields)
        if check.compare == "json":
            which = " and ".join(side for side, doc in (("old", old_json), ("new", new_json))
                                 if doc is MISSING)
            return f"body: not JSON ({which}), but compare is json"
    return line_difference(old, new)


def parse_json(body: bytes) -> Any:
    """The body as JSON, or MISSING when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return MISSING


def line_difference(old: bytes, new: bytes) -> str | None:
    """The first line (1-based) where two bodies differ, with both lines; None when byte-equal."""
    if old == new:
        return None
    old_lines = old.decode("utf-8", "replace").splitlines(keepends=True)
    new_lines = new.decode("utf-8", "replace").splitlines(keepends=True)
    for number in range(max(len(old_lines), len(new_lines))):
        a = old_lines[number] if number < len(old_lines) else MISSING
        b = new_lines[number] if number < len(new_lines) else MISSING
        if a != b:
            where = f"body line {number + 1}"
            if isinstance(a, str) and isinstance(b, str) and a.rstrip("\r\n") == b.rstrip("\r\n"):
                return f"{where}: line endings differ: old {a!r}, new {b!r}"
            return f"{where}: old {shown(a)}, new {shown(b)}"
    return "body: same text, different bytes"  # invalid UTF-8 replaced alike on both sides


def json_difference(old: Any, new: Any, fields: list[str]) -> str | None:
    """The first JSON path where the documents differ (only `fields`, when given)."""
    pairs = [(f"$.{path}", lookup(old, path), lookup(new, path)) for path in fields] or [("$", old, new)]
    for path, a, b in pairs:
        found = first_json_difference(a, b, path)
        if found:
            where, value_a, value_b = found
            return f"body {where}: old {shown(value_a, as_json=True)}, new {shown(value_b, as_json=True)}"
    return None


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted path (keys, or indexes into lists), or MISSING."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def first_json_difference(a: Any, b: Any, path: str = "$") -> tuple[str, Any, Any] | None:
    """(path, a's value, b's value) of the first difference, keys in sorted order; None when the
    two are JSON-equal (1 and 1.0 are, true and 1 are not)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            found = first_json_difference(a.get(key, MISSING), b.get(key, MISSING), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            found = first_json_difference(a[index] if index < len(a) else MISSING,
                                          b[index] if index < len(b) else MISSING, f"{path}.{index}")
            if found:
                return found
        return None
    return None if _json_equal(a, b) else (path, a, b)


def _json_equal(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return isinstance(a, bool) == isinstance(b, bool) and a == b
    return type(a) is type(b) and a == b


def header_differences(old: Mapping[str, str | None], new: Mapping[str, str | None],
                       names: list[str]) -> list[str]:
    """One line per named header whose values differ (None = absent)."""
    def value(headers: Mapping[str, str | None], name: str) -> Any:
        found = headers.get(name)
        return MISSING if found is None else found

    return [f"header {name}: old {shown(value(old, name))}, new {shown(value(new, name))}"
            for name in names if old.get(name) != new.get(name)]


def acceptance_difference(old_error: str | None, new: Answer) -> str | None:
    """Event functions: whether the old one accepted the event (no CallFunction error) and the new
    one did too (a 2xx status); None when both did."""
    new_accepted = new.status is not None and 200 <= new.status < 300
    if old_error is None and new_accepted:
        return None
    old_said = "accepted" if old_error is None else f"error {shown(old_error)}"
    new_said = "accepted" if new_accepted else new.describe()
    if old_error is not None and not new_accepted:
        return f"neither accepted it: old {old_said}, new {new_said}"
    return f"old {old_said}, new {new_said}"


COMPARED = {"auto": "status and body (JSON-equal when both are JSON)", "exact": "status and body byte "
            "for byte", "json": "status and JSON body", "status": "status only"}


def planned(check: ParityCheck) -> str | None:
    """What the parity step will compare against, in one line (`cf2run plan`); None: no check."""
    if not check.enabled:
        return None
    outcome = "fails the migration" if check.on_difference == "fail" else "is a warning (promoted anyway)"
    if check.old_function:
        return (f"the smoke event's data to {check.old_function} through CallFunction, the event to the "
                f"candidate; each must accept it; a difference {outcome}")
    compared = COMPARED[check.compare]
    if check.json_fields:
        compared += f" (only {', '.join(check.json_fields)})"
    if check.headers:
        compared += f", headers {', '.join(check.headers)}"
    return (f"{1 + len(check.requests)} request(s) to {check.old_url} and to the candidate; compares "
            f"{compared}; a difference {outcome}")


def shown(value: Any, *, as_json: bool = False) -> str:
    """A value as a difference shows it, cut at SHOWN_CHARS: a JSON value as JSON, text (a line
    without its line ending, a header) quoted."""
    if value is MISSING:
        return repr(value)
    text = json.dumps(value, sort_keys=True) if as_json else repr(value.rstrip("\r\n"))
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."
