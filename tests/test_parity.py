"""Parity's comparison (cf2run/parity.py, pure functions) and the manifest's `parity` section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cf2run.errors import SpecError
from cf2run.manifest.spec import load_manifest
from cf2run.manifest.spec_parts import ParityCheck
from cf2run.parity import (
    MISSING,
    Answer,
    acceptance_difference,
    differences,
    first_json_difference,
    planned,
)


def check(**fields: Any) -> ParityCheck:
    return ParityCheck.model_validate({"old_url": "https://us-central1-p.cloudfunctions.net/f", **fields})


def answer(body: Any = b"", status: int = 200, headers: dict[str, str | None] | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status=status, body=raw, headers=headers or {})


def test_equal_answers_are_the_same() -> None:
    assert differences(answer(b"hello\n"), answer(b"hello\n"), check()) == []


def test_status_difference_names_both_statuses() -> None:
    assert differences(answer(b"x"), answer(b"x", status=500), check()) == ["status: old 200, new 500"]


def test_exact_gives_the_first_differing_line() -> None:
    old, new = answer(b"total\norder 42: 10\nend\n"), answer(b"total\norder 42: 11\nend\n")
    assert differences(old, new, check(compare="exact")) == [
        "body line 2: old 'order 42: 10', new 'order 42: 11'"]


def test_exact_sees_a_missing_last_line_and_a_changed_line_ending() -> None:
    assert differences(answer(b"a\nb\n"), answer(b"a\n"), check(compare="exact")) == [
        "body line 2: old 'b', new (missing)"]
    assert differences(answer(b"a\n"), answer(b"a"), check(compare="exact")) == [
        "body line 1: line endings differ: old 'a\\n', new 'a'"]


def test_auto_compares_json_bodies_as_json() -> None:
    """Key order and spacing are not differences when both bodies are JSON; a value is."""
    old = answer(b'{"id": 1, "items": [{"sku": "a"}]}')
    same = answer(b'{"items":[{"sku":"a"}],"id":1}')
    assert differences(old, same, check()) == []
    assert differences(old, same, check(compare="exact")) == [
        "body line 1: old '{\"id\": 1, \"items\": [{\"sku\": \"a\"}]}', "
        "new '{\"items\":[{\"sku\":\"a\"}],\"id\":1}'"]
    changed = answer({"id": 1, "items": [{"sku": "b"}]})
    assert differences(old, changed, check()) == ['body $.items.0.sku: old "a", new "b"']


def test_auto_falls_back_to_bytes_when_a_body_is_not_json() -> None:
    assert differences(answer(b"{}"), answer(b"hello"), check()) == ["body line 1: old '{}', new 'hello'"]


def test_json_compare_refuses_a_body_that_is_not_json() -> None:
    assert differences(answer(b"{}"), answer(b"hello"), check(compare="json")) == [
        "body: not JSON (new), but compare is json"]


def test_json_fields_compare_only_the_named_parts() -> None:
    fields = check(json_fields=["order.id", "items.0.sku"])
    old = answer({"order": {"id": 7, "at": "10:00"}, "items": [{"sku": "a", "n": 1}], "request_id": "x"})
    new = answer({"order": {"id": 7, "at": "10:01"}, "items": [{"sku": "a", "n": 2}], "request_id": "y"})
    assert differences(old, new, fields) == []
    assert differences(old, new, check()) == ['body $.items.0.n: old 1, new 2']
    gone = answer({"order": {"at": "10:00"}, "items": [{"sku": "a"}]})
    assert differences(old, gone, fields) == ["body $.order.id: old 7, new (missing)"]


def test_json_equality_tells_true_from_1_but_not_1_from_1_0() -> None:
    assert first_json_difference({"n": 1}, {"n": 1.0}) is None
    assert first_json_difference({"n": 1}, {"n": True}) == ("$.n", 1, True)
    assert first_json_difference([1, 2], [1]) == ("$.1", 2, MISSING)


def test_status_compare_ignores_the_body() -> None:
    assert differences(answer(b"a"), answer(b"b"), check(compare="status")) == []


def test_chosen_headers_are_compared_case_insensitively_named() -> None:
    names = check(headers=["Content-Type", "x-version"])
    assert names.headers == ["content-type", "x-version"]
    old = answer(b"a", headers={"content-type": "text/plain", "x-version": "1"})
    new = answer(b"a", headers={"content-type": "application/json", "x-version": None})
    assert differences(old, new, names) == [
        "header content-type: old 'text/plain', new 'application/json'",
        "header x-version: old '1', new (missing)"]


def test_no_answer_is_never_the_same() -> None:
    silent = Answer(status=None, error="ConnectError after 3 attempts")
    assert differences(silent, silent, check()) == [
        "answer: old no answer (ConnectError after 3 attempts), "
        "new no answer (ConnectError after 3 attempts)"]
    assert differences(answer(b"a"), silent, check()) == [
        "answer: old HTTP 200, new no answer (ConnectError after 3 attempts)"]


def test_event_functions_compare_whether_each_accepted_the_event() -> None:
    assert acceptance_difference(None, answer(status=204)) is None
    assert acceptance_difference(None, answer(status=500)) == "old accepted, new HTTP 500"
    assert acceptance_difference("TypeError: boom", answer(status=200)) == \
        "old error 'TypeError: boom', new accepted"
    assert acceptance_difference("x", answer(status=500)) == \
        "neither accepted it: old error 'x', new HTTP 500"


def test_long_values_are_cut() -> None:
    found = differences(answer(b"a" * 500), answer(b"b" * 500), check())
    assert len(found[0]) < 160 and found[0].endswith("...")


# -- the manifest ---------------------------------------------------------------------------


def load(tmp_path: Path, parity: str, extra: str = "") -> Any:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "main.py").write_text("def hello(request):\n    return 'hi'\n")
    (tmp_path / "manifest.yaml").write_text(
        f"functions:\n  - name: f1\n    source: src\n    runtime: python311\n    entry_point: hello\n"
        f"{extra}    parity: {parity}\n")
    return load_manifest(tmp_path / "manifest.yaml").functions[0]


@pytest.mark.parametrize(("parity", "extra", "says"), [
    ("{old_url: 'ftp://host/f'}", "", "parity.old_url: old_url 'ftp://host/f' is not an http(s) URL"),
    ("{old_url: 'https://h/f?x=1'}", "", "has a query or fragment"),
    ("{old_function: 'projects/p/locations/us-central1/functions/f'}", "",
     "is for event functions (called through CallFunction); an http function is compared over HTTP"),
    ("{old_function: 'functions/f'}", "    signature_type: event\n",
     "is not a Cloud Functions resource name"),
    ("{old_url: 'https://h/f', old_function: 'projects/p/locations/us-central1/functions/f'}",
     "    signature_type: event\n", "parity sets both old_url and old_function"),
    ("{old_url: 'https://h/f', compare: exact, json_fields: [id]}", "",
     "json_fields compares parts of JSON bodies, but compare is 'exact'"),
    ("{old_url: 'https://h/f', json_fields: ['a..b']}", "", "'a..b' is not a dotted path"),
    ("{old_url: 'https://h/f', headers: ['content type']}", "", "'content type' is not an HTTP header name"),
    ("{old_function: 'projects/p/locations/us-central1/functions/f', headers: [etag]}",
     "    signature_type: cloudevent\n", "parity.headers needs HTTP answers"),
    ("{old_url: 'https://h/f', on_difference: ignore}", "", "parity.on_difference"),
    ("{old_url: 'https://h/f', requests: [{path: orders}]}", "", "parity.requests[0].path"),
])
def test_bad_parity_sections_are_refused_naming_the_field(tmp_path: Path, parity: str, extra: str,
                                                          says: str) -> None:
    with pytest.raises(SpecError, match="functions\\[0\\] \\(f1\\)") as raised:
        load(tmp_path, parity, extra)
    assert says in str(raised.value)


def test_a_parity_section_loads(tmp_path: Path) -> None:
    spec = load(tmp_path, "{old_url: 'https://us-central1-p.cloudfunctions.net/f1', compare: json, "
                          "json_fields: [order.id], headers: [Content-Type], on_difference: warn, "
                          "requests: [{method: POST, path: /orders, json: {id: 1}}]}")
    assert spec.parity.enabled and spec.parity.headers == ["content-type"]
    assert spec.parity.requests[0].json_body == {"id": 1}
    event = load(tmp_path, "{old_function: 'projects/p/locations/us-central1/functions/f1'}",
                 "    signature_type: event\n")
    assert event.parity.enabled
    assert not load(tmp_path, "{}").parity.enabled


def test_plan_line_says_what_parity_compares_against() -> None:
    assert planned(ParityCheck()) is None
    event = ParityCheck(old_function="projects/p/locations/us-central1/functions/orders")
    assert planned(event) == ("the smoke event's data to projects/p/locations/us-central1/functions/orders "
                              "through CallFunction, the event to the candidate; each must accept it; a "
                              "difference fails the migration")
    assert planned(check(compare="status")) == (
        "1 request(s) to https://us-central1-p.cloudfunctions.net/f and to the candidate; compares "
        "status only; a difference fails the migration")
