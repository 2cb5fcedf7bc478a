"""A failed build's log, read as a user needs it: the error lines and what to change."""

from __future__ import annotations

from typing import Any

import pytest

from cf2run.gcp.build_log import DEFAULT_HINT, error_lines, explain
from cf2run.manifest.spec import FunctionSpec

# Ends of real logs of the local Cloud Build (its steps print what pip, npm and the Functions
# Framework print), each closed by Cloud Build's own line.
PIP_LOG = """\
Step #0: Running python3 -m pip install --target /layers/google.python.pip/pip -r requirements.txt
Step #0: WARNING: Location 'file:///opt/pypi/simple/functions-framework/' is ignored: it is \
neither a file nor a directory.
Step #0: WARNING: Location 'file:///opt/pypi-more/simple/no-such-package-cf2run/' is ignored: \
it is neither a file nor a directory.
Step #0: ERROR: Could not find a version that satisfies the requirement \
no-such-package-cf2run==9.9 (from versions: none)
Step #0: ERROR: No matching distribution found for no-such-package-cf2run==9.9
Finished Step #0
ERROR
ERROR: build step 0 "gcr.io/k8s-skaffold/pack" failed: step exited with non-zero status: 1
"""
ENTRY_LOG = """\
Step #0: ===> BUILDING
Step #0: ERROR: File main.py is expected to contain a function named 'helo'. Found: 'hello' instead
Finished Step #0
ERROR
ERROR: build step 0 "gcr.io/k8s-skaffold/pack" failed: step exited with non-zero status: 1
"""
NODE_MODULE_LOG = """\
Step #0: added 129 packages in 8s
Step #0: Function target 'hello' cannot be loaded from index.js: Provided module can't be loaded.
Step #0: Did you list all required modules in the package.json dependencies?
Step #0: Detailed stack trace: Error: Cannot find module 'left-pad'
Step #0: Require stack:
Step #0: - /workspace/index.js
Step #0:     at Module._resolveFilename (node:internal/modules/cjs/loader:1207:15)
ERROR: build step 0 "gcr.io/k8s-skaffold/pack" failed: step exited with non-zero status: 1
"""


def spec(**fields: str) -> FunctionSpec:
    values: dict[str, Any] = {"name": "fn", "runtime": "python311", "entry_point": "helo", **fields}
    return FunctionSpec.model_construct(**values)


def test_pip_output_is_the_error_not_the_machines_warnings() -> None:
    lines, hint = explain(PIP_LOG, spec())
    assert lines == ["ERROR: Could not find a version that satisfies the requirement "
                     "no-such-package-cf2run==9.9 (from versions: none)",
                     "ERROR: No matching distribution found for no-such-package-cf2run==9.9"]
    assert hint == ("requirements.txt asks for no-such-package-cf2run==9.9, which the package index "
                    "does not have: check the name and the version")


def test_a_wrong_target_names_the_manifest_field() -> None:
    lines, hint = explain(ENTRY_LOG, spec())
    assert lines == ["ERROR: File main.py is expected to contain a function named 'helo'. Found: "
                     "'hello' instead"]
    assert hint == ("entry_point 'helo' is not a function main.py defines: set entry_point in the "
                    "manifest to the function to serve")
    assert "GOOGLE_FUNCTION_TARGET" not in hint


def test_a_missing_node_module_is_not_explained_as_a_wrong_target() -> None:
    lines, hint = explain(NODE_MODULE_LOG, spec(runtime="nodejs20", entry_point="hello"))
    assert "Detailed stack trace: Error: Cannot find module 'left-pad'" in lines
    assert not any(line.lstrip().startswith(("at ", "- /")) for line in lines), lines
    assert hint == ("the source requires 'left-pad', which package.json does not list: add it to its "
                    "dependencies (npm install left-pad --save) and run again")
    assert "entry_point" not in hint


@pytest.mark.parametrize(("log", "says"), [
    ("Step #0: npm ERR! 404 Not Found - GET https://registry.npmjs.org/left-padd - Not found\n",
     "package.json names left-padd, which the npm registry does not have"),
    ("Step #0: npm ERR! `npm ci` can only install packages when your package.json and "
     "package-lock.json or npm-shrinkwrap.json are in sync.\n",
     "run `npm install` in the source directory to update the lock file"),
    ("Step #0: ModuleNotFoundError: No module named 'humanize'\n",
     "the source imports 'humanize', which requirements.txt does not list"),
    ("Step #0: Error: Cannot find module './lib/util'\n",
     "the source requires ./lib/util, which is not in the uploaded source"),
    ("Step #0: something else went wrong\nERROR: build step 0 \"x\" failed: step exited with "
     "non-zero status: 1\n", DEFAULT_HINT),
])
def test_hints_by_what_failed(log: str, says: str) -> None:
    assert says in explain(log, spec())[1]


def test_at_most_the_last_eight_error_lines() -> None:
    log = "".join(f"Step #0: ERROR: problem {n}\n" for n in range(20))
    assert error_lines(log) == [f"ERROR: problem {n}" for n in range(12, 20)]
