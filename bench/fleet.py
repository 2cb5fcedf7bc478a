"""Fleet speed: cf2run's fleet flow against one function after another and the quota-bound ideal.

    .venv/bin/python bench/fleet.py                          # N=100, Q=10, B=3 s (~20 min, 2 CPUs)
    .venv/bin/python bench/fleet.py --n 20 --q 5 --b 2 --cached-n 200 --no-readme

N synthetic Python HTTP functions (a distinct two-line source each, so each needs its own
build; no requirements, so all share one dependency layer, made once by an untimed warm-up)
against an in-process `LocalCloud` whose builds stay WORKING at least B seconds, their real
work included, as a remote build of that length (`build_latency_s`), and of which at most Q run
at once (`max_concurrent_builds`, and the Prefect limit `cf2run-cloud-build` set to Q with
`cf2run.fleet.quotas.ensure_limits`). Prefect API: a temporary `prefect server start` on a throw-away
Postgres cluster (default; what the README recommends for fleets) or on SQLite (`--prefect-db
sqlite`), PREFECT_HOME in a temporary directory, so every cache starts empty. Each measured
flow runs in a fresh Python process (`--child`, as a worker's flow-run process would); its wall
time is taken inside that process around the flow call (imports excluded). In one run:

(a) `migrate_fleet(manifest, max_parallel=min(N, 500), fanout="local")`, wall time, `--fleet-runs`
    times (default 3) on N new functions each (the services of all but the last deleted after
    their run, so each starts on the same local cloud), the median run reported; ratio to the ideal
    ceil(N/Q)*B + D, with D the median time one function spends outside its
    build (package, verify, deploy, smoke, promote), measured in (b) -- see README;
(c) the same fleet again, unchanged: ListBuilds and the revisions of every service
    (ListRevisions on services/-) before and after must not move; seconds per function;
    then a rerun of its first half, for the slope of memory with N;
(b) the seed's way: `cf2run.report.migrate_each` over N *other* functions (new names, new
    sources: every one is built and deployed), one after another; speedup (b)/(a);
(d) the flow process' peak RSS (VmHWM = ru_maxrss, whole process, from its start) for the
    cached rerun (c) at N, and for a dry run of --cached-n functions (1000 real revisions
    would not fit in memory; see README for what exactly that measures);
(e) Prefect alone: (a)'s shape (a thread per function with the flow run's context, six step
    task runs in each, same max_parallel) with steps that do nothing, against the same server:
    what the orchestration costs before any step works (the server's backlog included), and
    its share of the CPU the goal leaves.

This module measures; bench/fleet_report.py holds the figures and writes the report.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from _common import (
    REPO,
    ProcessCpu,
    Stopwatch,
    cpu_ticks,
    free_port,
    machine,
    memory_kib,
    mib,
    poll_until,
    processes,
    seconds,
    write_section,
)
from fleet_report import MAX_PARALLEL, OTHER_USERS, PREFECT_PARTS, STEPS, BuildTimes, Figures, Run, report

SECTION = "fleet"
PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"
SERVER_START_S = 180.0
#: The Prefect server and Postgres count as idle below this many CPU seconds a second (an
#: idle `prefect server start` uses ~0.04 for its loop services).
IDLE_CPU_S_PER_S = 0.15
BACKLOG_MAX_S = 180.0


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
    """Run one flow (imported first, then timed) and write `Run`'s own fields to --out as JSON."""
    from cf2run.fleet.fanout import load
    from cf2run.fleet.report import FleetReport
    from cf2run.report import migrate_each
    from flows.migrate_fleet import migrate_fleet

    manifest = Path(args.manifest)
    fleet = load(manifest)
    only = tuple(spec.name for spec in fleet.functions)[:args.first] if args.first else ()
    rss_before = memory_kib("VmRSS") or 0
    imports = resource.getrusage(resource.RUSAGE_SELF)
    started_at, watch = time.time(), Stopwatch()
    plans: list[dict[str, Any]] = []
    if args.child == "each":
        results = migrate_each(fleet.functions, fleet.target)
        state = "Completed" if all(r.status == "succeeded" for r in results) else "Failed"
    elif args.child == "orchestration":
        names = [spec.name for spec in fleet.functions]
        orchestration_only(names, args.max_parallel)
        state, results, plans = "Completed", [], [{"function": name, "ok": True} for name in names]
    else:
        flow_state = migrate_fleet(manifest, max_parallel=args.max_parallel, dry_run=args.child == "dry-run",
                                   fanout="local", only=only, recheck=args.child == "recheck",
                                   return_state=True)
        fleet_report = flow_state.result(raise_on_failure=False)
        assert isinstance(fleet_report, FleetReport), fleet_report
        state, results = flow_state.name or flow_state.type.value, fleet_report.results
        plans = [{"function": p.function, "ok": p.ok} for p in fleet_report.plans]
    wall_s, ended_at = watch.elapsed, time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    run = Run(phase=args.child, state=state, wall_s=wall_s, started_at=started_at, ended_at=ended_at,
              rss_before_kib=rss_before, rss_peak_kib=usage.ru_maxrss,  # KiB on Linux
              cpu_total_s=usage.ru_utime + usage.ru_stime, cpu_imports_s=imports.ru_utime + imports.ru_stime,
              plans=plans,
              results=[r.model_dump(mode="json", include={"function", "status", "failed_step", "message",
                                                          "build_cached", "timings"}) for r in results])
    Path(args.out).write_text(json.dumps(run.__dict__))
    return 0


def orchestration_only(names: list[str], max_parallel: int) -> None:
    """(e): (a)'s shape in Prefect with nothing inside: a flow in which each function (at most
    `max_parallel` at once, in threads with the flow run's context, as migrate_fleet's local
    fanout) runs six step task runs that return at once, uncached. What orchestrating a fleet
    costs before any step does any work."""
    import contextvars

    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    @task(name="step", task_run_name="{step}[{name}]", cache_policy=NO_CACHE)
    def step(step: str, name: str) -> str:
        return name

    def function(name: str) -> str:
        for each in STEPS:
            step(each, name)
        return name

    @flow(name="orchestration-only")
    def fleet_shape(names: list[str]) -> None:
        with ThreadPoolExecutor(max_workers=min(max_parallel, len(names))) as pool:
            for future in [pool.submit(contextvars.copy_context().run, function, name) for name in names]:
                future.result()

    fleet_shape(names)


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
        return cls(cpu_ticks()[0] / os.sysconf("SC_CLK_TCK"), me.ru_utime + me.ru_stime,
                   children.ru_utime + children.ru_stime, processes())

    def used_since(self, before: CpuSnapshot, flow_process_s: float,
                   groups: dict[str, int]) -> dict[str, float]:
        """CPU seconds since `before`, by part: the flow process (the child, as it reported), each
        process group in `groups`, this process (the local cloud, with the builders it ran and
        reaped and the storage emulator it runs), the revision processes (its children in their
        own sessions), and the rest of the machine's busy time (other users' processes)."""
        me, my_group = os.getpid(), os.getpgid(0)

        def delta(pids: set[int]) -> float:
            total = 0.0
            for pid in pids:
                now, then = self.table[pid], before.table.get(pid)
                total += now.own_s + now.reaped_s - ((then.own_s + then.reaped_s) if then else 0.0)
            return total

        used = {"flow process": flow_process_s}
        for name, pgid in groups.items():
            used[name] = delta({p.pid for p in self.table.values() if p.pgid == pgid})
        mine = {p.pid for p in self.table.values() if p.ppid == me and p.pid not in groups.values()}
        helpers = {pid for pid in mine if self.table[pid].pgid == my_group}
        used["local cloud (this process, its builders)"] = (
            self.own_s - before.own_s + max(0.0, self.reaped_s - before.reaped_s - flow_process_s)
            + delta(helpers))
        revisions = mine - helpers  # revision processes, zygotes; then all they started or forked
        while grown := {p.pid for p in self.table.values()
                        if (p.ppid in revisions or p.pgid in revisions) and p.pid not in revisions}:
            revisions |= grown
        used["revision processes"] = delta(revisions)
        busy = self.machine_busy_s - before.machine_busy_s
        used[OTHER_USERS] = max(0.0, busy - sum(used.values()))
        return used


@dataclass
class Children:
    """Runs flow processes (`--child`), logging their output to children.log under `root`."""

    root: Path
    groups: dict[str, int]  # process groups to account CPU to: name -> pgid

    def run(self, phase: str, manifest: Path, *, max_parallel: int = 1, first: int = 0) -> Run:
        out, log = self.root / f"{phase}-{time.monotonic_ns()}.json", self.root / "children.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", phase,
                   "--manifest", str(manifest), "--max-parallel", str(max_parallel),
                   "--first", str(first), "--out", str(out)]
        before, watch = CpuSnapshot.take(), Stopwatch()
        with log.open("a") as sink:
            sink.write(f"\n=== {' '.join(command)}\n")
            sink.flush()
            done = subprocess.run(command, cwd=REPO, stdout=sink, stderr=sink)
        process_wall_s, after = watch.elapsed, CpuSnapshot.take()
        if done.returncode != 0 or not out.exists():
            tail = "\n".join(log.read_text().splitlines()[-40:])
            raise RuntimeError(f"{phase} child failed ({done.returncode}):\n{tail}")
        run = Run(**json.loads(out.read_text()))
        run.process_wall_s = process_wall_s
        run.cpu = after.used_since(before, run.cpu_total_s, self.groups)
        run.backlog_cpu_s, run.backlog_wall_s = self.backlog()
        for problem in run.failed():  # reported, not fatal: a failure under load is a finding too
            print(f"  {phase}: FAILED {problem}", flush=True)
        return run

    def backlog(self) -> tuple[float, float]:
        """The CPU seconds the Prefect server and its database go on using after a flow process
        ended (recording its task runs from the events it sent), until they are idle again, and
        how long that took. The next measurement starts on an idle server."""
        api = {pgid for name, pgid in self.groups.items() if name in PREFECT_PARTS}

        def used() -> float:
            return sum(p.own_s + p.reaped_s for p in processes().values() if p.pgid in api)

        start, watch = used(), Stopwatch()
        last = start
        while watch.elapsed < BACKLOG_MAX_S:
            time.sleep(1.0)
            now = used()
            if now - last < IDLE_CPU_S_PER_S:
                return now - start, watch.elapsed
            last = now
        return last - start, watch.elapsed


# -- the cloud's side ------------------------------------------------------------------------------


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


def delete_services(cloud: Any, prefix: str) -> int:
    """Delete the local Cloud Run services of functions named `prefix`-*, so their revision
    processes stop: the next measured run starts on the same local cloud as the one before."""
    names = [s.name for s in cloud.services.list_services(parent=PARENT)
             if s.name.rsplit("/", 1)[-1].startswith(prefix + "-")]
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda name: cloud.services.delete_service(name=name).result(timeout=120), names))
    return len(names)


def counts(cloud: Any) -> tuple[int, int]:
    """(builds, revisions of every service) in the local cloud."""
    revisions = sum(1 for _ in cloud.revisions.list_revisions(parent=f"{PARENT}/services/-"))
    return count_builds(cloud), revisions


# -- the Prefect API: a temporary `prefect server start`, on SQLite or a temporary Postgres ----------


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
def prefect_api(root: Path, db: str, groups: dict[str, int]) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 with this process' PREFECT_HOME, on SQLite in it or on
    a throw-away Postgres (`db`); yields its API URL. Their process groups go into `groups`."""
    with contextlib.ExitStack() as stack:
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        if db == "postgres":
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = stack.enter_context(postgres(root, groups))
        log = root / "prefect-server.log"
        process = _start([str(Path(sys.executable).parent / "prefect"), "server", "start",
                          "--host", "127.0.0.1", "--port", str(port)], log, env)
        stack.callback(_stop, process)
        groups["Prefect server"] = process.pid

        def healthy() -> bool | None:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
            try:
                return True if httpx.get(f"{url}/health", timeout=2).status_code == 200 else None
            except httpx.HTTPError:
                return None

        poll_until(healthy, SERVER_START_S, 0.5, "the Prefect server's /health")
        yield url


# -- the run ---------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, root: Path, groups: dict[str, int], machine_line: str) -> Figures:
    from cf2run.fleet.quotas import BUILD_LIMIT, RUN_WRITES_LIMIT, QuotaLimits, ensure_limits
    from cf2run.gcp.cloud import LOCAL_POLLING, Cloud
    from cf2run.localcloud.server import LocalCloud
    from cf2run.localcloud.settings import LocalCloudSettings

    n = args.n
    max_parallel = args.max_parallel or min(n, MAX_PARALLEL)
    ensure_limits(QuotaLimits(builds=args.q, run_writes_per_minute=args.run_writes_per_minute),
                  replace=[BUILD_LIMIT, RUN_WRITES_LIMIT])
    settings = LocalCloudSettings(build_latency_s=0.0, max_concurrent_builds=args.q)
    children = Children(root, groups)
    with LocalCloud(state_dir=root / "localcloud", settings=settings) as local:
        cloud = Cloud.local(local.endpoints)

        def manifest(prefix: str, count: int) -> Path:
            names = [f"{prefix}-{i:04d}" for i in range(count)]
            return write_fleet(root / prefix, names, local.state_dir)

        warm = children.run("each", manifest("warm", 1))
        print(f"warm-up (dependency layer, runtime layers): {seconds(warm.wall_s)}", flush=True)
        settings.build_latency_s = args.b

        runs: list[tuple[Run, list[BuildTimes]]] = []
        for rep in range(args.fleet_runs):  # each on N new functions, so every one is built
            last = rep == args.fleet_runs - 1
            prefix = "fa" if last else f"fa{rep + 2}"  # the last run's fleet stays for (c)
            fleet_manifest = manifest(prefix, n)
            builds_before = count_builds(cloud)
            run = children.run("fleet", fleet_manifest, max_parallel=max_parallel)
            built = count_builds(cloud) - builds_before
            print(f"(a) fleet flow, N={n}, run {rep + 1}: {seconds(run.wall_s)} ({built} builds)", flush=True)
            if built != n:
                print(f"  (a) submitted {built} builds for {n} functions (retries, or failures)", flush=True)
            runs.append((run, builds_of(cloud, prefix + "-")))
            if not last:
                delete_services(cloud, prefix)
        fleet, builds_fleet = sorted(runs, key=lambda run: run[0].wall_s)[len(runs) // 2]

        rerun_before = counts(cloud)
        rerun = children.run("fleet", fleet_manifest, max_parallel=max_parallel)
        rerun_after = counts(cloud)
        print(f"(c) rerun: {seconds(rerun.wall_s)}; (builds, revisions) {rerun_before} -> {rerun_after}",
              flush=True)
        rerun_half = None
        if n >= 4:
            rerun_half = children.run("fleet", fleet_manifest, max_parallel=max_parallel, first=n // 2)
            print(f"    rerun of the first {n // 2}: {seconds(rerun_half.wall_s)}", flush=True)

        builds_before = count_builds(cloud)
        each = children.run("each", manifest("fb", args.baseline_n or n))
        builds_each = count_builds(cloud) - builds_before
        print(f"(b) one after another, {each.functions} functions: {seconds(each.wall_s)} "
              f"({builds_each} builds)", flush=True)
        if any(r["build_cached"] for r in each.results):
            raise RuntimeError("(b) did not build every function")

        orchestration = children.run("orchestration", fleet_manifest, max_parallel=max_parallel)
        print(f"(e) Prefect alone, (a)'s shape with empty steps: {seconds(orchestration.wall_s)}", flush=True)

        dry = None
        if args.cached_n:
            dry = children.run("dry-run", manifest("fd", args.cached_n),
                               max_parallel=min(args.cached_n, MAX_PARALLEL))
            print(f"(d) dry run of {args.cached_n}: {seconds(dry.wall_s)}, peak RSS "
                  f"{mib(dry.rss_peak_kib)}", flush=True)
        return Figures(n=n, q=args.q, b=args.b, max_parallel=max_parallel,
                       run_writes=args.run_writes_per_minute, prefect_db=args.prefect_db,
                       machine=machine_line, poll=LOCAL_POLLING.build, fleet=fleet,
                       builds_fleet=builds_fleet, fleet_walls=[run.wall_s for run, _ in runs],
                       rerun=rerun, rerun_before=rerun_before,
                       rerun_after=rerun_after, rerun_half=rerun_half, each=each, builds_each=builds_each,
                       dry=dry, orchestration=orchestration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100, help="functions in the fleet (default 100)")
    parser.add_argument("--q", type=int, default=10, help="concurrent-build quota (default 10)")
    parser.add_argument("--b", type=float, default=3.0, help="simulated build latency, seconds (default 3)")
    parser.add_argument("--max-parallel", type=int, default=0,
                        help=f"the fleet flow's max_parallel (default min(N, {MAX_PARALLEL}))")
    parser.add_argument("--fleet-runs", type=int, default=3,
                        help="runs of (a), each on N new functions; the median one is reported (default 3)")
    parser.add_argument("--baseline-n", type=int, default=0,
                        help="functions migrated one after another in (b) (default N; fewer = extrapolated)")
    parser.add_argument("--cached-n", type=int, default=1000,
                        help="functions in the (d) dry run whose peak RSS is measured (0: skip)")
    parser.add_argument("--run-writes-per-minute", type=int, default=100_000,
                        help="the cf2run-cloud-run-writes rate limit (default 100000: not binding)")
    parser.add_argument("--prefect-db", choices=["postgres", "sqlite"], default="postgres",
                        help="the temporary Prefect server's database (default postgres: a throw-away "
                             "cluster; sqlite: prefect server start's default)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (children's logs)")
    parser.add_argument("--child", choices=["fleet", "recheck", "each", "dry-run", "orchestration"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if min(args.n, args.q, args.fleet_runs) < 1 or args.b < 0 or args.baseline_n < 0 or args.cached_n < 0:
        parser.error("--n, --q and --fleet-runs must be at least 1, --b, --baseline-n and --cached-n "
                     "not negative")
    root = Path(tempfile.mkdtemp(prefix="cf2run-bench-fleet-"))
    # Before anything imports prefect: every cache (results, the database) starts empty.
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ["TMPDIR"] = tempfile.tempdir = str(root)
    if args.keep:
        print(f"keeping {root} (children's output: children.log)", flush=True)
    else:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    machine_line = machine()
    print(f"starting a temporary Prefect server ({args.prefect_db}) and the local cloud in {root}",
          flush=True)
    groups: dict[str, int] = {}
    with prefect_api(root, args.prefect_db, groups) as url:
        os.environ["PREFECT_API_URL"] = url  # before anything imports prefect; the children inherit it
        figures = measure(args, root, groups, machine_line)
    text = report(figures)
    print("\n" + text)
    if not args.no_readme:
        write_section(SECTION + ("-sqlite" if args.prefect_db == "sqlite" else ""), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
