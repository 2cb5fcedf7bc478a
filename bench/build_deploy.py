"""Build and deploy speed on the embedded local cloud, against baselines measured in the same run.

    .venv/bin/python bench/build_deploy.py                  # both samples, 5 reps, 3 cold builds
    .venv/bin/python bench/build_deploy.py --samples python --reps 3 --no-readme

Per sample function (examples/python-http, examples/node-http), through the official clients
(`Cloud.local`) and the pipeline's own functions (make_tarball, upload_archive,
pack_build_request, image_for, verify_built_image, deploy):

- cold build: a fresh `LocalCloud()` (empty dependency cache; pip's and npm's download caches
  fresh too, unless --host-tool-caches) -- CreateBuild until GetBuild says SUCCESS, polled
  every 50 ms;
- warm rebuild: the same cloud, the source changed by one comment line (so a new image),
  dependencies cached; ratio warm/cold;
- deploy to ready: tasks/deploy.py `deploy()` (CreateService for the first image, then
  UpdateService to each rebuilt one, waiting as the pipeline waits) plus the first 200 with
  the expected body from the service URL;
- baseline: the same image's web process (the command, env and cwd the local runtime builds
  from the unpacked image) started directly, until its own port answers the same request;
  ratio deploy/baseline is the overhead of the local Cloud Run;
- cold start (issue 17, scale to zero): once every revision of the service has scaled to zero,
  the first request to its URL until the answer (the local Cloud Run holds it while an instance
  starts; goal under 1 s for the Python function with dependencies).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import (
    REPO,
    Samples,
    Stopwatch,
    backoff_sees,
    command_line,
    free_port,
    machine,
    markdown_table,
    poll_until,
    ratio,
    seconds,
    write_section,
)
from google.cloud.devtools import cloudbuild_v1

from cf2run.fleet.quotas import cloud_run_write
from cf2run.gcp.cloud import LOCAL_POLLING, Cloud
from cf2run.gcp.oci import ImageRef
from cf2run.localcloud.cloudrun.runtime import RevisionSpec, _launch
from cf2run.localcloud.server import LocalCloud
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import BuiltImage, SourceArchive
from tasks.build import TERMINAL, image_for, pack_build_request
from tasks.deploy import deploy
from tasks.package import archive_object_name, make_tarball, upload_archive
from tasks.verify import verify_built_image

SECTION = "build_deploy"
BUILD_POLL_S = 0.05
ANSWER_POLL_S = 0.01
TIMEOUT_S = 600.0
GOALS = {"warm": 5.0, "deploy": 3.0, "cold_start": 1.0}  # issue 2, "Speed"; issue 17, scale to zero


@dataclass(frozen=True)
class Sample:
    key: str
    directory: str  # under examples/
    runtime: str
    entry_point: str
    entry_file: str
    comment: str  # line comment of the language, for the one-line change
    path: str  # request that proves the function answers
    expect: str


SAMPLES = {
    "python": Sample("python", "python-http", "python311", "hello", "main.py", "#",
                     "/?name=bench&count=1234567", "1,234,567 requests served"),
    "node": Sample("node", "node-http", "nodejs20", "helloHttp", "index.js", "//",
                   "/?date=2024-02-29&years=1", "is 2025-02-28"),
}


@dataclass
class Result:
    sample: Sample
    cold: Samples = field(default_factory=lambda: Samples("cold build"))
    warm: Samples = field(default_factory=lambda: Samples("warm rebuild"))
    create: Samples = field(default_factory=lambda: Samples("deploy (create)"))
    update: Samples = field(default_factory=lambda: Samples("deploy (update)"))
    server_ready: Samples = field(default_factory=lambda: Samples("server ready"))
    direct: Samples = field(default_factory=lambda: Samples("direct start"))
    direct_again: Samples = field(default_factory=lambda: Samples("direct start again"))
    cold_start: Samples = field(default_factory=lambda: Samples("cold start"))


# -- building ----------------------------------------------------------------------------------


def build(cloud: Cloud, spec: FunctionSpec, target: Target) -> tuple[BuiltImage, SourceArchive, float]:
    """Package and upload (untimed), then CreateBuild -> SUCCESS as the client sees it (timed)."""
    with make_tarball(spec.source) as tarball:
        archive = upload_archive(cloud.storage, target.bucket, archive_object_name(spec, tarball), tarball)
    image = image_for(spec, target, archive.sha256)
    request = pack_build_request(spec, target, archive, image)
    parent = f"projects/{target.project}/locations/{target.region}"
    watch = Stopwatch()
    operation = cloud.builds.create_build(parent=parent, project_id=target.project, build=request)
    name = f"{parent}/builds/{operation.metadata.build.id}"

    def finished() -> cloudbuild_v1.Build | None:
        found = cloud.builds.get_build(name=name)
        return found if found.status in TERMINAL else None

    done = poll_until(finished, TIMEOUT_S, BUILD_POLL_S, f"build {name}")
    elapsed = watch.elapsed
    if done.status != cloudbuild_v1.Build.Status.SUCCESS:
        raise RuntimeError(f"build of {spec.name} ended {done.status.name}: {done.status_detail}")
    digest = next(built.digest for built in done.results.images if built.name == image)
    return BuiltImage(image=image, digest=digest, build_id=done.id, cached=False), archive, elapsed


@contextlib.contextmanager
def tool_caches(fresh: bool) -> Iterator[None]:
    """Point pip's and npm's download caches at an empty directory while the block runs."""
    if not fresh:
        yield
        return
    names = ("PIP_CACHE_DIR", "npm_config_cache")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="cf2run-bench-caches-") as tmp:
        os.environ.update({name: str(Path(tmp) / name) for name in names})
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# -- deploying and the baseline ------------------------------------------------------------------


def answers(url: str, sample: Sample, token: str | None = None) -> bool | None:
    """True once `url` answers the sample's request with 200 and the expected text; else None."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + sample.path, headers=headers, timeout=5)
    except httpx.TransportError:
        return None
    return True if response.status_code == 200 and sample.expect in response.text else None


def deploy_to_ready(local: LocalCloud, cloud: Cloud, spec: FunctionSpec, target: Target,
                    built: BuiltImage, archive: SourceArchive, sample: Sample) -> tuple[float, float, str]:
    """(seconds from the deploy call until the URL answers, seconds until the server marked it
    Ready, the service's name)."""
    verified = verify_built_image(cloud.registry, built)
    started_at = time.time()
    watch = Stopwatch()
    deployment = deploy(cloud, spec, target, verified, archive.sha256)
    deployed = watch.elapsed
    token = cloud.id_token(deployment.url)  # the smoke step's token: not part of the deploy
    watch.restart()
    poll_until(lambda: answers(deployment.url, sample, token), 60, ANSWER_POLL_S, "the service URL")
    service = cloud.services.get_service(name=deployment.service)
    ready_at = service.terminal_condition.last_transition_time.timestamp()
    return deployed + watch.elapsed, ready_at - started_at, deployment.service


def cold_start(local: LocalCloud, cloud: Cloud, service_name: str, sample: Sample) -> float:
    """Seconds from the first request to the service URL, once every revision of the service has
    scaled to zero, until its answer: held by the local Cloud Run while an instance starts (for
    Python, forked from the zygote of its dependency set, which outlives its revisions)."""
    service = cloud.services.get_service(name=service_name)
    token = cloud.id_token(service.uri)
    prefix = service_name.rsplit("/", 1)[-1] + "-"

    def scaled_to_zero() -> bool | None:
        return None if any(r.startswith(prefix) for r in local.instances.runtime.running()) else True

    idle_s = local.settings.scale_to_zero_after_s
    local.settings.scale_to_zero_after_s = 0.2  # so the bench need not wait Cloud Run's 15 minutes
    try:
        poll_until(scaled_to_zero, 60, 0.05, f"{service_name} scaled to zero")
    finally:
        local.settings.scale_to_zero_after_s = idle_s
    watch = Stopwatch()
    if not answers(service.uri, sample, token):  # one request: the first one, held until it listens
        raise RuntimeError(f"{service.uri} did not answer the first request after scaling to zero")
    return watch.elapsed


def start_directly(local: LocalCloud, cloud: Cloud, built: BuiltImage, sample: Sample,
                   scratch: Path) -> tuple[float, float]:
    """Seconds until the image's web process, started by hand, answers the sample's request:
    from a pristine copy of the image (its layers as pulled, none of the ``__pycache__`` a
    revision wrote), then once more from the same copy (the first start's bytecode cached)."""
    runtime = local.state_dir / "runtime"
    unpacked = runtime / "images" / built.digest.replace(":", "-")  # assembled by the deploy
    _, manifest = cloud.registry.image_manifest(ImageRef.parse(built.by_digest))
    root = scratch / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    for layer in manifest["layers"]:  # unpacked by the deploy, once per layer digest: copied, in order
        shutil.copytree(runtime / "layers" / layer["digest"].replace(":", "-"), root, symlinks=True,
                        dirs_exist_ok=True)
    config = json.loads((unpacked / "config.json").read_text())
    spec = RevisionSpec(service="bench-direct", revision="bench-direct-00001", image=built.by_digest)
    command, env, cwd = _launch(root, config, spec, runtime / "node-loopback.js")
    return _run_until_answering(command, env, cwd, sample), _run_until_answering(command, env, cwd, sample)


def _run_until_answering(command: list[str], env: dict[str, str], cwd: Path, sample: Sample) -> float:
    port = free_port()
    env = {**env, "PORT": str(port)}
    watch = Stopwatch()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        poll_until(lambda: answers(f"http://127.0.0.1:{port}", sample), 60, ANSWER_POLL_S, "the web process")
        return watch.elapsed
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- one sample ------------------------------------------------------------------------------------


def bench_sample(sample: Sample, reps: int, cold_reps: int, fresh_tool_caches: bool) -> Result:
    result = Result(sample)
    target = Target()
    with tempfile.TemporaryDirectory(prefix="cf2run-bench-") as tmp:
        source = Path(tmp) / sample.directory
        shutil.copytree(REPO / "examples" / sample.directory, source)
        spec = FunctionSpec.model_validate({
            "name": f"bench-{sample.key}", "source": source, "runtime": sample.runtime,
            "entry_point": sample.entry_point, "smoke": {"path": sample.path, "expect_body": sample.expect}})
        for number in range(cold_reps):
            with tool_caches(fresh_tool_caches), LocalCloud() as local:
                cloud = Cloud.local(local.endpoints)
                _, _, elapsed = build(cloud, spec, target)
                result.cold.add(elapsed)
                print(f"  {sample.key}: cold build {number + 1}/{cold_reps}: {seconds(elapsed)}", flush=True)
                if number < cold_reps - 1:
                    continue
                for rep in range(reps):  # the last cold cloud's dependency cache is now warm
                    entry = source / sample.entry_file
                    entry.write_text(entry.read_text() + f"{sample.comment} bench rebuild {rep}\n")
                    built, archive, elapsed = build(cloud, spec, target)
                    result.warm.add(elapsed)
                    total, server, service = deploy_to_ready(local, cloud, spec, target, built, archive,
                                                             sample)
                    (result.create if rep == 0 else result.update).add(total)
                    result.server_ready.add(server)
                    result.cold_start.add(cold_start(local, cloud, service, sample))
                    direct, again = start_directly(local, cloud, built, sample, Path(tmp))
                    result.direct.add(direct)
                    result.direct_again.add(again)
                    print(f"  {sample.key}: rep {rep + 1}/{reps}: warm rebuild {seconds(elapsed)}, "
                          f"deploy to ready {seconds(total)} (server {seconds(server)}), "
                          f"direct start {seconds(direct)}, cold start after scale to zero "
                          f"{seconds(result.cold_start.values[-1])}", flush=True)
    return result


# -- the report ------------------------------------------------------------------------------------


def goal(value: float, limit: float) -> str:
    return f"< {limit:g} s: {'met' if value < limit else 'NOT met'}"


def rows(result: Result) -> list[list[str]]:
    name = result.sample.directory
    cold, warm, direct = result.cold.median, result.warm.median, result.direct.median
    deploys = Samples("deploy", result.create.values + result.update.values)
    python = result.sample.key == "python"
    seen = backoff_sees(warm, LOCAL_POLLING.build)
    table = [
        [name, "cold build (empty dependency cache)", seconds(cold), result.cold.spread(),
         str(len(result.cold.values)), "1 (baseline)", ""],
        [name, "warm rebuild (deps cached, 1-line change)", seconds(warm), result.warm.spread(),
         str(len(result.warm.values)), f"{ratio(warm, cold)} cold",
         goal(warm, GOALS["warm"]) if python else ""],
        [name, "↳ as tasks/build.py's GetBuild backoff on the local target sees it (derived)", seconds(seen),
         "", "", f"{ratio(seen, cold)} cold", ""],
        [name, "direct start of the image's web process (baseline)", seconds(direct), result.direct.spread(),
         str(len(result.direct.values)), "1 (baseline)", ""],
        [name, "↳ started again from the same copy (bytecode cached now)",
         seconds(result.direct_again.median), result.direct_again.spread(),
         str(len(result.direct_again.values)), f"{ratio(result.direct_again.median, direct)} direct", ""],
        [name, "deploy to ready: deploy() + URL answers (create and updates)", seconds(deploys.median),
         deploys.spread(), str(len(deploys.values)), f"{ratio(deploys.median, direct)} direct",
         goal(deploys.median, GOALS["deploy"])],
    ]
    for part in (result.create, result.update):
        if part.values:
            table.append([name, f"↳ {part.label}", seconds(part.median), part.spread(), str(len(part.values)),
                          f"{ratio(part.median, direct)} direct", ""])
    server = result.server_ready
    table.append([name, "↳ server side: deploy call → Ready condition (server clock)",
                  seconds(server.median), server.spread(), str(len(server.values)),
                  f"{ratio(server.median, direct)} direct", ""])
    cold = result.cold_start
    table.append([name, "cold start: first request after the service scaled to zero → its answer",
                  seconds(cold.median), cold.spread(), str(len(cold.values)),
                  f"{ratio(cold.median, direct)} direct",
                  f"{goal(cold.median, GOALS['cold_start'])} (issue 17)" if python else ""])
    return table


def report(results: list[Result], fresh_tool_caches: bool) -> str:
    header = ["function", "measure", "median", "min-max", "n", "ratio", "goal (issue 2)"]
    table = markdown_table(header, [row for result in results for row in rows(result)])
    caches = ("fresh pip/npm download caches per cold build" if fresh_tool_caches
              else "the host's pip/npm download caches")
    return (f"Machine: {machine()}.  \nCommand: `{command_line()}` ({caches}).\n\n{table}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--samples", default="python,node", help="comma-separated: python, node")
    parser.add_argument("--reps", type=int, default=5, help="warm rebuilds and deploys per sample")
    parser.add_argument("--cold-reps", type=int, default=3, help="cold builds per sample (fresh clouds)")
    parser.add_argument("--host-tool-caches", action="store_true",
                        help="let cold builds use the host's pip/npm download caches")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.cold_reps < 1:
        parser.error("--reps and --cold-reps must be at least 1")
    fresh = not args.host_tool_caches
    # deploy() takes the Cloud Run writes rate limit from the Prefect API; without a server that
    # starts Prefect's ephemeral one (~10 s), which is no part of a deploy: start it untimed.
    cloud_run_write()
    results = []
    for key in args.samples.split(","):
        print(f"{key}:", flush=True)
        results.append(bench_sample(SAMPLES[key.strip()], args.reps, args.cold_reps, fresh))
    text = report(results, fresh)
    print("\n" + text)
    if not args.no_readme:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
