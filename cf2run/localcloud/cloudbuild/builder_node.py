"""The Node.js part of the local builder (google.nodejs.* buildpacks, REFERENCE §2).

Entry file from package.json ``main``, else ``index.js``, else ``function.js``, checked with
``node --check``; ``npm ci`` with a lockfile (it fails when the lock is out of sync), else
``npm install``, production dependencies only; ``@google-cloud/functions-framework`` added
when not a dependency; then the Functions Framework's own loader, run by node in the built
workspace, says whether the module defines the target.

A ``gcp-build`` script runs first, as google.nodejs.npm runs it (GoogleCloudPlatform/buildpacks
cmd/nodejs/npm/lib/lib.go and pkg/nodejs/npm.go `DetermineBuildCommands`): dependencies are
installed with ``NODE_ENV=development`` (devDependencies too: a TypeScript compiler), then
``npm run gcp-build``, then devDependencies are pruned (``npm prune --production``; here the
production dependency layer replaces them), so the built files (``dist/``) are in the app and
the entry file is checked after the script. An empty ``gcp-build`` runs nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from cf2run.localcloud.cloudbuild.builder_common import (
    BuildError,
    CommandFailed,
    DependencyPlan,
    FunctionEnv,
    Log,
    PackBase,
    Runner,
    RuntimeVersion,
    WebProcess,
)

FF_PACKAGE = "@google-cloud/functions-framework"
FF_SPEC = f"{FF_PACKAGE}@^5"
MODULES_LAYER = "workspace/node_modules"
FUNCTIONS_BUILDPACK = "google.nodejs.functions-framework"
NPM_BUILDPACK = "google.nodejs.npm"
NPM_QUIET = ["--no-audit", "--no-fund", "--no-update-notifier"]
NPM_FLAGS = [*NPM_QUIET, "--omit=dev"]
GCP_BUILD = "gcp-build"
TARGET_CHECK_TIMEOUT_S = 60.0

#: Loads the module the way the Functions Framework will (its own loader when it has one,
#: so declarative `functions.http(...)` registrations and ES modules count), then exits.
_TARGET_CHECK_JS = r"""
const path = require('path');
const [ffDir, target, signatureType] = process.argv.slice(1);
const done = (ok) => process.exit(ok ? 0 : 3);
let loader = null;
try { loader = require(path.join(ffDir, 'build', 'src', 'loader.js')); } catch (e) { loader = null; }
(async () => {
  if (loader && typeof loader.getUserFunction === 'function') {
    done(await loader.getUserFunction(process.cwd(), target, signatureType));
    return;
  }
  const mod = require(process.cwd());
  const fn = target.split('.').reduce((m, part) => (m === undefined ? undefined : m[part]), mod);
  if (typeof fn !== 'function') {
    console.error(`Function '${target}' is not defined in the provided module.`);
  }
  done(typeof fn === 'function');
})().catch((e) => { console.error(e && e.stack ? e.stack : String(e)); done(false); });
"""


class NodePack(PackBase):
    language = "nodejs"
    functions_buildpack_id = FUNCTIONS_BUILDPACK
    check_needs_dependencies = True

    def __init__(self, source_dir: Path, env: FunctionEnv, runner: Runner, log: Log) -> None:
        super().__init__(source_dir, env, runner, log)
        self.package = _read_package_json(source_dir)
        self.lockfile = source_dir / "package-lock.json"

    # -- detect -----------------------------------------------------------------------------------

    def runtime(self) -> RuntimeVersion:
        host = _host_node_version()
        engines = (self.package or {}).get("engines") or {}
        for name, value in (("GOOGLE_NODEJS_VERSION", self.env.nodejs_version),
                            ("GOOGLE_RUNTIME_VERSION", self.env.runtime_version),
                            ("GOOGLE_RUNTIME", _version_of_runtime(self.env.runtime)),
                            ("package.json engines.node", engines.get("node") if isinstance(
                                engines, dict) else None)):
            if value:
                return RuntimeVersion("nodejs", host, str(value).strip(), name)
        return RuntimeVersion("nodejs", host)

    @property
    def entry(self) -> str:
        main = (self.package or {}).get("main")
        if isinstance(main, str) and main:
            return main
        return "index.js" if (self.source_dir / "index.js").is_file() else "function.js"

    def check_source(self) -> None:
        if self.env.source:
            raise BuildError("GOOGLE_FUNCTION_SOURCE is not currently supported for Node.js buildpacks")
        if self.gcp_build is None:
            self._check_entry(self.source_dir)
        # else the entry is checked once gcp-build made it (build_source)

    def _check_entry(self, app_dir: Path) -> None:
        entry = app_dir / self.entry
        if not entry.is_file():
            after = f" after `npm run {GCP_BUILD}`" if self.gcp_build else ""
            raise BuildError(f"{self.entry} does not exist{after}",
                             hint="a Node.js function's code is in package.json \"main\", index.js or "
                                  f"function.js{'; check what the gcp-build script writes' if after else ''}")
        self.runner.run(["node", "--check", self.entry], cwd=app_dir,
                        what=f"node --check {self.entry}")

    # -- gcp-build ----------------------------------------------------------------------------------

    @property
    def gcp_build(self) -> str | None:
        """The ``gcp-build`` script that runs (None: none, or an empty one: nothing runs)."""
        scripts = (self.package or {}).get("scripts") or {}
        script = scripts.get(GCP_BUILD) if isinstance(scripts, dict) else None
        return script if isinstance(script, str) and script.strip() else None

    def build_source(self, workspace: Path) -> bool:
        if self.gcp_build is None:
            return False
        self.log(f"Running {GCP_BUILD} ({self.gcp_build}) with devDependencies installed "
                 "(NODE_ENV=development).")
        install = ["npm", "ci"] if self.lockfile.is_file() else ["npm", "install", "--no-package-lock"]
        self.runner.run([*install, *NPM_QUIET, "--include=dev"], cwd=workspace,
                        what=" ".join(install[:2]) + " (with devDependencies)",
                        summary=npm_error_summary, env={"NODE_ENV": "development"})
        self.runner.run(["npm", "run", GCP_BUILD], cwd=workspace, what=f"npm run {GCP_BUILD}",
                        summary=npm_error_summary)
        self.log("Pruning devDependencies: the image gets the production dependencies only.")
        shutil.rmtree(workspace / "node_modules", ignore_errors=True)
        self._check_entry(workspace)
        return True

    # -- dependencies ---------------------------------------------------------------------------------

    @property
    def declares_framework(self) -> bool:
        dependencies = (self.package or {}).get("dependencies") or {}
        return isinstance(dependencies, dict) and FF_PACKAGE in dependencies

    def dependencies(self) -> DependencyPlan:
        # package.json counts even with a lockfile: `npm ci` fails when they disagree.
        material = b"package.json\0"
        if self.package is not None:
            material += (self.source_dir / "package.json").read_bytes()
        if self.lockfile.is_file():
            material += b"\0package-lock.json\0" + self.lockfile.read_bytes()
        if not self.declares_framework:
            material += b"\0" + FF_SPEC.encode()
        return DependencyPlan(layer_dir=MODULES_LAYER, key_material=material, buildpack_id=NPM_BUILDPACK)

    def install(self, root: Path) -> None:
        workspace = root / "workspace"
        shutil.rmtree(workspace / "node_modules", ignore_errors=True)
        prefix = ["--prefix", str(workspace)]
        if self.package is not None:
            if self.lockfile.is_file():
                self.runner.run(["npm", "ci", *NPM_FLAGS, *prefix], cwd=workspace, what="npm ci",
                                summary=npm_error_summary)
            else:
                # no package-lock.json written into the workspace: after a gcp-build it is the app
                self.runner.run(["npm", "install", "--no-package-lock", *NPM_FLAGS, *prefix],
                                cwd=workspace, what="npm install", summary=npm_error_summary)
        if self.declares_framework:
            self.log("Handling functions with dependency on functions-framework.")
        else:
            self.log(f"Handling functions without dependency on functions-framework: installing {FF_SPEC}.")
            self.runner.run(["npm", "install", "--no-save", *NPM_FLAGS, *prefix, FF_SPEC],
                            cwd=workspace, what=f"npm install {FF_SPEC}", summary=npm_error_summary)
        (workspace / "node_modules").mkdir(exist_ok=True)

    # -- the function ---------------------------------------------------------------------------------

    def check_target(self, root: Path) -> None:
        workspace = root / "workspace"
        ff_dir = workspace / "node_modules" / FF_PACKAGE
        try:
            self.runner.run(["node", "-e", _TARGET_CHECK_JS, str(ff_dir), self.env.target,
                             self.env.signature_type], cwd=workspace, what="loading the function",
                            timeout_s=TARGET_CHECK_TIMEOUT_S, echo=False,
                            env={"NODE_ENV": "production"})
        except CommandFailed as error:
            raise BuildError(f"Function target '{self.env.target}' cannot be loaded from "
                             f"{self.entry}: {error.output}",
                             hint="set GOOGLE_FUNCTION_TARGET to a function the module exports "
                                  "or registers") from None

    def web_process(self, root: Path) -> WebProcess:
        package_dir = root / MODULES_LAYER / FF_PACKAGE
        main = _framework_bin(package_dir)
        return WebProcess(
            command=["node", f"/{MODULES_LAYER}/{FF_PACKAGE}/{main}"],
            args=[f"--target={self.env.target}", f"--signature-type={self.env.signature_type}"],
            buildpack_id=FUNCTIONS_BUILDPACK)

    def launch_env(self) -> dict[str, str]:
        return {"NODE_ENV": "production", **self.env.launch_env()}

    def app_excludes(self) -> frozenset[str]:
        return frozenset({"node_modules"})  # the dependency layer brings the built one

    def buildpacks(self) -> list[str]:
        return ["google.nodejs.runtime", NPM_BUILDPACK, FUNCTIONS_BUILDPACK]


def node_version_matches(requested: str, host: str) -> bool | None:
    """Whether host ``X.Y.Z`` satisfies a requested Node version or simple range; None if unknown."""
    text = requested.strip()
    major = int(host.lstrip("v").split(".")[0])
    if match := re.fullmatch(r">=?\s*v?(\d+)(?:\.[\dx*]+)*", text):
        return major >= int(match[1])
    if match := re.fullmatch(r"[\^~=]?\s*v?(\d+)(?:\.[\dx*]+)*", text):
        return major == int(match[1])
    return None


def npm_error_summary(lines: list[str]) -> list[str]:
    """npm's error lines without the usage text it prints after a usage error, nor its log path."""
    kept: list[str] = []
    for line in lines:
        text = line.removeprefix("npm error").removeprefix("npm ERR!").strip()
        if text == "Usage:":
            break
        if text and not text.startswith("A complete log of this run"):
            kept.append(line)
    return kept


def _version_of_runtime(runtime: str | None) -> str | None:
    """``nodejs20`` -> ``20`` (GCF runtime ids); ``nodejs`` -> None."""
    match = re.fullmatch(r"nodejs(\d+)", (runtime or "").strip().lower())
    return match[1] if match else None


def _host_node_version() -> str:
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"cannot run node on this machine: {error}",
                         hint="the local builder builds Node.js functions with the host's node and npm; "
                              "install Node.js 18 or later") from None
    return out.stdout.strip().lstrip("v")


def _read_package_json(source_dir: Path) -> dict[str, Any] | None:
    path = source_dir / "package.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise BuildError(f"package.json is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BuildError("package.json must hold a JSON object")
    return data


def _framework_bin(package_dir: Path) -> str:
    """The functions-framework executable inside its package (``build/src/main.js`` in 5.x)."""
    try:
        package = json.loads((package_dir / "package.json").read_text())
    except (OSError, ValueError) as error:
        raise BuildError(f"{FF_PACKAGE} is not installed in node_modules ({error})",
                         hint=f"list {FF_PACKAGE} in the dependencies, or leave it out to have it injected"
                         ) from None
    bins = package.get("bin")
    main = bins.get("functions-framework") if isinstance(bins, dict) else bins
    if not isinstance(main, str) or not (package_dir / main).is_file():
        raise BuildError(f"{FF_PACKAGE} {package.get('version')} has no functions-framework executable")
    return str(Path(main)).removeprefix("./")
