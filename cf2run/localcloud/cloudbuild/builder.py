"""The local buildpack: what Google's buildpacks do for a function, for Python and Node.js.

    digest = build_function(source_dir, {"GOOGLE_FUNCTION_TARGET": "hello"},
                            "us-central1-docker.pkg.dev/p/r/hello:v1", registry, cache_dir, print)

Detect the language (``GOOGLE_RUNTIME`` overrides), run the source's own build step (Node's
``gcp-build``), check the entry file and the target, install dependencies into a layer (cached
by the requirements or lockfile plus runtime), add the Functions Framework when the source
does not declare it, and push an OCI image whose config carries the ``web`` process and
buildpack-style labels. The build runs with the host's
Python and Node; a different requested version is a warning in the log, not a failure.

The image's runtime contract (what the local runtime relies on): the web process's
``command[0]`` is ``python3`` or ``node``; every ``/workspace`` or ``/layers`` path in the
command, args and Env is relative to the image root (layers unpacked in order);
``WorkingDir`` is ``/workspace``; the runtime sets ``PORT``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from cf2run.errors import RegistryError, SpecError
from cf2run.gcp.oci import ImageRef, Layer, RegistryClient
from cf2run.localcloud.cloudbuild.builder_common import (
    BuildCancelled,
    BuildError,
    DependencyPlan,
    FunctionEnv,
    LanguagePack,
    Log,
    PushFailed,
    Runner,
    version_matches,
    version_note,
    warn_version,
)
from cf2run.localcloud.cloudbuild.builder_node import NodePack, node_version_matches
from cf2run.localcloud.cloudbuild.builder_python import PythonPack
from cf2run.localcloud.cloudbuild.image import (
    DependencyCache,
    ImageLayer,
    LayerFile,
    image_config,
    write_layer,
)
from cf2run.localcloud.linktree import link_tree

__all__ = ["BuildCancelled", "BuildError", "PushFailed", "build_function", "detect_language"]

LABEL_BUILDPACK = "google.utils.label"


def build_function(source_dir: Path, env: Mapping[str, str], image: str, registry: RegistryClient,
                   cache_dir: Path, log: Log, *, cancel: threading.Event | None = None) -> str:
    """Build the function in `source_dir` and push it as `image`; returns the manifest digest.

    `env` is the build env (pack ``--env``). Setting `cancel` stops the build (a running
    pip/npm is killed) with `BuildCancelled`. Raises `BuildError` saying what is wrong.
    """
    runner = Runner(log, cancel)
    try:
        ref = ImageRef.parse(image)
    except SpecError as error:
        raise BuildError(f"cannot build {image!r}: {error.message}", hint=error.hint) from None
    log("===> DETECTING")
    function_env = FunctionEnv.parse(env, log)
    pack = _pack(source_dir, function_env, runner, log)
    runtime = pack.runtime()
    buildpacks = pack.buildpacks() + ([LABEL_BUILDPACK] if function_env.labels else [])
    log(f"{len(buildpacks)} buildpacks participating")
    for buildpack in buildpacks:
        log(f"{buildpack:<40} local")
    matches = version_matches if pack.language == "python" else node_version_matches
    warn_version(runtime, log, matches)
    runtime = dataclasses.replace(runtime, note=version_note(runtime, matches))
    if function_env.entrypoint:
        log("WARNING: GOOGLE_ENTRYPOINT is ignored for function builds: the web process is the "
            "Functions Framework serving GOOGLE_FUNCTION_TARGET.")

    log("===> BUILDING")
    pack.check_source()
    with tempfile.TemporaryDirectory(prefix="cf2run-build-") as tmp:
        root = Path(tmp) / "root"
        shutil.copytree(source_dir, root / "workspace", symlinks=True,
                        ignore=_top_level(source_dir, pack.app_excludes()))
        app_dir = root / "workspace" if pack.build_source(root / "workspace") else source_dir
        plan = pack.dependencies()
        key = DependencyCache.key(runtime, plan.key_material)
        dependencies = _dependency_layer(pack, plan, key, root, cache_dir, log)
        runner.check_cancelled()
        pack.check_target(root)
        log(f"Function '{function_env.target}' ({function_env.signature_type}) found in the source.")
        process = pack.web_process(root)

        log("===> EXPORTING")
        app = write_layer([(app_dir, "workspace")], Path(tmp) / "app.tar.gz", pack.app_excludes())
        layers = [ImageLayer(dependencies, plan.buildpack_id),
                  ImageLayer(app, "buildpacksio/lifecycle:application")]
        for label, value in function_env.labels.items():
            log(f"Adding image label {label}: {value}")
        config = image_config(process=process, env=pack.launch_env(), layers=layers, runtime=runtime,
                              buildpacks=buildpacks, labels=function_env.labels)
        runner.check_cancelled()
        log(f"Adding layer '{plan.buildpack_id}' {dependencies.diff_id}")
        log(f"Adding layer 'app' {app.diff_id}")
        log(f"Setting default process type 'web': {' '.join(process.command + process.args)}")
        cache = DependencyCache(cache_dir)
        _mount(registry, ref, dependencies.digest, cache.pushed_to(key), log)
        digest = _push(registry, ref, config, [dependencies, app])
        cache.record_push(key, f"{ref.host}/{ref.repository}")
    log(f"*** Images ({digest[7:19]}):")
    log(f"      {image}")
    log(f"Successfully built image '{image}'")
    return digest


def detect_language(source_dir: Path, runtime: str | None) -> str:
    """``python`` or ``nodejs``, as the builder's detect phase decides (REFERENCE §2)."""
    if runtime:
        wanted = runtime.strip().lower()
        if wanted.startswith("python"):
            return "python"
        if wanted.startswith("nodejs") or wanted == "node":
            return "nodejs"
        raise BuildError(f"GOOGLE_RUNTIME={runtime!r} is not supported by the local builder",
                         hint="use python (python312, ...) or nodejs (nodejs20, ...)")
    python_files = sorted(str(p.relative_to(source_dir)) for p in source_dir.rglob("*.py"))
    node_files = (["package.json"] if (source_dir / "package.json").is_file() else []) + sorted(
        str(p.relative_to(source_dir)) for p in source_dir.rglob("*.js"))
    if python_files and node_files:
        raise BuildError(
            f"both Python ({_some(python_files)}) and Node.js ({_some(node_files)}) files found; "
            "cannot tell which language the function is in",
            hint="set GOOGLE_RUNTIME (python or nodejs) in the build env, or remove the stray files")
    if python_files:
        return "python"
    if node_files:
        return "nodejs"
    raise BuildError("no Python (*.py) or Node.js (package.json, *.js) files found in the source",
                     hint="the local builder builds Python and Node.js functions; check the source "
                          "directory and its .gcloudignore")


def _pack(source_dir: Path, env: FunctionEnv, runner: Runner, log: Log) -> LanguagePack:
    language = detect_language(source_dir, env.runtime)
    log(f"Detected language: {language}" + (f" (GOOGLE_RUNTIME={env.runtime})" if env.runtime else ""))
    if language == "python":
        return PythonPack(source_dir, env, runner, log)
    return NodePack(source_dir, env, runner, log)


def _dependency_layer(pack: LanguagePack, plan: DependencyPlan, key: str, root: Path, cache_dir: Path,
                      log: Log) -> LayerFile:
    """The dependency layer from the cache, or installed now and cached.

    A pack that checks the target with the dependencies on disk gets them under `root` either
    way: installed there, or hard-linked from the cache entry's unpacked tree (kept by the
    build that made the entry), which is much faster than unpacking the layer again.
    """
    cache = DependencyCache(cache_dir)
    cached = cache.get(key)
    if cached is not None:
        log(f"Restoring dependency layer '{plan.buildpack_id}' from cache (key {key[:12]})")
        if pack.check_needs_dependencies:
            link_tree(cache.unpacked(key, cached), root)
        return cached
    log(f"No cached dependency layer for key {key[:12]}: installing dependencies")
    pack.install(root)
    installed = root / plan.layer_dir
    return cache.build(key, lambda out: write_layer([(installed, plan.layer_dir)], out),
                       tree=(installed, plan.layer_dir) if pack.check_needs_dependencies else None)


def _mount(registry: RegistryClient, ref: ImageRef, digest: str, source: str | None, log: Log) -> None:
    """Mount blob `digest` into ref's repository from `source` (``HOST/REPOSITORY``, where an
    earlier build pushed it) on the same registry, as pack's exporter does for a layer it
    knows: the registry links the blob, and the push finds it there instead of uploading it
    again. Best effort: if the registry does not mount it, the push uploads it as usual."""
    if source is None:
        return
    host, _, repository = source.partition("/")
    if host != ref.host or repository == ref.repository:
        return
    try:
        if registry.mount_blob(ref, digest, repository):
            log(f"Reusing layer {digest[7:19]} from {repository}")
    except RegistryError:
        pass


def _push(registry: RegistryClient, ref: ImageRef, config: bytes, layers: list[LayerFile]) -> str:
    """Push the image; PushFailed with the registry's words as docker prints them (``denied: ...``:
    distribution's errcode, lowercased, then the message) when the registry refuses it."""
    try:
        return registry.push_image(ref, config, [Layer(path=layer.path) for layer in layers])
    except RegistryError as error:
        words = error.registry_message or error.message
        denial = f"{error.code.lower().replace('_', ' ')}: {words}" if error.code else words
        raise PushFailed(str(ref), denial, error.hint) from error


def _top_level(source_dir: Path, excludes: frozenset[str]) -> Callable[[str, list[str]], set[str]]:
    """A copytree `ignore` that drops `excludes` at the top level only."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        return set(names) & excludes if Path(directory) == source_dir else set()

    return ignore


def _some(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
