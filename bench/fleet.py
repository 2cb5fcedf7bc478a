"""Fleet speed: cf2run's fleet flow against one function after another and the quota-bound ideal.

    .venv/bin/python bench/fleet.py                          # N=100, Q=10, B=3 s (~20 min, 2 CPUs)
    .venv/bin/python bench/fleet.py --n 20 --q 5 --b 2 --cached-n 200 --no-readme

N synthetic Python HTTP functions (a distinct two-line source each, so each needs its own
build; no requirements, so all share one dependency layer, made once by an untimed warm-up)
against an in-process `LocalCloud` whose builds take B extra seconds WORKING
(`build_latency_s`) and of which at most Q run at once (`max_concurrent_builds`, and the
Prefect limit `cf2run-cloud-build` set to Q with `cf2run.quotas.ensure_limits`). Prefect
API: a temporary `prefect server start` on a throw-away Postgres cluster (default; what the
README recommends for fleets) or on SQLite (`--prefect-db sqlite`), PREFECT_HOME in a temporary
directory, so every cache starts empty. Each measured flow runs in a fresh Python process
(`--child`, as a worker's flow-run process would); its wall time is taken inside that
process around the flow call (imports excluded). In one run:

(a) `migrate_fleet(manifest, max_parallel=min(N, 500), fanout="local")`, wall time; ratio to
    the ideal ceil(N/Q)*B + D, with D the median time one function spends outside its
    build (package, verify, deploy, smoke, promote), measured in (b) -- see README;
(c) the same fleet again, unchanged: ListBuilds and the revisions of every service
    (ListRevisions on services/-) before and after must not move; seconds per function;
    then a rerun of its first half, for the slope of memory with N;
(b) the seed's way: `cf2run.report.migrate_each` over N *other* functions (new names, new
    sources: every one is built and deployed), one after another; speedup (b)/(a);
(d) the flow process' peak RSS (VmHWM = ru_maxrss, whole process, from its start) for the
    cached rerun (c) at N, and for a dry run of --cached-n functions (1000 real revisions
    would not fit in memory; see README for what exactly that measures).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from _common import (
    REPO,
    ProcessCpu,
    Stopwatch,
    backoff_sees,
    busy_fraction,
    command_line,
    cpu_ticks,
    free_port,
    machine,
    markdown_table,
    memory_kib,
    mib,
    poll_until,
    processes,
    seconds,
    write_section,
)

SECTION = "fleet"
#: Issue 4, "Speed": (a)/ideal at most this; (b)/(a) at least this; a cached rerun under this per function.
GOAL_IDEAL, GOAL_SPEEDUP, GOAL_RERUN_S = 1.2, 8.0, 0.2
MAX_PARALLEL = 500  # migrate_fleet's own upper bound for max_parallel
STEPS = ("package", "build", "verify", "deploy", "smoke", "promote")
PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"


# -- the synthetic fleet ---------------------------------------------------------------------------


def answer(name: str) -> str:
    return f"hello from {name}"


def write_fleet(directory: Path, names: list[str], localcloud_dir: Path) -> Path:
    """A manifest with one function per name: its own two-line source, an empty requirements.txt."""
    for name in names:
        source = directory / name
        source.mkdir(parents=True, exist_ok=True)
        (source / "main.py").write_text(f"def hello(request):\n    return {answer(name)!r}\n")
        (source / "requirements.txt").write_text("")
    manifest = directory / "fleet.yaml"
    manifest.write_text(yaml.safe_dump({
        "target": {"kind": "local", "localcloud_dir": str(localcloud_dir)},
        "defaults": {"runtime": "python311", "entry_point": "hello", "smoke": {"deadline_s": 120}},
        "functions": [{"name": name, "source": name, "smoke": {"expect_body": answer(name)}}
                      for name in names]}, sort_keys=False))
    return manifest


# -- a measured flow, in its own process -----------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    """Run one flow (imported first, then timed) and write what was measured to --out as JSON."""
    from cf2run.fleet import load
    from cf2run.fleet_report import FleetReport
    from cf2run.report import migrate_each
    from flows.migrate_fleet import migrate_fleet

    apply_what_ifs(args)
    manifest = Path(args.manifest)
    fleet = load(manifest)
    only = [spec.name for spec in fleet.functions][:args.first] if args.first else None
    rss_before = memory_kib("VmRSS")
    cpu_before, ticks_before = resource.getrusage(resource.RUSAGE_SELF), cpu_ticks()
    watch = Stopwatch()
    out: dict[str, Any] = {"phase": args.child, "started_at": time.time()}
    if args.child == "each":
        results = migrate_each(fleet.functions, fleet.target)
        out["state"] = "Completed" if all(r.status == "succeeded" for r in results) else "Failed"
    else:
        state = migrate_fleet(manifest, max_parallel=args.max_parallel, dry_run=args.child == "dry-run",
                              fanout="local", only=only, return_state=True)
        report = state.result(raise_on_failure=False)
        assert isinstance(report, FleetReport), report
        out["state"], out["summary"], results = state.name, report.summary, report.results
        out["plans"] = [{"function": p.function, "ok": p.ok, "build": p.build, "deploy": p.deploy}
                        for p in report.plans]
    out["wall_s"], out["ended_at"] = watch.elapsed, time.time()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    out["busy"] = busy_fraction(ticks_before, cpu_ticks())
    out["rss_before_kib"] = rss_before
    out["rss_peak_kib"] = cpu_after.ru_maxrss  # KiB on Linux: the process' peak RSS since it started
    out["cpu_total_s"] = cpu_after.ru_utime + cpu_after.ru_stime  # imports included
    out["results"] = [r.model_dump(mode="json", include={"function", "status", "failed_step", "message",
                                                         "build_cached", "timings"}) for r in results]
    Path(args.out).write_text(json.dumps(out))
    return 0


WHAT_IFS = ("what_if_build_poll", "what_if_deploy_poll", "what_if_local_gate", "what_if_no_subflow",
            "what_if_no_artifacts")


def pair(text: str) -> tuple[float, float]:
    first, second = (float(value) for value in text.split(","))
    return first, second


def apply_what_ifs(args: argparse.Namespace) -> None:
    """Experiments, not cf2run's code: patch the flow process before its flow runs (the tasks'
    source is untouched, so their cache keys are too)."""
    import tasks.build
    import tasks.deploy

    if args.what_if_build_poll:  # GetBuild backoff: first wait, doubling up to the maximum
        tasks.build.POLL_FIRST_S, tasks.build.POLL_MAX_S = pair(args.what_if_build_poll)
    if args.what_if_deploy_poll:  # operation polling of deploy and promote: initial, x1.5 up to maximum
        initial, maximum = pair(args.what_if_deploy_poll)
        tasks.deploy.POLLING = tasks.deploy.POLLING.with_delay(initial=initial, maximum=maximum,
                                                               multiplier=1.5)
    if args.what_if_local_gate:  # a process-wide semaphore of Q in front of the Prefect build slot
        import threading

        gate, slot = threading.BoundedSemaphore(args.what_if_local_gate), tasks.build.build_slot

        @contextlib.contextmanager
        def gated_slot() -> Iterator[None]:
            with gate, slot():
                yield

        tasks.build.build_slot = gated_slot
    if args.what_if_no_subflow:  # fanout local: each function's steps as tasks of its `function` task
        import cf2run.fleet
        from cf2run.results import MigrationResult
        from cf2run.spec import FunctionSpec, Target
        from flows.migrate_function import migrate_function

        def inline(functions: list[FunctionSpec], target: Target) -> list[MigrationResult]:
            results = []
            for spec in functions:
                result = migrate_function.fn(spec, target).result(raise_on_failure=False)
                assert isinstance(result, MigrationResult), result
                results.append(result)
            return results

        cf2run.fleet.migrate_each = inline  # type: ignore[assignment]
    if args.what_if_no_artifacts:  # no per-function summary and link artifacts
        import flows.migrate_function

        flows.migrate_function.create_markdown_artifact = lambda *a, **k: None  # type: ignore[assignment]
        flows.migrate_function.create_link_artifact = lambda *a, **k: None  # type: ignore[assignment]


@dataclass
class Run:
    """What a child process measured."""

    phase: str
    wall_s: float
    state: str
    cpu_s: float
    busy: float | None
    rss_before_kib: int
    rss_peak_kib: int
    results: list[dict[str, Any]] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    #: CPU seconds used by each part of the machine while the child process lived (imports included)
    cpu: dict[str, float] = field(default_factory=dict)
    process_wall_s: float = 0.0  # the child process' whole life

    @property
    def functions(self) -> int:
        return len(self.plans) if self.phase == "dry-run" else len(self.results)

    def failed(self) -> list[str]:
        if self.phase == "dry-run":
            return [p["function"] for p in self.plans if not p["ok"]]
        return [f"{r['function']} at {r['failed_step']}: {r['message']}" for r in self.results
                if r["status"] != "succeeded"]

    def step(self, name: str) -> list[float]:
        return [r["timings"][name] for r in self.results if name in r["timings"]]

    def outside_build(self) -> list[float]:
        return [sum(v for k, v in r["timings"].items() if k != "build") for r in self.results]


@dataclass
class CpuSnapshot:
    """CPU used so far by the machine, this process, its reaped children, and every process."""

    machine_busy_s: float
    own_s: float
    reaped_s: float
    table: dict[int, ProcessCpu]

    @classmethod
    def take(cls) -> CpuSnapshot:
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        tick = os.sysconf("SC_CLK_TCK")
        return cls(cpu_ticks()[0] / tick, me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime,
                   processes())

    def used_since(self, before: CpuSnapshot, flow_process_s: float,
                   groups: dict[str, int]) -> dict[str, float]:
        """CPU seconds since `before`, by part: the flow process (the child, as it reported), each
        process group in `groups`, this process (the local cloud; with the builders it ran and
        reaped), the revision processes (its other children), and the rest of the machine."""
        me = os.getpid()

        def delta(pids: set[int]) -> float:
            total = 0.0
            for pid in pids:
                now, then = self.table[pid], before.table.get(pid)
                total += now.own_s + now.reaped_s - ((then.own_s + then.reaped_s) if then else 0.0)
            return total

        used = {"flow process": flow_process_s}
        leaders = set(groups.values())
        for name, pgid in groups.items():
            used[name] = delta({p.pid for p in self.table.values() if p.pgid == pgid})
        used["local cloud (this process, its builders)"] = (
            self.own_s - before.own_s + max(0.0, self.reaped_s - before.reaped_s - flow_process_s))
        revisions = {p.pid for p in self.table.values() if p.ppid == me and p.pid not in leaders}
        revisions |= {p.pid for p in self.table.values() if p.pgid in revisions}
        used["revision processes"] = delta(revisions)
        busy = self.machine_busy_s - before.machine_busy_s
        used["rest of the machine"] = max(0.0, busy - sum(used.values()))
        return used


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, env: dict[str, str], api: Api) -> None:
        self.args, self.root, self.env, self.api = args, root, env, api

    def run(self, phase: str, manifest: Path, *, max_parallel: int = 1, first: int = 0) -> Run:
        out = self.root / f"{phase}-{time.monotonic_ns()}.json"
        log = self.root / "children.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", phase,
                   "--manifest", str(manifest), "--max-parallel", str(max_parallel),
                   "--first", str(first), "--out", str(out)]
        for name in WHAT_IFS:
            value = getattr(self.args, name)
            if value is True:
                command.append("--" + name.replace("_", "-"))
            elif value:
                command += ["--" + name.replace("_", "-"), str(value)]
        before = CpuSnapshot.take()
        watch = Stopwatch()
        with log.open("a") as sink:
            sink.write(f"\n=== {' '.join(command)}\n")
            sink.flush()
            done = subprocess.run(command, env=self.env, cwd=REPO, stdout=sink, stderr=sink)
        process_wall = watch.elapsed
        after = CpuSnapshot.take()
        if done.returncode != 0 or not out.exists():
            tail = "\n".join(log.read_text().splitlines()[-40:])
            raise RuntimeError(f"{phase} child failed ({done.returncode}):\n{tail}")
        data = json.loads(out.read_text())
        run = Run(phase=data["phase"], wall_s=data["wall_s"], state=data["state"], cpu_s=data["cpu_s"],
                  busy=data["busy"], rss_before_kib=data["rss_before_kib"],
                  rss_peak_kib=data["rss_peak_kib"], results=data["results"], plans=data.get("plans", []),
                  summary=data.get("summary", ""), started_at=data["started_at"], ended_at=data["ended_at"],
                  process_wall_s=process_wall)
        run.cpu = after.used_since(before, data["cpu_total_s"], self.api.groups)
        problems = run.failed()
        if problems:
            raise RuntimeError(f"{phase}: {len(problems)} function(s) failed: {problems[:5]}")
        return run


# -- the cloud's side ------------------------------------------------------------------------------


@dataclass
class BuildTimes:
    """One Cloud Build build, from the local Cloud Build's records (its own clock)."""

    function: str
    created: float
    started: float
    finished: float


def builds_of(cloud: Any, prefix: str) -> list[BuildTimes]:
    found = []
    for build in cloud.builds.list_builds(project_id=PROJECT):
        names = [tag[3:] for tag in build.tags if tag.startswith("fn-")]
        if names and names[0].startswith(prefix):
            found.append(BuildTimes(names[0], build.create_time.timestamp(), build.start_time.timestamp(),
                                    build.finish_time.timestamp()))
    return found


def count_builds(cloud: Any) -> int:
    return sum(1 for _ in cloud.builds.list_builds(project_id=PROJECT))


def count_revisions(cloud: Any) -> int:
    return sum(1 for _ in cloud.revisions.list_revisions(parent=f"{PARENT}/services/-"))


# -- the Prefect API: a temporary `prefect server start`, on SQLite or a temporary Postgres ----------

SERVER_START_S = 180.0
SLOT_WAIT_ENV = "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS"


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """`sig` to the process' group (it leads its own session), SIGKILL if it is still there after 30 s."""
    for signum, wait in ((sig, 30.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


@contextlib.contextmanager
def postgres(root: Path, groups: dict[str, int]) -> Iterator[str]:
    """A throw-away Postgres cluster on 127.0.0.1 (as the `postgres` user when run as root);
    yields the SQLAlchemy URL of its empty `prefect` database."""
    initdb, server = shutil.which("initdb"), shutil.which("postgres")
    if not (initdb and server):
        raise SystemExit("--prefect-db postgres needs initdb and postgres on PATH "
                         "(or use --prefect-db sqlite)")
    data, log = root / "postgres", root / "postgres.log"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        root.chmod(0o711)
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    port = free_port()
    process = _start([*as_user, server, "-D", str(data), "-p", str(port), "-k", str(data),
                      "-c", "listen_addresses=127.0.0.1"], log)
    groups["Postgres"] = process.pid
    try:
        def created() -> bool | None:
            if process.poll() is not None:
                raise RuntimeError(f"postgres exited: {log.read_text()[-2000:]}")
            done = subprocess.run([*as_user, "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                   "prefect"], capture_output=True)
            return True if done.returncode == 0 else None

        poll_until(created, 60, 0.5, "postgres accepting connections")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        _stop(process, signal.SIGINT)  # postgres' fast shutdown


@contextlib.contextmanager
def prefect_server(root: Path, database_url: str | None, groups: dict[str, int]) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 with this process' PREFECT_HOME (SQLite in it, unless
    `database_url`); yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    log = root / "prefect-server.log"
    process = _start([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                      "--port", str(port)], log, env)
    groups["Prefect server"] = process.pid
    try:
        def healthy() -> bool | None:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
            try:
                return True if httpx.get(f"{url}/health", timeout=2).status_code == 200 else None
            except httpx.HTTPError:
                return None

        poll_until(healthy, SERVER_START_S, 0.5, "the Prefect server's /health")
        yield url
    finally:
        _stop(process)


@dataclass
class Api:
    url: str
    groups: dict[str, int]  # process groups to account CPU to: name -> pgid


@contextlib.contextmanager
def prefect_api(root: Path, db: str) -> Iterator[Api]:
    with contextlib.ExitStack() as stack:
        api = Api("", {})
        database = stack.enter_context(postgres(root, api.groups)) if db == "postgres" else None
        api.url = stack.enter_context(prefect_server(root, database, api.groups))
        yield api


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Figures:
    n: int
    q: int
    b: float
    max_parallel: int
    run_writes: int
    fleet: Run | None = None
    each: Run | None = None
    each_n: int = 0
    rerun: Run | None = None
    rerun_half: Run | None = None
    dry: Run | None = None
    builds_fleet: list[BuildTimes] = field(default_factory=list)
    builds_each: int = 0
    rerun_counts: tuple[int, int, int, int] = (0, 0, 0, 0)  # builds before/after, revisions before/after
    poll: tuple[float, float] = (1.0, 15.0)
    machine: str = ""  # taken before the run started anything (its load average: the others' load)


def measure(args: argparse.Namespace, root: Path, api: Api, machine_line: str) -> Figures:
    from cf2run.cloud import Cloud
    from cf2run.localcloud.server import LocalCloud
    from cf2run.localcloud.settings import LocalCloudSettings
    from cf2run.quotas import BUILD_LIMIT, RUN_WRITES_LIMIT, QuotaLimits, ensure_limits
    from tasks.build import POLL_FIRST_S, POLL_MAX_S

    n, q, b = args.n, args.q, args.b
    max_parallel = args.max_parallel or min(n, MAX_PARALLEL)
    figures = Figures(n=n, q=q, b=b, max_parallel=max_parallel, run_writes=args.run_writes_per_minute,
                      each_n=args.baseline_n or n, poll=(POLL_FIRST_S, POLL_MAX_S), machine=machine_line)
    if args.what_if_build_poll:
        figures.poll = pair(args.what_if_build_poll)
    env = dict(os.environ)  # PREFECT_API_URL, PREFECT_HOME
    ensure_limits(QuotaLimits(builds=q, run_writes_per_minute=args.run_writes_per_minute),
                  replace=[BUILD_LIMIT, RUN_WRITES_LIMIT])
    settings = LocalCloudSettings(build_latency_s=0.0, max_concurrent_builds=q)
    with LocalCloud(state_dir=root / "localcloud", settings=settings) as local:
        cloud = Cloud.local(local.endpoints)
        bench = Bench(args, root, env, api)
        state = local.state_dir

        warm = bench.run("each", write_fleet(root / "warm", ["warm-0"], state))
        print(f"warm-up (dependency layer, runtime layers): {seconds(warm.wall_s)}", flush=True)
        settings.build_latency_s = b

        fleet_manifest = write_fleet(root / "fleet", [f"fa-{i:04d}" for i in range(n)], state)
        builds_before = count_builds(cloud)
        figures.fleet = bench.run("fleet", fleet_manifest, max_parallel=max_parallel)
        figures.builds_fleet = builds_of(cloud, "fa-")
        built = count_builds(cloud) - builds_before
        print(f"(a) fleet flow, N={n}: {seconds(figures.fleet.wall_s)} ({built} builds)", flush=True)
        if built != n:
            raise RuntimeError(f"(a) submitted {built} builds for {n} functions")

        counts = [count_builds(cloud), count_revisions(cloud)]
        figures.rerun = bench.run("fleet", fleet_manifest, max_parallel=max_parallel)
        counts += [count_builds(cloud), count_revisions(cloud)]
        figures.rerun_counts = (counts[0], counts[2], counts[1], counts[3])
        print(f"(c) rerun: {seconds(figures.rerun.wall_s)}; builds {counts[0]} -> {counts[2]}, "
              f"revisions {counts[1]} -> {counts[3]}", flush=True)
        if n >= 4:
            figures.rerun_half = bench.run("fleet", fleet_manifest, max_parallel=max_parallel,
                                           first=n // 2)
            print(f"    rerun of the first {n // 2}: {seconds(figures.rerun_half.wall_s)}", flush=True)

        each_manifest = write_fleet(root / "each", [f"fb-{i:04d}" for i in range(figures.each_n)], state)
        builds_before = count_builds(cloud)
        figures.each = bench.run("each", each_manifest)
        figures.builds_each = count_builds(cloud) - builds_before
        print(f"(b) one after another, {figures.each_n} functions: {seconds(figures.each.wall_s)} "
              f"({figures.builds_each} builds)", flush=True)
        if figures.builds_each != figures.each_n or any(r["build_cached"] for r in figures.each.results):
            raise RuntimeError("(b) did not build every function")

        if args.cached_n:
            names = [f"fd-{i:04d}" for i in range(args.cached_n)]
            dry_manifest = write_fleet(root / "dry", names, state)
            figures.dry = bench.run("dry-run", dry_manifest,
                                    max_parallel=min(args.cached_n, MAX_PARALLEL))
            print(f"(d) dry run of {args.cached_n}: {seconds(figures.dry.wall_s)}, peak RSS "
                  f"{mib(figures.dry.rss_peak_kib)}", flush=True)
    return figures


# -- the report ------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def report(f: Figures, args: argparse.Namespace) -> str:
    assert f.fleet and f.each and f.rerun
    n, q, b = f.n, f.q, f.b
    waves = math.ceil(n / q)
    deploy_d = median(f.each.outside_build())
    ideal = waves * b + deploy_d
    a = f.fleet.wall_s
    each_per_fn = f.each.wall_s / f.each_n
    each_total = each_per_fn * n  # = f.each.wall_s when --baseline-n is N
    extrapolated = f.each_n != n
    rerun_per_fn = f.rerun.wall_s / n
    b0, b1, r0, r1 = f.rerun_counts
    rows = [
        ["(a) fleet flow: migrate_fleet, fanout local", seconds(a),
         f"max_parallel {f.max_parallel}; {len(f.builds_fleet)} builds; {f.fleet.state}", ""],
        ["ideal: ceil(N/Q)·B + D", seconds(ideal),
         f"{waves} x {b:g} s + D = {deploy_d:.2f} s (median time a function of (b) spends outside its "
         "build: package, verify, deploy, smoke, promote)", ""],
        ["(a) / ideal", f"{a / ideal:.2f}x", "", f"≤ {GOAL_IDEAL:g}x: {verdict(a / ideal <= GOAL_IDEAL)}"],
        ["(b) one after another: migrate_each, seed's way", seconds(each_total),
         (f"{f.each_n} functions measured, {each_per_fn:.2f} s each, x {n} (extrapolated)" if extrapolated
          else f"{each_per_fn:.2f} s per function") + f"; {f.builds_each} builds, none cached", ""],
        ["speedup (b) / (a)", f"{each_total / a:.1f}x", "(b) extrapolated" if extrapolated else "",
         f"≥ {GOAL_SPEEDUP:g}x: {verdict(each_total / a >= GOAL_SPEEDUP)}"],
        ["(c) rerun of the unchanged fleet", seconds(f.rerun.wall_s),
         f"builds (ListBuilds) {b0} → {b1}; revisions (ListRevisions) {r0} → {r1}",
         f"no build, no deploy: {verdict(b0 == b1 and r0 == r1)}"],
        ["(c) per function", f"{rerun_per_fn:.3f} s", "",
         f"< {GOAL_RERUN_S:g} s: {verdict(rerun_per_fn < GOAL_RERUN_S)}"],
    ]
    rows += memory_rows(f)
    table = markdown_table(["measure", "value", "detail", "goal (issue 4)"], rows)
    settings = (f"N={n}, Q={q}, B={b:g} s; Prefect server (`prefect server start`) on {args.prefect_db}; "
                f"`cf2run-cloud-build` limit = Q, local Cloud Build max_concurrent_builds = Q; "
                f"`cf2run-cloud-run-writes` = {f.run_writes}/minute")
    what_ifs = []
    if args.what_if_build_poll:
        what_ifs.append(f"tasks/build.py's GetBuild backoff {f.poll[0]:g} s doubling up to {f.poll[1]:g} s "
                        "(cf2run: 1 s up to 15 s)")
    if args.what_if_deploy_poll:
        initial, maximum = pair(args.what_if_deploy_poll)
        what_ifs.append(f"tasks/deploy.py's operation polling {initial:g} s x1.5 up to {maximum:g} s "
                        "(cf2run: 0.5 s up to 10 s)")
    if args.what_if_local_gate:
        what_ifs.append(f"a process-wide semaphore of {args.what_if_local_gate} in front of "
                        "`build_slot()` (cf2run: none)")
    if args.what_if_no_subflow:
        what_ifs.append("each function's steps run as tasks inside its `function` task, no "
                        "migrate-function subflow (cf2run: a subflow per function)")
    if args.what_if_no_artifacts:
        what_ifs.append("no per-function summary and link artifacts (cf2run: 3 per function)")
    if os.environ.get(SLOT_WAIT_ENV):
        what_ifs.append(f"Prefect server `{SLOT_WAIT_ENV}={os.environ[SLOT_WAIT_ENV]}` (default 30)")
    if what_ifs:
        settings += ("; **what-if** (patched in the flow processes, not cf2run's code): "
                     + "; ".join(what_ifs))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"Machine: {f.machine} (before the run; at the end: {load}).  \nCommand: `{command_line()}`.  \n"
            f"Settings: {settings}.\n\n{table}\n\n"
            f"Where the time goes in (a):\n\n{profile(f)}\n")


def memory_rows(f: Figures) -> list[list[str]]:
    assert f.fleet and f.rerun
    rows = []

    def row(what: str, run: Run, detail: str) -> list[str]:
        grown = run.rss_peak_kib - run.rss_before_kib
        return [what, mib(run.rss_peak_kib),
                f"{detail}; after imports {mib(run.rss_before_kib)}, +{mib(grown)} during the flow", ""]

    rows.append(row(f"(d) peak RSS, (a) migration of {f.n}", f.fleet, f"max_parallel {f.max_parallel}"))
    rows.append(row(f"(d) peak RSS, (c) cached rerun of {f.n}", f.rerun, f"max_parallel {f.max_parallel}"))
    half = f.rerun_half
    if half is not None:
        rows.append(row(f"(d) peak RSS, cached rerun of {half.functions}", half,
                        f"max_parallel {f.max_parallel}"))
        slope = (f.rerun.rss_peak_kib - half.rss_peak_kib) / (f.n - half.functions)
        rows.append(["(d) cached rerun of 1000, extrapolated",
                     mib(f.rerun.rss_peak_kib + slope * (1000 - f.n)),
                     f"linear in N from the two cached reruns ({slope:.0f} KiB per function); "
                     "not measured", "reported"])
    if f.dry is not None:
        rows.append(row(f"(d) peak RSS, dry run of {f.dry.functions}", f.dry,
                        f"max_parallel {min(f.dry.functions, MAX_PARALLEL)}; {f.dry.wall_s:.1f} s, "
                        f"{f.dry.wall_s / f.dry.functions:.3f} s per function"))
    return rows


def profile(f: Figures) -> str:
    """Steps of (a) against (b), and how the build quota was used in (a)."""
    assert f.fleet and f.each
    header = ["", "(a) fleet: median", "(a) max", "(b) one at a time: median"]
    rows = [[f"step `{step}` (s)", f"{median(f.fleet.step(step)):.2f}",
             f"{max(f.fleet.step(step), default=0):.2f}", f"{median(f.each.step(step)):.2f}"]
            for step in STEPS]
    builds = sorted(f.builds_fleet, key=lambda build: build.created)
    if builds:
        first, last = builds[0].created, max(build.finished for build in builds)
        span = last - first
        working = [build.finished - build.started for build in builds]
        queued = [build.started - build.created for build in builds]
        seen = [backoff_sees(build.finished - build.created, *f.poll) for build in builds]
        overshoot = [s - (build.finished - build.created) for s, build in zip(seen, builds, strict=True)]
        by_fn = {r["function"]: r["timings"].get("build", 0.0) for r in f.fleet.results}
        waited = [by_fn[build.function] - s for s, build in zip(seen, builds, strict=True)]
        rows += [
            ["Cloud Build: WORKING per build (B + the real warm build)", f"{median(working):.2f}",
             f"{max(working):.2f}", ""],
            ["Cloud Build: QUEUED per build", f"{median(queued):.2f}", f"{max(queued):.2f}", ""],
            [f"build seen by tasks/build.py's backoff ({f.poll[0]:g} s x2 … {f.poll[1]:g} s) after "
             "finishing (derived)", f"{median(overshoot):.2f}", f"{max(overshoot):.2f}", ""],
            ["build step minus the build as polled = waiting for a `cf2run-cloud-build` slot, queueing "
             "included (+ HEAD, CreateBuild)", f"{median(waited):.2f}", f"{max(waited):.2f}", ""],
        ]
        busy = sum(working) / (f.q * span) if span > 0 else 0.0
        held = sum(seen) / (f.q * span) if span > 0 else 0.0
        # Every function wants its build from the flow's start (max_parallel >= N), so until the
        # last CreateBuild someone is always waiting: a slot not held then is a slot wasted.
        last_create = builds[-1].created
        window = last_create - first
        held_in_window = sum(max(0.0, min(build.created + s, last_create) - build.created)
                             for s, build in zip(seen, builds, strict=True))
        idle = f.q * window - held_in_window
        quota = (f"First CreateBuild → last build finished: {span:.1f} s of the {f.fleet.wall_s:.1f} s "
                 f"(ideal for the builds alone: {math.ceil(f.n / f.q) * f.b:g} s). Share of the Q={f.q} "
                 f"build slots over that span: {100 * busy:.0f}% building, {100 * held:.0f}% held by a "
                 f"build step (building, or finished and not yet polled). Between the first and the last "
                 f"CreateBuild ({window:.1f} s, functions waiting for a slot all along) {idle:.0f} "
                 f"slot-seconds of {f.q * window:.0f} were free: ≈ {idle / f.q:.1f} s of wall time lost "
                 "to steps not taking a free slot at once.")
    else:
        quota = ""
    return markdown_table(header, rows) + "\n\n" + quota + "\n\n" + timeline(f) + "\n\n" + cpu_table(f)


def timeline(f: Figures) -> str:
    assert f.fleet
    if not f.builds_fleet:
        return ""
    first = min(build.created for build in f.builds_fleet)
    last = max(build.finished for build in f.builds_fleet)
    return (f"Timeline of (a) (flow process and local Cloud Build clocks, same machine): flow start → first "
            f"CreateBuild {first - f.fleet.started_at:.1f} s; first CreateBuild → last build finished "
            f"{last - first:.1f} s; last build finished → flow end {f.fleet.ended_at - last:.1f} s.")


def cpu_table(f: Figures) -> str:
    """Where the machine's CPU went while each measured flow process lived."""
    runs = [(name, run) for name, run in (("(a) fleet", f.fleet), ("(c) rerun", f.rerun),
                                          ("(b) one at a time", f.each), ("(d) dry run", f.dry))
            if run is not None]
    parts = list(runs[0][1].cpu)
    header = ["CPU seconds used while the flow process lived", *[name for name, _ in runs]]
    rows = [[part, *[f"{run.cpu.get(part, 0.0):.0f}" for _, run in runs]] for part in parts]
    cpus = os.cpu_count() or 1
    rows.append(["**total** / available (wall x CPUs)", *[
        f"{sum(run.cpu.values()):.0f} / {run.process_wall_s * cpus:.0f}" for _, run in runs]])
    prefect = ("flow process", "Prefect server", "Postgres")
    rows.append(["flow process + Prefect server + Postgres, per function", *[
        f"{sum(run.cpu.get(part, 0.0) for part in prefect) / run.functions:.2f}" for _, run in runs]])
    return markdown_table(header, rows)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100, help="functions in the fleet (default 100)")
    parser.add_argument("--q", type=int, default=10, help="concurrent-build quota (default 10)")
    parser.add_argument("--b", type=float, default=3.0, help="simulated build latency, seconds (default 3)")
    parser.add_argument("--max-parallel", type=int, default=0,
                        help=f"the fleet flow's max_parallel (default min(N, {MAX_PARALLEL}))")
    parser.add_argument("--baseline-n", type=int, default=0,
                        help="functions migrated one after another in (b) (default N; fewer = extrapolated)")
    parser.add_argument("--cached-n", type=int, default=1000,
                        help="functions in the (d) dry run whose peak RSS is measured (0: skip)")
    parser.add_argument("--run-writes-per-minute", type=int, default=100_000,
                        help="the cf2run-cloud-run-writes rate limit (default 100000: not binding)")
    parser.add_argument("--prefect-db", choices=["postgres", "sqlite"], default="postgres",
                        help="the temporary Prefect server's database (default postgres: a throw-away "
                             "cluster; sqlite: prefect server start's default)")
    parser.add_argument("--what-if-build-poll", metavar="FIRST,MAX",
                        help="experiment: patch tasks/build.py's GetBuild backoff in the flow processes")
    parser.add_argument("--what-if-deploy-poll", metavar="INITIAL,MAX",
                        help="experiment: patch tasks/deploy.py's operation polling in the flow processes")
    parser.add_argument("--what-if-local-gate", type=int, metavar="K",
                        help="experiment: a process-wide semaphore of K in front of the build slot")
    parser.add_argument("--what-if-no-subflow", action="store_true",
                        help="experiment: run each function's steps without a migrate-function subflow")
    parser.add_argument("--what-if-no-artifacts", action="store_true",
                        help="experiment: no per-function markdown and link artifacts")
    parser.add_argument("--what-if-slot-wait", type=float, metavar="S",
                        help=f"experiment: the Prefect server's {SLOT_WAIT_ENV} (default 30)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (children's logs)")
    parser.add_argument("--child", choices=["fleet", "each", "dry-run"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if min(args.n, args.q) < 1 or args.b < 0 or args.baseline_n < 0 or args.cached_n < 0:
        parser.error("--n and --q must be at least 1, --b, --baseline-n and --cached-n not negative")
    root = Path(tempfile.mkdtemp(prefix="cf2run-bench-fleet-"))
    # Before anything imports prefect: every cache (results, the database) starts empty.
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ["TMPDIR"] = tempfile.tempdir = str(root)
    if args.what_if_slot_wait is not None:
        os.environ[SLOT_WAIT_ENV] = str(args.what_if_slot_wait)
    if args.keep:
        print(f"keeping {root} (children's output: children.log)", flush=True)
    else:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    machine_line = machine()
    print(f"starting a temporary Prefect server ({args.prefect_db}) and the local cloud in {root}",
          flush=True)
    with prefect_api(root, args.prefect_db) as api:
        os.environ["PREFECT_API_URL"] = api.url  # before anything imports prefect
        figures = measure(args, root, api, machine_line)
    text = report(figures, args)
    print("\n" + text)
    if not args.no_readme:
        what_if = any(getattr(args, name) for name in WHAT_IFS) or args.what_if_slot_wait is not None
        write_section(SECTION + ("-sqlite" if args.prefect_db == "sqlite" else "")
                      + ("-what-if" if what_if else ""), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
