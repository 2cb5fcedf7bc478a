"""The Python part of the local builder (google.python.* buildpacks, REFERENCE §2).

Entry file ``main.py`` or ``GOOGLE_FUNCTION_SOURCE``; every ``*.py`` must compile; the target
must be a top-level function of the entry module (checked with `ast`, without running user
code); ``functions-framework`` is added when requirements.txt does not declare it;
dependencies go to ``layers/google.python.pip/pip`` with ``pip install --target``, then are
compiled to bytecode once, reproducibly (`compile_dependencies`), so the layer (which the
dependency cache keeps) carries it and no revision compiles them when it starts.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

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

FF_REQUIREMENT = "functions-framework>=3.5,<4"
PIP_LAYER = "layers/google.python.pip/pip"
FUNCTIONS_BUILDPACK = "google.python.functions-framework"
PIP_BUILDPACK = "google.python.pip"
#: A requirements line that declares the Functions Framework (PEP 503 names: - _ . are equal).
_FF_LINE = re.compile(r"^\s*functions[-_.]+framework(?![\w.-])", re.IGNORECASE)


class PythonPack(PackBase):
    language = "python"
    functions_buildpack_id = FUNCTIONS_BUILDPACK
    check_needs_dependencies = False

    def __init__(self, source_dir: Path, env: FunctionEnv, runner: Runner, log: Log) -> None:
        super().__init__(source_dir, env, runner, log)
        self.entry = env.source or "main.py"
        requirements = source_dir / "requirements.txt"
        self.requirements = requirements.read_text(errors="replace") if requirements.is_file() else None

    # -- detect -----------------------------------------------------------------------------------

    def runtime(self) -> RuntimeVersion:
        host = ".".join(str(part) for part in sys.version_info[:3])
        for name, value in (("GOOGLE_PYTHON_VERSION", self.env.python_version),
                            ("GOOGLE_RUNTIME_VERSION", self.env.runtime_version),
                            ("GOOGLE_RUNTIME", _version_of_runtime(self.env.runtime))):
            if value:
                return RuntimeVersion("python", host, value.strip(), name)
        pinned = self.source_dir / ".python-version"
        lines = pinned.read_text().split() if pinned.is_file() else []
        if lines:
            return RuntimeVersion("python", host, lines[0], ".python-version")
        return RuntimeVersion("python", host)

    def check_source(self) -> None:
        """The entry file exists, every Python file compiles (buildpacks run compileall) and the
        entry module defines the target: all before any dependency is installed."""
        entry = self.source_dir / self.entry
        if self.env.source is None and not entry.is_file():
            raise BuildError("missing main.py and GOOGLE_FUNCTION_SOURCE not specified. Either create "
                             "the function in main.py or specify GOOGLE_FUNCTION_SOURCE to point to "
                             "the file that contains the function")
        if not entry.is_file():
            raise BuildError(f'GOOGLE_FUNCTION_SOURCE specified file "{self.entry}" but it does not exist')
        for path in sorted(self.source_dir.rglob("*.py")):
            _parse(path, self.source_dir)
        self._check_target()

    # -- dependencies -------------------------------------------------------------------------------

    @property
    def injects_framework(self) -> bool:
        lines = (self.requirements or "").splitlines()
        return not any(_FF_LINE.match(line) for line in lines)

    def dependencies(self) -> DependencyPlan:
        material = (self.requirements or "").encode()
        if self.injects_framework:
            material += b"\0" + FF_REQUIREMENT.encode()
        return DependencyPlan(layer_dir=PIP_LAYER, key_material=material, buildpack_id=PIP_BUILDPACK)

    def install(self, root: Path) -> None:
        """pip install requirements (+ the Functions Framework) into the pip layer under `root`."""
        target = root / PIP_LAYER
        target.mkdir(parents=True, exist_ok=True)
        if self.injects_framework:
            self.log("Handling functions without dependency on functions-framework: "
                     f"adding {FF_REQUIREMENT} to the install.")
        else:
            self.log("Handling functions with dependency on functions-framework.")
        argv = [sys.executable, "-m", "pip", "install", "--target", str(target),
                "--disable-pip-version-check", "--no-input", "--quiet", "--no-compile"]
        if self.requirements is not None:
            argv += ["-r", "requirements.txt"]
        if self.injects_framework:
            argv.append(FF_REQUIREMENT)
        self.runner.run(argv, cwd=root / "workspace", what="pip install",
                        env={"PIP_NO_WARN_SCRIPT_LOCATION": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        self.compile_dependencies(root, target)

    def compile_dependencies(self, root: Path, target: Path) -> None:
        """Compile the installed modules to ``__pycache__/*.cpython-XY.pyc``, reproducibly.

        With the interpreter the local runtime runs the image with (this Python's base, ``-S``),
        so the pyc files are where it looks; ``unchecked-hash`` pycs hold a hash of the source
        instead of its mtime (layers store mtime 0) and are used without being checked; the
        recorded file names are image paths (``/layers/...``), not this build's temp dir; and a
        fixed hash seed: the same dependencies give the same bytes, so the same layer digest.
        A module that does not compile (one written for another Python) stays source only, as
        with pip's own compile step.
        """
        argv = [_host_python(), "-S", "-m", "compileall", "-q", "-j0", "--invalidation-mode",
                "unchecked-hash", "-s", str(root), "-p", "/", str(target)]
        try:
            self.runner.run(argv, cwd=root, what="compiling the dependencies",
                            env={"PYTHONHASHSEED": "0"})
        except CommandFailed as error:
            self.log(f"WARNING: some dependency modules do not compile for Python "
                     f"{sys.version_info[0]}.{sys.version_info[1]}; they are left as source "
                     f"(compiled when imported, if ever):\n{error.output}")

    # -- the function ---------------------------------------------------------------------------------

    def check_target(self, root: Path) -> None:
        """Nothing left to check once dependencies are in: `check_source` checked the target."""

    def _check_target(self) -> None:
        """The target is a top-level function of the entry module (the Functions Framework's check,
        done with `ast` so no user code runs at build time)."""
        tree = _parse(self.source_dir / self.entry, self.source_dir)
        names, star_import = _top_level_names(tree)
        target = self.env.target
        kind = names.get(target)
        if kind is None and star_import:
            self.log(f"WARNING: {self.entry} has a star import; cannot check that it defines '{target}'.")
            return
        if kind is None:
            found = ", ".join(f"'{name}'" for name, k in names.items() if k == "function")
            raise BuildError(f"File {self.entry} is expected to contain a function named '{target}'. "
                             f"Found: {found or 'no functions'} instead",
                             hint="set GOOGLE_FUNCTION_TARGET to the name of the function to serve")
        if kind == "class":
            raise BuildError(f"The function defined in file {self.entry} as '{target}' needs to be of "
                             f"type function. Got: a class",
                             hint="point GOOGLE_FUNCTION_TARGET at a function")

    def web_process(self, root: Path) -> WebProcess:
        args = ["--target", self.env.target, "--signature-type", self.env.signature_type]
        if self.env.source:
            args += ["--source", self.env.source]
        return WebProcess(command=["python3", "-m", "functions_framework"], args=args,
                          buildpack_id=FUNCTIONS_BUILDPACK)

    def launch_env(self) -> dict[str, str]:
        return {"PYTHONPATH": "/" + PIP_LAYER, "PYTHONUNBUFFERED": "1", **self.env.launch_env()}

    def app_excludes(self) -> frozenset[str]:
        return frozenset()

    def buildpacks(self) -> list[str]:
        return ["google.python.runtime", FUNCTIONS_BUILDPACK, PIP_BUILDPACK]


def _host_python() -> str:
    """The interpreter the local runtime runs ``python3`` images with (`runtime._host_python`):
    this Python's base, not a venv's wrapper. Its version is this one's, so the pyc tag too."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def _version_of_runtime(runtime: str | None) -> str | None:
    """``python312`` -> ``3.12`` (GCF runtime ids); ``python`` -> None."""
    match = re.fullmatch(r"python(\d)(\d+)", (runtime or "").strip().lower())
    return f"{match[1]}.{match[2]}" if match else None


def _parse(path: Path, source_dir: Path) -> ast.Module:
    shown = path.relative_to(source_dir)
    try:
        return ast.parse(path.read_bytes(), filename=str(shown))
    except SyntaxError as error:
        where = f"File {shown}, line {error.lineno}" if error.lineno else f"File {shown}"
        text = f":\n    {error.text.rstrip()}" if error.text else ""
        raise BuildError(f"{where}: {error.msg}{text}", hint="fix the syntax error and build again") from None
    except ValueError as error:  # null bytes
        raise BuildError(f"File {shown} cannot be compiled: {error}") from None


def _top_level_names(tree: ast.Module) -> tuple[dict[str, str], bool]:
    """Names a module defines at top level ('function', 'class' or 'value'); and any star import."""
    names: dict[str, str] = {}
    star = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = "function"
        elif isinstance(node, ast.ClassDef):
            names[node.name] = "class"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update((name, "value") for name in _assigned(target))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            names.update((name, "value") for name in _assigned(node.target))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    star = True
                else:
                    names[alias.asname or alias.name.split(".")[0]] = "value"
        elif isinstance(node, ast.If | ast.Try | ast.With):
            inner, inner_star = _top_level_names(ast.Module(body=_blocks(node), type_ignores=[]))
            names.update((k, v) for k, v in inner.items() if k not in names)
            star = star or inner_star
    return names, star


def _blocks(node: ast.If | ast.Try | ast.With) -> list[ast.stmt]:
    """Statements of every branch of a compound top-level statement (defs inside `if`/`try`)."""
    body = list(node.body)
    if isinstance(node, ast.If):
        body += node.orelse
    elif isinstance(node, ast.Try):
        body += node.orelse + node.finalbody
        for handler in node.handlers:
            body += handler.body
    return body


def _assigned(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _assigned(element)]
    return []
