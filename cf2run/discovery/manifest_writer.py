"""Discovered entries -> the manifest's YAML text, every value with its origin as a comment.

The text is built line by line (PyYAML drops comments); each value is dumped by PyYAML, so it
reads back exactly (quoting of '1', 'on', ...). The result loads with `cf2run.manifest.spec.load_manifest`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cf2run.discovery.entry import Entry
from cf2run.manifest.spec import DEFAULT_BUILDER, UBUNTU18_BUILDER, UBUNTU18_RUNTIMES

COMMENT_COLUMN = 40
WIDTH = 100
ITEM_INDENT = "  "
FIELD_INDENT = "    "


def render(entries: Sequence[Entry], *, kind: str, project: str, region: str,
           localcloud_dir: Path | None = None) -> str:
    """The whole manifest: a header, the target, then one entry per function."""
    lines = [
        f"# Written by `cf2run discover` from the 1st-gen functions of project {project}, region",
        f"# {region}. Each value's comment says where it came from; a setting that could not be",
        "# carried over is a '# not carried:' comment saying what to do. Write each function's smoke",
        "# request, then: cf2run plan THIS-FILE. Rerunning discover keeps this file once you edit",
        "# it (it refuses to overwrite it unless given --force).",
        "",
        "target:",
        *_target(entries, kind, project, region, localcloud_dir),
        "",
        "functions:",
    ]
    for entry in entries:
        lines += _entry(entry)
    return "\n".join(lines) + "\n"


def _target(entries: Sequence[Entry], kind: str, project: str, region: str,
            localcloud_dir: Path | None) -> list[str]:
    old = sorted({str(e.value) for entry in entries for e in entry.settings
                  if e.field == "runtime" and e.value in UBUNTU18_RUNTIMES})
    builder = (_field("builder", UBUNTU18_BUILDER, f"{', '.join(old)} build only on Google's Ubuntu 18 "
                      "stack (this builder's); newer runtimes build there too", ITEM_INDENT) if old
               else _field("builder", DEFAULT_BUILDER, "pinned: ':latest' moves between stacks", ITEM_INDENT))
    lines = [*_field("kind", kind, "--target", ITEM_INDENT),
             *_field("project", project, "the functions' project (--project)", ITEM_INDENT),
             *_field("region", region, "the functions' region", ITEM_INDENT), *builder]
    if localcloud_dir is not None:
        lines += _field("localcloud_dir", str(localcloud_dir), "--localcloud-dir", ITEM_INDENT)
    return lines


def _entry(entry: Entry) -> list[str]:
    lines = ["", f"{ITEM_INDENT}# {entry.function}"]
    lines += [f"{ITEM_INDENT}# {note}" for note in entry.notes]
    for index, setting in enumerate(entry.settings):
        indent = f"{ITEM_INDENT}- " if index == 0 else FIELD_INDENT
        lines += _field(setting.field, setting.value, setting.origin, indent)
    lines += _comment(_smoke_advice(entry), FIELD_INDENT)
    for item in entry.not_carried:
        lines += _comment(f"not carried: {item.setting}: {item.advice}", FIELD_INDENT)
    return lines


def _smoke_advice(entry: Entry) -> str:
    if any(setting.field == "trigger" for setting in entry.settings):
        return ("smoke: the default (an event of the trigger with sample data, expecting 200). Set "
                "trigger.data to an event this function accepts and smoke.expect_body to what "
                "proves it handled it")
    return ("smoke: the default (GET /, expecting 200). Write a request that proves this function "
            "works, e.g. {path: /?q=x, expect_body: TEXT ONLY IT ANSWERS}")


def _field(key: str, value: Any, origin: str, indent: str) -> list[str]:
    """``key: value  # origin``; a non-empty mapping or list goes below its key, in block style."""
    nested = isinstance(value, dict | list) and value
    head = f"{indent}{key}:" + ("" if nested else f" {scalar(value)}")
    lines = [f"{head.ljust(COMMENT_COLUMN)}  # {origin}" if len(head) < COMMENT_COLUMN
             else f"{head}  # {origin}"]
    if nested:
        child = " " * (len(indent) + 2)
        dumped = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, allow_unicode=True,
                                width=1000)
        lines += [child + line for line in dumped.splitlines()]
    return lines


def scalar(value: Any) -> str:
    """A value as one line of YAML (flow style for empty collections)."""
    dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1000)
    return dumped.removesuffix("\n").removesuffix("\n...").strip()


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, width=WIDTH, initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}#   ", break_on_hyphens=False,
                         break_long_words=False)
