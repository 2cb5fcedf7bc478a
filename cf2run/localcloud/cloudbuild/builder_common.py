"""What the local builder's language packs share: the build error, the build env, processes.

`builder.py` orchestrates a build; `builder_python.py` and `builder_node.py` know their
language; `image.py` writes layers and the image config. This module is what they all use.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cf2run.errors import BuildFailed
from cf2run.results import LOCAL_RUNTIME_NOTE_LABEL

Log = Callable[[str], None]

SIGNATURE_TYPES = ("http", "event", "cloudevent")
#: How many trailing output lines of a failed command go into the error message.
ERROR_TAIL_LINES = 25
#: GOOGLE_LABEL_<KEY>: KEY as the buildpacks accept it (gcpbuildpack's labelKeyRegexp).
LABEL_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class BuildError(BuildFailed):
    """The function cannot be built; the message says why, as the buildpacks would."""


class PushFailed(BuildError):
    """The image was built, but the registry refused it; `denial` is the registry's own words
    (as docker prints them: ``denied: Permission ...``)."""

    def __init__(self, image: str, denial: str, hint: str | None) -> None:
        self.image = image
        self.denial = denial
        super().__init__(f"pushing {image} failed: {denial}", hint=hint)


class BuildCancelled(BuildError):
    """The build was stopped from outside (cancelled, timed out, shutting down)."""


class CommandFailed(BuildError):
    """A build command exited non-zero (or ran too long); `output` is the tail of what it printed."""

    def __init__(self, message: str, output: str) -> None:
        self.output = output
        super().__init__(f"{message}:\n{output}")


@dataclass(frozen=True)
class FunctionEnv:
    """The build env (pack ``--env``) that a function build reads (REFERENCE §2)."""

    target: str
    signature_type: str = "http"
    source: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    python_version: str | None = None
    nodejs_version: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: str | None = None

    @classmethod
    def parse(cls, env: Mapping[str, str], log: Log) -> FunctionEnv:
        target = env.get("GOOGLE_FUNCTION_TARGET", "").strip()
        if not target:
            raise BuildError("GOOGLE_FUNCTION_TARGET is not set: a function build needs the name of "
                             "the function to serve",
                             hint="pass it to the build as --env GOOGLE_FUNCTION_TARGET=NAME")
        signature = env.get("GOOGLE_FUNCTION_SIGNATURE_TYPE", "").strip() or "http"
        if signature not in SIGNATURE_TYPES:
            raise BuildError(f"GOOGLE_FUNCTION_SIGNATURE_TYPE={signature!r} is not a signature type",
                             hint="use one of " + ", ".join(SIGNATURE_TYPES))
        return cls(
            target=target, signature_type=signature,
            source=env.get("GOOGLE_FUNCTION_SOURCE") or None,
            runtime=env.get("GOOGLE_RUNTIME") or None,
            runtime_version=env.get("GOOGLE_RUNTIME_VERSION") or None,
            python_version=env.get("GOOGLE_PYTHON_VERSION") or None,
            nodejs_version=env.get("GOOGLE_NODEJS_VERSION") or None,
            labels=_labels(env, log),
            entrypoint=env.get("GOOGLE_ENTRYPOINT") or None,
        )

    def launch_env(self) -> dict[str, str]:
        """The launch env defaults the functions buildpacks set (FUNCTION_*)."""
        values = {"FUNCTION_TARGET": self.target, "FUNCTION_SIGNATURE_TYPE": self.signature_type}
        if self.source:
            values["FUNCTION_SOURCE"] = self.source
        return values


def _labels(env: Mapping[str, str], log: Log) -> dict[str, str]:
    """GOOGLE_LABEL_<KEY>=V -> image label ``google.<key>`` (lowercase, ``_`` -> ``-``)."""
    labels = {}
    for name, value in sorted(env.items()):
        if not name.startswith("GOOGLE_LABEL_"):
            continue
        key = name.removeprefix("GOOGLE_LABEL_")
        if not LABEL_KEY_RE.match(key) or "__" in key:
            log(f"WARNING: Label {key!r} does not match {LABEL_KEY_RE.pattern} without '__', skipping.")
            continue
        labels["google." + key.lower().replace("_", "-")] = value
    return labels


@dataclass(frozen=True)
class RuntimeVersion:
    """Which version the build asked for (and where), and the host's, which it gets; `note`
    says so when they differ (`version_note`)."""

    language: str
    host: str
    requested: str | None = None
    requested_by: str | None = None
    note: str | None = None

    def labels(self) -> dict[str, str]:
        labels = {"cf2run.runtime.language": self.language, "cf2run.runtime.host-version": self.host}
        if self.requested:
            labels["cf2run.runtime.requested-version"] = self.requested
            labels["cf2run.runtime.requested-by"] = self.requested_by or ""
        if self.note:
            labels[LOCAL_RUNTIME_NOTE_LABEL] = self.note  # read by verify, shown in the report
        return labels


@dataclass(frozen=True)
class WebProcess:
    """The image's ``web`` process. Paths under /workspace and /layers are image-root paths."""

    command: list[str]
    args: list[str]
    buildpack_id: str


@dataclass(frozen=True)
class DependencyPlan:
    """How a pack installs dependencies: what keys the cache and which dir becomes the layer.

    `layer_dir` is relative to the build root (``layers/google.python.pip/pip``,
    ``workspace/node_modules``); `key_material` is hashed (with the language and version)
    into the dependency cache key.
    """

    layer_dir: str
    key_material: bytes
    buildpack_id: str


class PackBase:
    """What every language pack is built from: the source, the build env, a runner, the log."""

    def __init__(self, source_dir: Path, env: FunctionEnv, runner: Runner, log: Log) -> None:
        self.source_dir = source_dir
        self.env = env
        self.runner = runner
        self.log = log

    def build_source(self, workspace: Path) -> bool:
        """Run the source's own build step in `workspace` (a copy of the source); whether it
        ran, so that `workspace` and not the source is the app. None by default."""
        return False


class LanguagePack(Protocol):
    """One language's part of a function build (Python, Node.js)."""

    language: str
    functions_buildpack_id: str
    #: Whether `check_target` and `web_process` need the dependencies unpacked in the root.
    check_needs_dependencies: bool

    def runtime(self) -> RuntimeVersion: ...

    def check_source(self) -> None:
        """What can be checked on the source alone (entry file, syntax, ...)."""


    def build_source(self, workspace: Path) -> bool:
        """Run the source's own build step (Node's ``gcp-build``) in `workspace`, a copy of the
        source; whether it ran, making `workspace` the app (checked here, then)."""

    def dependencies(self) -> DependencyPlan: ...

    def install(self, root: Path) -> None: ...

    def check_target(self, root: Path) -> None:
        """What needs the dependencies installed under `root` (loading the function)."""


    def web_process(self, root: Path) -> WebProcess: ...

    def launch_env(self) -> dict[str, str]: ...

    def app_excludes(self) -> frozenset[str]: ...

    def buildpacks(self) -> list[str]: ...


def version_matches(requested: str, host: str) -> bool:
    """Whether the host's ``X.Y.Z`` satisfies a plain requested version (``3.12``, ``20``, ``20.x``)."""
    wanted = [part for part in requested.strip().lstrip("v=^~").split(".") if part not in ("x", "*", "")]
    have = host.lstrip("v").split(".")
    return have[: len(wanted)] == wanted


def version_note(runtime: RuntimeVersion, matches: Callable[[str, str], bool | None]) -> str | None:
    """When the host's version (which the image gets) is not the requested one, or may not be:
    ``python 3.11.9 (the host's), not 3.12 (GOOGLE_RUNTIME_VERSION)``; else None."""
    if not runtime.requested:
        return None
    verdict = matches(runtime.requested, runtime.host)
    if verdict:
        return None
    maybe = "maybe " if verdict is None else ""
    return (f"{runtime.language} {runtime.host} (the host's), {maybe}not {runtime.requested} "
            f"({runtime.requested_by})")


def warn_version(runtime: RuntimeVersion, log: Log, matches: Callable[[str, str], bool | None]) -> None:
    """Log (never fail) when the requested version differs from the host's, which is used."""
    if not runtime.requested:
        log(f"Using the host's {runtime.language} {runtime.host} (no version requested).")
        return
    verdict = matches(runtime.requested, runtime.host)
    if verdict is None:
        log(f"WARNING: cannot tell whether the host's {runtime.language} {runtime.host} satisfies "
            f"{runtime.requested_by}={runtime.requested!r}; the local builder and runtime use the host's.")
    elif not verdict:
        log(f"WARNING: {runtime.requested_by} asks for {runtime.language} {runtime.requested} but the "
            f"local builder uses the host's {runtime.language} {runtime.host}; the local runtime "
            f"runs the image with the host's too.")
    else:
        log(f"Using {runtime.language} {runtime.host} ({runtime.requested_by}={runtime.requested}).")


class Runner:
    """Runs build commands: output streamed to the build log, stoppable from outside."""

    def __init__(self, log: Log, cancel: threading.Event | None = None) -> None:
        self.log = log
        self.cancel = cancel or threading.Event()

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise BuildCancelled("the build was stopped")

    def run(self, argv: Sequence[str], *, cwd: Path, what: str, timeout_s: float | None = None,
            env: Mapping[str, str] | None = None, echo: bool = True,
            summary: Callable[[list[str]], list[str]] | None = None) -> str:
        """Run `argv`; return its output.

        A non-zero exit raises CommandFailed with the output's last lines, after `summary`
        (if given) picked the lines that matter from the whole output.
        """
        self.check_cancelled()
        if echo:
            self.log(f"Running {' '.join(argv)}")
        proc = subprocess.Popen(
            list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: a stop kills pip/npm and their children
        lines: collections.deque[str] = collections.deque(maxlen=400)
        reader = threading.Thread(target=self._pump, args=(proc, lines, echo), daemon=True)
        reader.start()
        waited = 0.0
        while True:
            try:
                code = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                waited += 0.1
            if self.cancel.is_set() or (timeout_s is not None and waited > timeout_s):
                _kill_group(proc)
                reader.join(timeout=5)
                self.check_cancelled()
                raise CommandFailed(f"{what} did not finish within {timeout_s:.0f}s",
                                    _tail(summary(list(lines)) if summary else lines))
        reader.join(timeout=5)
        output = "\n".join(lines)
        if code != 0:
            raise CommandFailed(f"{what} failed (exit status {code})",
                                _tail(summary(list(lines)) if summary else lines))
        return output

    def _pump(self, proc: subprocess.Popen[str], lines: collections.deque[str], echo: bool) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if echo:
                self.log(line)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(lines: Sequence[str]) -> str:
    kept = [line for line in lines if line.strip()][-ERROR_TAIL_LINES:]
    return "\n".join(kept) if kept else "(no output)"
