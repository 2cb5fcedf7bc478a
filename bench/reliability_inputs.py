"""The bad-input corpus of bench/reliability.py: manifests, sources and flags a careless or
hostile user could hand `cf2run plan`, generated from the manifest's fields.

Each `BadInput` writes its case into a directory and names what a clear refusal must mention
(a field or a file): the suite counts it refused clearly when `cf2run plan` exits 2, says that
word, shows no traceback or internal class name, and the local cloud received no call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GOOD_SOURCE = "def hello(request):\n    return 'hi'\n"


@dataclass
class BadInput:
    """One bad input: `function` (and `target`) fields merged into a good manifest, or raw text."""

    label: str
    mentions: str
    function: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    top: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    prepare: Callable[[Path], None] | None = None

    def write(self, directory: Path, localcloud_dir: Path) -> Path:
        source = directory / "fn"
        source.mkdir(parents=True, exist_ok=True)
        (source / "main.py").write_text(GOOD_SOURCE)
        if self.prepare is not None:
            self.prepare(directory)
        path = directory / "manifest.yaml"
        if self.raw is not None:
            path.write_bytes(self.raw)
            return path
        function = {"name": "fn-ok", "source": "fn", "runtime": "python311", "entry_point": "hello",
                    **self.function}
        target = {"kind": "local", "localcloud_dir": str(localcloud_dir), **self.target}
        document: dict[str, Any] = {"target": target, "functions": [function], **self.top}
        for key, value in list(document.items()):
            if value is _DROP:
                del document[key]
        for key, value in list(function.items()):
            if value is _DROP:
                del function[key]
        path.write_text(yaml.safe_dump(document, allow_unicode=True))
        return path


_DROP = object()  # a field to leave out

#: Values of the wrong type for a field of each JSON-schema type.
_WRONG_TYPES: dict[str, list[Any]] = {
    "string": [["a", "list"], {"a": "map"}],
    "integer": ["many", [1], 1.5],
    "boolean": ["maybe", [True]],
    "object": ["a string", [1, 2]],
    "array": ["a string", {"a": 1}],
}

_FUNCTION_TYPES = {
    "name": "string", "source": "string", "runtime": "string", "entry_point": "string",
    "signature_type": "string", "env": "object", "build_env": "object", "memory": "string",
    "timeout_s": "integer", "concurrency": "integer", "min_instances": "integer",
    "max_instances": "integer", "ingress": "string", "labels": "object", "secret_env": "object",
    "secret_volumes": "array", "vpc_egress": "string", "allow_unauthenticated": "boolean",
    "invokers": "array", "build_env_plain": "array",
}
_TARGET_TYPES = {"kind": "string", "project": "string", "region": "string", "build_timeout_s": "integer"}


def _big_source(directory: Path) -> None:
    """A 600 MB sparse file in the source: over every Cloud Functions / Cloud Build source limit."""
    with open(directory / "fn" / "blob.bin", "wb") as handle:
        handle.truncate(600 * 1024 * 1024)


def _missing_source(directory: Path) -> None:
    (directory / "fn" / "main.py").unlink()


def _alias_bomb() -> bytes:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    lines += ["target: {kind: local}", "functions:", "  - {name: fn-ok, source: fn, runtime: python311,"
              " entry_point: hello, labels: {x: *a8}}"]
    return "\n".join(lines).encode()


def corpus() -> Iterator[BadInput]:
    """At least 100 bad inputs, systematically: every field with wrong types, then ranges, names,
    unknown fields, YAML and encoding problems, sources, secrets in build_env, flags."""
    for name, kind in _FUNCTION_TYPES.items():
        for value in _WRONG_TYPES[kind]:
            yield BadInput(f"functions[0].{name} = {value!r}", name, function={name: value})
    for name, kind in _TARGET_TYPES.items():
        for value in _WRONG_TYPES[kind]:
            yield BadInput(f"target.{name} = {value!r}", name, target={name: value})
    # Out of range and values Google refuses.
    for name, value in [("timeout_s", 0), ("timeout_s", -5), ("timeout_s", 3601), ("concurrency", 0),
                        ("concurrency", 1001), ("min_instances", -1), ("max_instances", 0),
                        ("memory", "256"), ("memory", "64Ti"), ("memory", "lots"), ("cpu", "9"),
                        ("cpu", "0.01"), ("runtime", "python2"), ("runtime", "cobol"),
                        ("ingress", "everyone"), ("vpc_egress", "some"), ("signature_type", "ftp"),
                        ("entry_point", "not valid!"), ("entry_point", ""), ("timeout_s", True)]:
        yield BadInput(f"functions[0].{name} = {value!r}", name, function={name: value})
    yield BadInput("cpu 4 with memory 256Mi (Cloud Run refuses)", "cpu",
                   function={"cpu": "4", "memory": "256Mi"})
    yield BadInput("env value an int", "DEBUG", function={"env": {"DEBUG": 1}})
    yield BadInput("env name with '='", "env", function={"env": {"A=B": "x"}})
    yield BadInput("env reserved name PORT", "PORT", function={"env": {"PORT": "8080"}})
    yield BadInput("labels key with capitals", "labels", function={"labels": {"Team": "x"}})
    yield BadInput("secret_env bad reference", "secret_env", function={"secret_env": {"K": "::"}})
    # Names.
    for value in ["Bad_Name", "-lead", "x" * 64, "", "has space", "ünï", "end-"]:
        yield BadInput(f"name = {value!r}", "name", function={"name": value})
    for value in ["Bad Project", "x", "us central1"]:
        yield BadInput(f"target project/region = {value!r}", "project" if " P" in value or value == "x"
                       else "region", target={"project" if value != "us central1" else "region": value})
    # Unknown and misspelled fields.
    for name in ["memroy", "expect_code", "enviroment", "timeout", "min_instance", "entrypoint"]:
        yield BadInput(f"unknown field functions[0].{name}", name, function={name: "x"})
    yield BadInput("smoke.expect_code", "expect_code", function={"smoke": {"expect_code": 200}})
    yield BadInput("unknown field target.zone", "zone", target={"zone": "a"})
    yield BadInput("unknown top-level key", "extras", top={"extras": 1})
    # Missing required pieces.
    for name in ["name", "source", "runtime", "entry_point"]:
        yield BadInput(f"functions[0] without {name}", name, function={name: _DROP})
    yield BadInput("no functions: key", "functions", top={"functions": _DROP})
    yield BadInput("functions: []", "functions", top={"functions": []})
    yield BadInput("functions: a string", "functions", top={"functions": "fn"})
    yield BadInput("target: a string", "target", top={"target": "local"})
    # YAML, encoding and file problems.
    yield BadInput("YAML syntax error", "manifest.yaml", raw=b"functions: [\n  - name: x\n")
    yield BadInput("YAML tabs", "manifest.yaml", raw=b"functions:\n\t- name: x\n")
    yield BadInput("YAML duplicate key", "name", raw=b"functions:\n  - name: a\n    name: b\n")
    yield BadInput("YAML python tag", "manifest.yaml", raw=b"functions: !!python/object:os.system {}\n")
    yield BadInput("YAML alias bomb", "alias", raw=_alias_bomb())
    yield BadInput("non-UTF-8 manifest", "UTF-8", raw="functions:\n  - name: caf\xe9\n".encode("latin-1"))
    yield BadInput("UTF-16 manifest", "UTF-8", raw="functions: []\n".encode("utf-16"))
    yield BadInput("empty manifest", "functions", raw=b"")
    yield BadInput("manifest a list", "manifest.yaml", raw=b"- a\n- b\n")
    yield BadInput("manifest a scalar", "manifest.yaml", raw=b"42\n")
    # Sources.
    yield BadInput("source directory missing", "source", function={"source": "nowhere"})
    yield BadInput("source is a file", "source", function={"source": "fn/main.py"})
    yield BadInput("source directory empty", "source", prepare=_missing_source)
    yield BadInput("source over the size limits", "MB", prepare=_big_source)
    # Secrets in build_env.
    for value in ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "a" * 36, "-----BEGIN PRIVATE KEY-----",
                  "xoxb-1234-5678-abcdefghijkl", "sk_live_" + "a" * 24]:
        yield BadInput(f"credential-like build_env value {value[:12]}...", "build_env",
                       function={"build_env": {"TOKEN": value}})
    # Flags.
    yield BadInput("--target mars", "--target", args=["--target", "mars"])
    yield BadInput("--only a function not in the manifest", "nope", args=["--only", "nope"])
    yield BadInput("two functions with one name", "fn-ok", top={"functions": [
        {"name": "fn-ok", "source": "fn", "runtime": "python311", "entry_point": "hello"}] * 2})
