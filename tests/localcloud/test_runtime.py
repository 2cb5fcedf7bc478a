"""Revisions as local processes (cf2run.localcloud.cloudrun.runtime): real images in the local registry,
real Functions Framework processes answering real HTTP.

The images are made here by hand, shaped as the local builder makes them: a dependency layer
(``layers/google.python.pip/pip``, functions-framework installed with ``pip --target`` once per
session) and an app layer (``workspace/main.py``), with the buildpacks ``web`` process label.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cf2run.gcp.oci import ImageRef, Layer, RegistryClient
from cf2run.localcloud.cloudrun.router import Router, running_only
from cf2run.localcloud.cloudrun.runtime import RevisionFailed, RevisionSpec, Runtime
from cf2run.localcloud.iam.metadata import TokenAuthority
from cf2run.localcloud.registry.distribution import RegistryServer
from cf2run.localcloud.settings import FaultInjector, LocalCloudSettings

REPO = "us-central1-docker.pkg.dev/local-project/functions"
PIP_LAYER = "layers/google.python.pip/pip"

HELLO = """\
import json, os, sys
print("loading hello", flush=True)

def hello(request):
    names = ["K_SERVICE", "K_REVISION", "K_CONFIGURATION", "PORT", "HOST", "GREETING", "FUNCTION_TARGET"]
    return json.dumps({"env": {n: os.environ.get(n) for n in names}, "cwd": os.getcwd(),
                       "pgid": os.getpgid(0), "no_site": sys.flags.no_site,
                       "name": request.args.get("name")})
"""
CRASHING = """\
print("starting up", flush=True)
raise RuntimeError("boom at import: DATABASE_URL is not set")
"""
NODE_SERVER = """\
const http = require('http');
const server = http.createServer((req, res) => {
  res.end(JSON.stringify({bound: server.address().address, revision: process.env.K_REVISION}));
});
server.listen(Number(process.env.PORT));
"""


# -- image making -------------------------------------------------------------------------------

def _tar_gz(entries: dict[str, bytes | Path]) -> tuple[bytes, str]:
    """A tar.gz layer of `entries` (archive path -> bytes, or a directory to add whole) and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in entries.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    return gzip.compress(data, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest()


def _push(client: RegistryClient, name: str, layers: list[dict[str, bytes | Path]], command: list[str],
          env: dict[str, str]) -> str:
    """Push an image with these layers and web process; returns its by-digest reference."""
    blobs = [_tar_gz(layer) for layer in layers]
    metadata = {"processes": [{"type": "web", "command": command[:1], "args": command[1:], "direct": True}]}
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": [f"{k}={v}" for k, v in env.items()], "WorkingDir": "/workspace",
                         "Labels": {"io.buildpacks.build.metadata": json.dumps(metadata)}},
              "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in blobs]}}
    ref = ImageRef.parse(f"{REPO}/{name}:latest")
    digest = client.push_image(ref, json.dumps(config).encode(), [Layer(data=data) for data, _ in blobs])
    return str(ref.with_digest(digest))


@pytest.fixture(scope="session")
def ff_deps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """functions-framework and its dependencies, installed as the Python buildpack does."""
    target = tmp_path_factory.mktemp("ff-deps")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-compile", "--target", str(target), "functions-framework>=3.10,<4"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip install functions-framework failed:\n{done.stdout}\n{done.stderr}"
    return target


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryClient]:
    server = RegistryServer(tmp_path_factory.mktemp("registry"), FaultInjector(LocalCloudSettings()))
    server.start()
    with RegistryClient(resolve=lambda host: server.url) as client:
        yield client
    server.stop()


def python_image(client: RegistryClient, deps: Path, name: str, main_py: str) -> str:
    return _push(client, name, [{PIP_LAYER: deps}, {"workspace/main.py": main_py.encode()}],
                 ["python3", "-m", "functions_framework", "--target", "hello", "--signature-type", "http"],
                 {"PYTHONPATH": f"/{PIP_LAYER}", "PYTHONUNBUFFERED": "1", "FUNCTION_TARGET": "hello",
                  "FUNCTION_SIGNATURE_TYPE": "http"})


@pytest.fixture
def runtime(tmp_path: Path, registry: RegistryClient) -> Iterator[Runtime]:
    runtime = Runtime(tmp_path, registry, ready_deadline_s=60.0, grace_s=3.0)
    yield runtime
    runtime.stop_all()


def group_alive(pgid: int) -> bool:
    """Whether any process (zombies aside) of process group `pgid` is left."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- tests --------------------------------------------------------------------------------------

def test_revision_serves_its_function_under_the_cloud_run_contract(
        runtime: Runtime, registry: RegistryClient, ff_deps: Path) -> None:
    image = python_image(registry, ff_deps, "hello", HELLO)
    spec = RevisionSpec(service="hello", revision="hello-00001-abc", image=image,
                        env={"GREETING": "hi", "K_SERVICE": "not-allowed", "PORT": "1"})
    address = runtime.start(spec)
    assert runtime.address("hello-00001-abc") == address

    answer = httpx.get(f"http://{address}/", params={"name": "Ada"}, timeout=30).json()
    assert answer["env"] == {"K_SERVICE": "hello", "K_REVISION": "hello-00001-abc",
                             "K_CONFIGURATION": "hello", "PORT": address.rsplit(":", 1)[1],
                             "HOST": "127.0.0.1", "GREETING": "hi", "FUNCTION_TARGET": "hello"}
    assert answer["name"] == "Ada"
    assert answer["cwd"].endswith("/rootfs/workspace")
    assert answer["no_site"] == 1  # the host's site-packages are not on the path, only the image's

    assert "[hello-00001-abc] loading hello" in runtime.logs("hello")

    # A second revision of the same image reuses the unpacked image.
    runtime.start(RevisionSpec(service="hello", revision="hello-00002-def", image=image))
    assert len(list((runtime.root / "images").iterdir())) == 1

    runtime.stop("hello-00001-abc")
    assert runtime.address("hello-00001-abc") is None
    assert not group_alive(answer["pgid"])
    assert runtime.address("hello-00002-def") is not None


def test_layers_are_unpacked_once_and_linked_in_order(runtime: Runtime, registry: RegistryClient,
                                                      ff_deps: Path) -> None:
    """A rebuilt image whose dependency layer did not change unpacks only its new layer; its
    root is hard links to the unpacked layers, a later layer's file replacing an earlier one's."""
    first = python_image(registry, ff_deps, "layered", HELLO.replace("loading hello", "loading one"))
    runtime.start(RevisionSpec(service="layered", revision="layered-1", image=first))
    assert len(list((runtime.root / "layers").iterdir())) == 2
    # The same dependency layer, and an app layer over one that a third layer replaces.
    second = _push(registry, "layered", [{PIP_LAYER: ff_deps}, {"workspace/main.py": CRASHING.encode()},
                                         {"workspace/main.py": HELLO.encode()}],
                   ["python3", "-m", "functions_framework", "--target", "hello"],
                   {"PYTHONPATH": f"/{PIP_LAYER}"})
    address = runtime.start(RevisionSpec(service="layered", revision="layered-2", image=second))
    assert httpx.get(f"http://{address}/", timeout=30).json()["env"]["K_REVISION"] == "layered-2"
    assert len(list((runtime.root / "layers").iterdir())) == 4  # deps + 3 app layers, deps once
    roots = [d / "rootfs" for d in (runtime.root / "images").iterdir()]
    assert len(roots) == 2
    framework = Path(PIP_LAYER, "functions_framework", "__init__.py")
    assert len({(root / framework).stat().st_ino for root in roots}) == 1  # shared, not copied
    assert "[layered-2] loading hello" in runtime.logs("layered")
    assert not list((runtime.root / "layers").glob(".unpack-*"))


@pytest.mark.parametrize("use_cp", [True, False])
def test_link_tree_overlays_trees_as_hard_links(tmp_path: Path, use_cp: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from cf2run.localcloud import linktree

    if not use_cp:  # the fallback: no GNU cp
        monkeypatch.setattr(linktree.shutil, "which", lambda name: None)
    lower, upper, root = tmp_path / "lower", tmp_path / "upper", tmp_path / "root"
    (lower / "a" / "deep").mkdir(parents=True)
    (lower / "a" / "deep" / "kept.txt").write_text("lower")
    (lower / "a" / "replaced.txt").write_text("lower")
    (lower / "link").symlink_to("a/deep/kept.txt")
    (upper / "a").mkdir(parents=True)
    (upper / "a" / "replaced.txt").write_text("upper")
    (upper / "link").symlink_to("a/replaced.txt")
    linktree.link_tree(lower, root)
    linktree.link_tree(upper, root)
    assert (root / "a" / "deep" / "kept.txt").read_text() == "lower"
    assert (root / "a" / "replaced.txt").read_text() == "upper"
    assert (root / "link").read_text() == "upper" and os.readlink(root / "link") == "a/replaced.txt"
    kept = Path("a", "deep", "kept.txt")
    assert (root / kept).stat().st_ino == (lower / kept).stat().st_ino
    assert (lower / "a" / "replaced.txt").read_text() == "lower"  # replaced in root, not in the layer


def _tree(root: Path) -> dict[str, str]:
    """Every file under root (symlinked directories followed) -> its text; symlinks to files as '-> X'."""
    found = {}
    for directory, _, files in os.walk(root, followlinks=True):
        for name in files:
            path = Path(directory, name)
            key = str(path.relative_to(root))
            found[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_text()
    return found


def test_overlay_lays_layers_as_linking_them_in_order_but_shares_what_one_lower_layer_has(
        tmp_path: Path) -> None:
    from cf2run.localcloud import linktree

    deps, lib, app = tmp_path / "deps", tmp_path / "lib", tmp_path / "app"
    files = {
        deps: {"layers/pip/flask/__init__.py": "flask", "workspace/node_modules/m/index.js": "m",
               "shared.txt": "deps", "workspace/data/seed.txt": "seed"},
        lib: {"shared.txt": "lib", "layers2/x.py": "x", "workspace/lib.js": "lib"},
        app: {"workspace/main.py": "main", "layers2/y.py": "y"},
    }
    for layer, entries in files.items():
        for name, text in entries.items():
            (layer / name).parent.mkdir(parents=True, exist_ok=True)
            (layer / name).write_text(text)
    (lib / "link").symlink_to("shared.txt")

    linked, laid = tmp_path / "linked", tmp_path / "laid"
    for layer in (deps, lib, app):
        linktree.link_tree(layer, linked)
    linktree.overlay([deps, lib, app], laid, private="/workspace/data")

    assert _tree(laid) == _tree(linked)  # the same files, the same contents
    assert (laid / "layers").is_symlink() and not os.path.isabs(os.readlink(laid / "layers"))
    assert (laid / "workspace" / "node_modules").is_symlink()
    flask = Path("layers", "pip", "flask", "__init__.py")
    assert (laid / flask).stat().st_ino == (deps / flask).stat().st_ino
    # The top layer, directories several layers have, and the working directory stay the root's own.
    for own in ("workspace", "layers2", "workspace/data"):
        assert (laid / own).is_dir() and not (laid / own).is_symlink(), own
    (laid / "workspace" / "written.txt").write_text("by a revision")
    assert not (app / "workspace" / "written.txt").exists()


def test_image_by_tag_and_a_crash_after_ready(runtime: Runtime, registry: RegistryClient,
                                              ff_deps: Path) -> None:
    by_digest = ImageRef.parse(python_image(registry, ff_deps, "tagged", HELLO))
    address = runtime.start(RevisionSpec(service="tagged", revision="tagged-1",
                                         image=f"{by_digest.name}:latest"))
    pgid = httpx.get(f"http://{address}/", timeout=30).json()["pgid"]
    os.kill(pgid, signal.SIGKILL)  # the revision's main process dies
    assert eventually(lambda: runtime.address("tagged-1") is None)
    assert eventually(lambda: not group_alive(pgid))  # its other processes go with it
    assert eventually(lambda: "[tagged-1] Container terminated on signal 9." in runtime.logs("tagged"))


def test_a_function_that_crashes_at_import_fails_with_its_last_log_lines(
        runtime: Runtime, registry: RegistryClient, ff_deps: Path) -> None:
    image = python_image(registry, ff_deps, "crashing", CRASHING)
    with pytest.raises(RevisionFailed) as failed:
        runtime.start(RevisionSpec(service="crashing", revision="crashing-1", image=image))
    reason = failed.value.reason
    assert "Revision 'crashing-1' is not ready" in reason
    assert "exited with code" in reason
    assert reason.endswith("RuntimeError: boom at import: DATABASE_URL is not set")
    assert runtime.address("crashing-1") is None
    logs = runtime.logs("crashing")
    assert "[crashing-1] starting up" in logs and "[crashing-1] RuntimeError: boom at import" in logs


def test_never_ready_fails_after_the_deadline(tmp_path: Path, registry: RegistryClient,
                                              ff_deps: Path) -> None:
    runtime = Runtime(tmp_path, registry, ready_deadline_s=lambda: 1.5)
    image = python_image(registry, ff_deps, "slow", HELLO)
    started = time.monotonic()
    try:
        with pytest.raises(RevisionFailed) as failed:
            runtime.start(RevisionSpec(service="slow", revision="slow-1", image=image), never_ready=True)
    finally:
        runtime.stop_all()
    assert time.monotonic() - started >= 1.5
    assert "did not listen on the port defined by the PORT=" in failed.value.reason
    assert "within 1.5s" in failed.value.reason
    assert runtime.address("slow-1") is None


def test_stop_all_leaves_no_process_and_refuses_new_revisions(
        tmp_path: Path, registry: RegistryClient, ff_deps: Path) -> None:
    runtime = Runtime(tmp_path, registry)
    image = python_image(registry, ff_deps, "many", HELLO)
    groups = []
    for n in range(3):
        address = runtime.start(RevisionSpec(service="many", revision=f"many-{n}", image=image))
        groups.append(httpx.get(f"http://{address}/", timeout=30).json()["pgid"])
    assert all(group_alive(pgid) for pgid in groups)
    runtime.stop_all()
    assert not any(group_alive(pgid) for pgid in groups)
    assert runtime.running() == []
    with pytest.raises(RevisionFailed, match="shutting down"):
        runtime.start(RevisionSpec(service="many", revision="many-9", image=image))


def test_layers_with_escaping_paths_are_refused(runtime: Runtime, registry: RegistryClient,
                                               tmp_path: Path) -> None:
    image = _push(registry, "escaping", [{"workspace/../../escaped.txt": b"x"}], ["python3", "-c", "1"], {})
    with pytest.raises(RevisionFailed, match=re.escape("unsafe path 'workspace/../../escaped.txt'")):
        runtime.start(RevisionSpec(service="escaping", revision="escaping-1", image=image))
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list((runtime.root / "images").iterdir())  # nothing half-unpacked is kept


def test_missing_image_fails_with_its_name(runtime: Runtime) -> None:
    with pytest.raises(RevisionFailed, match=r"Image '.*/nothing:v1' not found"):
        runtime.start(RevisionSpec(service="nothing", revision="nothing-1", image=f"{REPO}/nothing:v1"))


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_web_process_runs_with_host_node_on_loopback(runtime: Runtime, registry: RegistryClient) -> None:
    image = _push(registry, "node-app", [{"workspace/server.js": NODE_SERVER.encode()}],
                  ["node", "/workspace/server.js"], {})
    address = runtime.start(RevisionSpec(service="node-app", revision="node-app-1", image=image))
    assert httpx.get(f"http://{address}/", timeout=30).json() == {"bound": "127.0.0.1",
                                                                   "revision": "node-app-1"}


def test_a_private_url_routes_to_a_running_revision(runtime: Runtime, registry: RegistryClient,
                                                    ff_deps: Path, tmp_path: Path) -> None:
    """Runtime + router together, as the local Cloud Run uses them, over keep-alive connections."""
    image = python_image(registry, ff_deps, "routed", HELLO)
    runtime.start(RevisionSpec(service="routed", revision="routed-1", image=image))
    tokens = TokenAuthority(tmp_path)
    router = Router(tokens, backend=running_only(runtime.address))
    try:
        url = router.open("routed")
        router.route("routed", [("routed-1", 100)], public=False)
        headers = {"Authorization": f"Bearer {tokens.mint(url)}"}
        with httpx.Client(headers=headers, timeout=30) as client:
            assert client.get(url).status_code == 200
            time.sleep(2.5)  # longer than the revision keeps idle connections open
            answers = [client.get(url, params={"name": str(n)}) for n in range(20)]
            assert [a.json()["name"] for a in answers] == [str(n) for n in range(20)]
            runtime.stop("routed-1")
            assert client.get(url).status_code == 503
    finally:
        router.stop_all()
