"""The local builder (REFERENCE §2) against the local registry: real pip, npm and node.

Dependency installs go through PyPI and the npm registry once per dependency set; the cache
directory is shared by the module so later builds are warm.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builder_samples import node_function, python_function

from cf2run.errors import BuildFailed
from cf2run.gcp.oci import ImageRef, PulledImage, RegistryClient
from cf2run.localcloud.cloudbuild.builder import BuildCancelled, BuildError, build_function, detect_language
from cf2run.localcloud.cloudbuild.builder_python import FF_REQUIREMENT
from cf2run.localcloud.cloudbuild.image import DependencyCache, LayerFile, write_layer
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings
from cf2run.localcloud.storage.emulator import free_port

HOST = "us-central1-docker.pkg.dev"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    server = RegistryServer(tmp_path_factory.mktemp("registry"), FaultInjector(LocalCloudSettings()))
    server.start()
    client = RegistryClient(resolve=lambda host: f"http://{server.address}")
    yield client
    client.close()
    server.stop()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build-cache")


class Build:
    """One build_function call and what it logged."""

    def __init__(self, registry: RegistryClient, cache_dir: Path) -> None:
        self.registry = registry
        self.cache_dir = cache_dir
        self.lines: list[str] = []

    def __call__(self, source: Path, env: dict[str, str], name: str = "fn:v1", **kw: Any) -> str:
        self.lines = []
        return build_function(source, env, f"{HOST}/proj/repo/{name}", self.registry, self.cache_dir,
                              self.lines.append, **kw)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def pull(self, name: str = "fn:v1") -> PulledImage:
        return self.registry.pull_image(ImageRef.parse(f"{HOST}/proj/repo/{name}"))


@pytest.fixture
def build(registry: RegistryClient, cache_dir: Path) -> Build:
    return Build(registry, cache_dir)


def web_process(image: PulledImage) -> dict[str, Any]:
    metadata = json.loads(image.config["config"]["Labels"]["io.buildpacks.build.metadata"])
    [process] = metadata["processes"]
    return process


def layer_names(layer: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        return set(tar.getnames())


def serve_image(image: PulledImage, root: Path) -> str:
    """Run the image's web process as the local runtime does; returns its first response body."""
    for layer in image.layers:
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
            tar.extractall(root, filter="data")

    def rooted(value: str) -> str:
        for prefix in ("/workspace", "/layers"):
            value = value.replace(prefix, str(root) + prefix)
        return value

    config, process = image.config["config"], web_process(image)
    interpreter = {"python3": sys.executable, "node": "node"}[process["command"][0]]
    port = free_port()
    env = {**os.environ, **dict(rooted(e).split("=", 1) for e in config["Env"]), "PORT": str(port)}
    argv = [interpreter, *(rooted(a) for a in process["command"][1:] + process["args"])]
    proc = subprocess.Popen(argv, cwd=rooted(config["WorkingDir"]), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return str(response.read().decode())
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- Python -------------------------------------------------------------------------------------------

def test_python_function_image_follows_the_buildpacks_contract(build: Build, tmp_path: Path) -> None:
    source = python_function(tmp_path / "src")
    env = {"GOOGLE_FUNCTION_TARGET": "hello", "GOOGLE_LABEL_TEAM_NAME": "payments",
           "GOOGLE_LABEL_PRICE": "$5", "GOOGLE_FUNCTION_SIGNATURE_TYPE": "http"}
    digest = build(source, env)

    head = build.registry.head_manifest(ImageRef.parse(f"{HOST}/proj/repo/fn:v1"))
    assert head is not None and head.digest == digest
    image = build.pull()
    config = image.config["config"]
    assert web_process(image) == {
        "type": "web", "command": ["python3", "-m", "functions_framework"],
        "args": ["--target", "hello", "--signature-type", "http"], "direct": True,
        "buildpackID": "google.python.functions-framework"}
    assert config["WorkingDir"] == "/workspace"
    assert "PYTHONPATH=/layers/google.python.pip/pip" in config["Env"]
    assert "FUNCTION_TARGET=hello" in config["Env"]
    assert not any(e.startswith("GOOGLE_") for e in config["Env"])  # build env stays at build time
    assert config["Labels"]["google.team-name"] == "payments"
    assert config["Labels"]["google.price"] == "$5"
    assert config["Labels"]["io.buildpacks.stack.id"]
    # Two layers: dependencies (with the injected Functions Framework), then the app.
    deps, app = (layer_names(layer) for layer in image.layers)
    assert "layers/google.python.pip/pip/six.py" in deps
    assert "layers/google.python.pip/pip/functions_framework/__init__.py" in deps
    tag = sys.implementation.cache_tag  # compiled once, for the interpreter the runtime uses
    assert f"layers/google.python.pip/pip/functions_framework/__pycache__/__init__.{tag}.pyc" in deps
    assert "workspace/main.py" in app and "workspace/requirements.txt" in app
    assert len(image.config["rootfs"]["diff_ids"]) == 2
    assert "===> DETECTING" in build.log and "===> EXPORTING" in build.log
    assert f"adding {FF_REQUIREMENT}" in build.log

    assert serve_image(image, tmp_path / "root") == "hello from python (six 1.16.0)"


def test_python_warm_rebuild_reuses_the_dependency_layer_and_is_reproducible(
        build: Build, tmp_path: Path) -> None:
    source = python_function(tmp_path / "src")
    env = {"GOOGLE_FUNCTION_TARGET": "hello"}
    first = build(source, env, "warm:a")
    started = time.monotonic()
    second = build(source, env, "warm:b")
    elapsed = time.monotonic() - started

    assert second == first  # same source and env: the same image, byte for byte
    assert "Restoring dependency layer 'google.python.pip' from cache" in build.log
    assert "pip install" not in build.log
    assert elapsed < 30  # generous: the speed goal (< 5 s) is measured in bench/

    (source / "main.py").write_text((source / "main.py").read_text() + "\n# changed\n")
    assert build(source, env, "warm:c") != first
    assert "Restoring dependency layer" in build.log

    # Another image (another repository) over the same dependencies: the registry mounts the
    # layer from the repository it was pushed to, instead of receiving it again.
    other = build(source, env, "warm-other:v1")
    assert "Reusing layer" in build.log and "from proj/repo/warm" in build.log
    pulled = build.pull("warm-other:v1")
    assert other == pulled.digest
    assert pulled.layers[0] == build.pull("warm:a").layers[0]


def test_python_undefined_target_fails_naming_it(build: Build, tmp_path: Path) -> None:
    source = python_function(tmp_path / "src")
    with pytest.raises(BuildError) as caught:
        build(source, {"GOOGLE_FUNCTION_TARGET": "nope"})
    assert "File main.py is expected to contain a function named 'nope'" in caught.value.message
    assert "'hello'" in caught.value.message
    assert isinstance(caught.value, BuildFailed)


@pytest.mark.parametrize(("files", "env", "expected"), [
    ({"app.py": "def hello(r): pass\n"}, {}, "missing main.py and GOOGLE_FUNCTION_SOURCE not specified"),
    ({"main.py": "def hello(r): pass\n"}, {"GOOGLE_FUNCTION_SOURCE": "fn.py"},
     'GOOGLE_FUNCTION_SOURCE specified file "fn.py" but it does not exist'),
    ({"main.py": "def hello(r):\n  return (\n"}, {}, "File main.py, line 2"),
    ({"main.py": "class hello:\n    pass\n"}, {}, "needs to be of type function"),
    ({"main.py": "def hello(r): pass\n"}, {"GOOGLE_FUNCTION_SIGNATURE_TYPE": "grpc"},
     "GOOGLE_FUNCTION_SIGNATURE_TYPE='grpc' is not a signature type"),
    ({"main.py": "def hello(r): pass\n", "index.js": "exports.hello = () => {};\n"}, {},
     "set GOOGLE_RUNTIME"),
    ({"README.md": "nothing to build\n"}, {}, "no Python (*.py) or Node.js"),
])
def test_python_source_errors_say_what_to_fix(build: Build, tmp_path: Path, files: dict[str, str],
                                             env: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(BuildError) as caught:
        build(tmp_path, {"GOOGLE_FUNCTION_TARGET": "hello", **env})
    assert expected in str(caught.value)


def test_missing_target_env_fails() -> None:
    with pytest.raises(BuildError, match="GOOGLE_FUNCTION_TARGET is not set"):
        build_function(Path("."), {}, f"{HOST}/p/r/x:v1", RegistryClient(), Path("."), print)


def test_python_target_may_come_from_an_import_or_a_guarded_def(tmp_path: Path) -> None:
    from cf2run.localcloud.cloudbuild.builder_common import FunctionEnv, Runner
    from cf2run.localcloud.cloudbuild.builder_python import PythonPack

    (tmp_path / "main.py").write_text(
        "from handlers import handle as imported\n"
        "try:\n    import ujson\nexcept ImportError:\n    def guarded(r): pass\n"
        "assigned = lambda r: r\n")
    for target in ("imported", "guarded", "assigned"):
        env = FunctionEnv(target=target)
        PythonPack(tmp_path, env, Runner(print), print).check_source()


@pytest.mark.parametrize(("requirements", "injected"), [
    (None, True), ("six\n", True), ("functions-framework==3.8.0\n", False),
    ("Functions_Framework>=3\n", False), ("# functions-framework\nsix\n", True),
])
def test_functions_framework_injected_only_when_not_declared(
        tmp_path: Path, requirements: str | None, injected: bool) -> None:
    from cf2run.localcloud.cloudbuild.builder_common import FunctionEnv, Runner
    from cf2run.localcloud.cloudbuild.builder_python import PythonPack

    python_function(tmp_path, requirements=requirements)
    pack = PythonPack(tmp_path, FunctionEnv(target="hello"), Runner(print), print)
    assert pack.injects_framework is injected


def test_requested_version_other_than_the_hosts_is_a_warning(build: Build, tmp_path: Path) -> None:
    source = python_function(tmp_path / "src")
    build(source, {"GOOGLE_FUNCTION_TARGET": "hello", "GOOGLE_PYTHON_VERSION": "3.7"})
    assert "WARNING: GOOGLE_PYTHON_VERSION asks for python 3.7" in build.log
    labels = build.pull().config["config"]["Labels"]
    assert labels["cf2run.runtime.requested-version"] == "3.7"
    assert labels["cf2run.runtime.host-version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}")


def test_detection_and_runtime_override(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def f(r): pass\n")
    (tmp_path / "package.json").write_text("{}")
    with pytest.raises(BuildError, match="GOOGLE_RUNTIME"):
        detect_language(tmp_path, None)
    assert detect_language(tmp_path, "python312") == "python"
    assert detect_language(tmp_path, "nodejs20") == "nodejs"
    with pytest.raises(BuildError, match="not supported"):
        detect_language(tmp_path, "go122")


def test_cancel_stops_a_running_install(registry: RegistryClient, cache_dir: Path, tmp_path: Path) -> None:
    source = python_function(tmp_path / "src", requirements="six==1.15.0\n")
    cancel = threading.Event()

    def log(line: str) -> None:  # stop the build as soon as pip starts
        if line.startswith("Running") and "pip install" in line:
            threading.Timer(0.2, cancel.set).start()

    started = time.monotonic()
    with pytest.raises(BuildCancelled):
        build_function(source, {"GOOGLE_FUNCTION_TARGET": "hello"}, f"{HOST}/proj/repo/cancel:v1",
                       registry, cache_dir, log, cancel=cancel)
    assert time.monotonic() - started < 30
    assert not list((cache_dir / "deps").glob(".*"))  # no staging dir left behind


# -- Node.js ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return node_function(tmp_path_factory.mktemp("node") / "src")


def test_node_function_image_follows_the_buildpacks_contract(build: Build, node_source: Path,
                                                             tmp_path: Path) -> None:
    digest = build(node_source, {"GOOGLE_FUNCTION_TARGET": "hello"}, "node:v1")

    head = build.registry.head_manifest(ImageRef.parse(f"{HOST}/proj/repo/node:v1"))
    assert head is not None and head.digest == digest
    image = build.pull("node:v1")
    process = web_process(image)
    main = "/workspace/node_modules/@google-cloud/functions-framework/build/src/main.js"
    assert process["command"] == ["node", main]
    assert process["args"] == ["--target=hello", "--signature-type=http"]
    assert process["buildpackID"] == "google.nodejs.functions-framework"
    deps, app = (layer_names(layer) for layer in image.layers)
    assert main.lstrip("/") in deps and "workspace/node_modules/ms/package.json" in deps
    assert "workspace/index.js" in app and not any("node_modules" in name for name in app)
    assert "Running npm ci" in build.log
    assert "installing @google-cloud/functions-framework@^5" in build.log
    # The cache keeps the dependencies unpacked too, for warm builds' target checks.
    [unpacked] = build.cache_dir.glob("deps/*/unpacked/workspace/node_modules/ms")
    assert (unpacked / "package.json").is_file()

    assert serve_image(image, tmp_path / "root") == "hello from node (1m)"


def test_node_undefined_target_fails_with_the_frameworks_message(build: Build, node_source: Path,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        build(node_source, {"GOOGLE_FUNCTION_TARGET": "nope"}, "node:bad")
    assert "Function 'nope' is not defined in the provided module" in caught.value.message


def test_node_syntax_error_fails_with_nodes_message(build: Build, tmp_path: Path) -> None:
    (tmp_path / "index.js").write_text("exports.hello = (req, res => {\n")
    with pytest.raises(BuildError) as caught:
        build(tmp_path, {"GOOGLE_FUNCTION_TARGET": "hello"})
    assert "node --check index.js failed" in caught.value.message
    assert "SyntaxError" in caught.value.message


def test_node_entry_from_package_main_must_exist(build: Build, tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"name": "x", "main": "src/fn.js"}))
    with pytest.raises(BuildError, match=r"src/fn\.js does not exist"):
        build(tmp_path, {"GOOGLE_FUNCTION_TARGET": "hello"})


def test_node_stale_lockfile_fails_with_npms_message(build: Build, node_source: Path,
                                                     tmp_path: Path) -> None:
    stale = tmp_path / "src"
    stale.mkdir()
    for name in ("index.js", "package-lock.json"):
        (stale / name).write_bytes((node_source / name).read_bytes())
    package = json.loads((node_source / "package.json").read_text())
    package["dependencies"]["left-pad"] = "1.3.0"
    (stale / "package.json").write_text(json.dumps(package))
    with pytest.raises(BuildError) as caught:
        build(stale, {"GOOGLE_FUNCTION_TARGET": "hello"})
    assert "npm ci failed" in caught.value.message
    assert "in sync" in caught.value.message


# -- layers and the cache -----------------------------------------------------------------------------

def test_layers_are_reproducible(tmp_path: Path) -> None:
    source = python_function(tmp_path / "src")
    first = write_layer([(source, "workspace")], tmp_path / "a.tar.gz")
    os.utime(source / "main.py", (1, 1))
    second = write_layer([(source, "workspace")], tmp_path / "b.tar.gz")
    assert (first.digest, first.diff_id) == (second.digest, second.diff_id)
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["workspace", "workspace/main.py", "workspace/requirements.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}


def test_compiled_dependencies_are_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytecode in the dependency layer: the same modules give the same layer wherever (and
    with whatever hash seed) they were built; a module that does not compile stays source only."""
    from cf2run.localcloud.cloudbuild.builder_common import FunctionEnv, Runner
    from cf2run.localcloud.cloudbuild.builder_python import PIP_LAYER, PythonPack

    lines: list[str] = []
    pack = PythonPack(tmp_path, FunctionEnv(target="hello"), Runner(lines.append), lines.append)
    layers = []
    for build_dir, seed in (("one", "1"), ("two-elsewhere", "2")):
        root = tmp_path / build_dir / "root"
        target = root / PIP_LAYER
        (target / "pkg").mkdir(parents=True)
        (target / "pkg" / "__init__.py").write_text(
            "WORDS = frozenset({'alpha', 'beta', 'gamma', 'delta'})\n"
            "def known(word):\n    return word in {'alpha', 'beta', 'gamma'}\n")
        (target / "py2only.py").write_text("print 'hello'\n")
        monkeypatch.setenv("PYTHONHASHSEED", seed)  # the build's own seed must not matter
        pack.compile_dependencies(root, target)
        layers.append(write_layer([(target, PIP_LAYER)], tmp_path / f"{build_dir}.tar.gz"))
        pyc = target / "pkg" / "__pycache__" / f"__init__.{sys.implementation.cache_tag}.pyc"
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01  # unchecked hash-based
        assert f"/{PIP_LAYER}/pkg/__init__.py".encode() in pyc.read_bytes()  # an image path
        assert str(tmp_path).encode() not in pyc.read_bytes()
        assert not list(target.glob("__pycache__/py2only.*"))
    assert layers[0].digest == layers[1].digest
    assert "WARNING: some dependency modules do not compile" in "\n".join(lines)


def test_concurrent_cache_fills_publish_one_complete_entry(tmp_path: Path) -> None:
    cache = DependencyCache(tmp_path / "cache")
    source = python_function(tmp_path / "src")
    results: list[LayerFile] = []

    def fill() -> None:
        def make(out: Path) -> LayerFile:
            time.sleep(0.2)
            return write_layer([(source, "workspace")], out)

        results.append(cache.build("k" * 64, make))

    threads = [threading.Thread(target=fill) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.digest for r in results}) == 1
    assert [p.name for p in (tmp_path / "cache" / "deps").iterdir()] == ["k" * 64]
    assert cache.get("k" * 64) == results[0]
