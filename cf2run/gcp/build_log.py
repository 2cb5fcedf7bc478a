"""What a failed build's log says went wrong, in the manifest's words.

Cloud Build reports a failed step only as "build step 0 ... failed: step exited with non-zero
status: 1" (its `status_detail` is empty on failed builds: google/oss-rebuild#1604); what pip,
npm, the buildpacks or the Functions Framework said is in the build's log,
``LOGS_BUCKET/log-BUILD_ID.txt`` (https://cloud.google.com/build/docs/securing-builds/
store-manage-build-logs). `read_tail` fetches its end; `explain` keeps the lines that are the
error (not the machine's configuration warnings, nor stack frames) and says what to change,
naming the manifest field or the file, not the buildpack variable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions
from google.cloud.devtools import cloudbuild_v1
from google.cloud.storage import Client as StorageClient

from cf2run.manifest.spec import FunctionSpec

#: Enough of a log's end for the error; a failed build's log is read once.
TAIL_BYTES = 64 * 1024
MAX_LINES = 8
DEFAULT_HINT = "read the build log; fix the source or build settings and run again"
STEP_PREFIX = re.compile(r"^Step #\d+(?: - \"[^\"]*\")?: ?")
#: Lines that are errors, as pip, npm, the buildpacks and the Functions Frameworks print them.
ERROR_LINE = re.compile(r"^(?:ERROR:|npm ERR!|npm error|Error:|[A-Za-z]*Error:|[A-Za-z]*Exception:|"
                        r"File \S+ is expected|Function (?:target )?'|The function defined|"
                        r"Cannot find module|Provided module|Did you list|Detailed stack trace)")
#: Cloud Build's own closing lines: they say that a step failed, not why.
CLOSING_LINE = re.compile(r"^ERROR: build step \d+ \"[^\"]+\" failed: step exited with non-zero status")
NOISE = re.compile(r"^(?:WARNING:|npm WARN|npm warn|\s+at |- /|Require stack:)")


def read_tail(client: StorageClient, build: cloudbuild_v1.Build) -> str:
    """The end of the build's log ('' when it cannot be read: the failure is reported anyway)."""
    bucket, _, prefix = build.logs_bucket.removeprefix("gs://").strip("/").partition("/")
    if not bucket:
        return ""
    blob = client.bucket(bucket).blob((f"{prefix}/" if prefix else "") + f"log-{build.id}.txt")
    try:
        blob.reload()
        start = max(0, (blob.size or 0) - TAIL_BYTES)
        return blob.download_as_bytes(start=start).decode("utf-8", errors="replace")
    except (api_exceptions.GoogleAPICallError, OSError):
        return ""


def error_lines(log: str) -> list[str]:
    """The lines of the log that say what failed, at most MAX_LINES, the last ones kept."""
    lines = [STEP_PREFIX.sub("", line).rstrip() for line in log.splitlines()]
    found: list[str] = []
    for line in lines:
        if not line or NOISE.match(line) or CLOSING_LINE.match(line) or line == "ERROR":
            continue
        if ERROR_LINE.match(line) and line not in found:
            found.append(line)
    return found[-MAX_LINES:]


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    hint: Callable[[re.Match[str], FunctionSpec], str]


def _entry(file: str) -> Callable[[re.Match[str], FunctionSpec], str]:
    return lambda match, spec: (f"entry_point {spec.entry_point!r} is not a function {file} "
                                f"{'defines' if file == 'main.py' else 'exports'}: set entry_point in "
                                "the manifest to the function to serve")


def _missing_node_module(match: re.Match[str], spec: FunctionSpec) -> str:
    module = match.group(1)
    if module.startswith("."):
        return (f"the source requires {module}, which is not in the uploaded source: check the path, "
                "and that .gcloudignore does not leave it out")
    return (f"the source requires '{module}', which package.json does not list: add it to its "
            f"dependencies (npm install {module} --save) and run again")


RULES: tuple[_Rule, ...] = (
    _Rule(re.compile(r"Cannot find module '([^']+)'"), _missing_node_module),
    _Rule(re.compile(r"expected to contain a function named"), _entry("main.py")),
    _Rule(re.compile(r"Function '[^']*' is not defined in the provided module|"
                     r"Function target '[^']*' cannot be loaded.*(?:not defined|is not a function)"),
          _entry("the module")),
    _Rule(re.compile(r"No module named '([^']+)'"),
          lambda m, s: f"the source imports '{m.group(1)}', which requirements.txt does not list: add it"),
    _Rule(re.compile(r"No matching distribution found for (\S+)"),
          lambda m, s: f"requirements.txt asks for {m.group(1)}, which the package index does not have: "
                       "check the name and the version"),
    _Rule(re.compile(r"404 Not Found - GET \S+/(@?[^/\s]+(?:/[^/\s]+)?)(?:\s|$)"),
          lambda m, s: f"package.json names {m.group(1)}, which the npm registry does not have: check "
                       "the name and the version"),
    _Rule(re.compile(r"can only install packages when your package\.json and package-lock\.json"),
          lambda m, s: "package.json and package-lock.json disagree: run `npm install` in the source "
                       "directory to update the lock file, then run again"),
    _Rule(re.compile(r"SyntaxError"),
          lambda m, s: "the source does not parse: fix the syntax error the log names"),
)


def explain(log: str, spec: FunctionSpec) -> tuple[list[str], str]:
    """(the log's error lines, what to do): the hint names the manifest field or the file."""
    lines = error_lines(log)
    text = "\n".join(lines)
    for rule in RULES:
        match = rule.pattern.search(text)
        if match:
            return lines, rule.hint(match, spec)
    return lines, DEFAULT_HINT
