"""A 1000-function fleet on one machine (issue 17), measured, not extrapolated.

    .venv/bin/python bench/fleet_1000.py                          # N=1000, Q=20, B=10 s (~20 min, 2 CPUs)
    .venv/bin/python bench/fleet_1000.py --n 40 --q 4 --b 2 --idle-s 5 --no-readme

bench/fleet.py's pieces (its synthetic functions, flow processes in their own Python
(`Children`), a temporary `prefect server start` on a throw-away Postgres, the local cloud's
ListBuilds/ListRevisions counts) at N=1000, with Q and B chosen so the run takes about ten
minutes on 2 CPUs. In one run:

(a) `migrate_fleet(manifest, max_parallel=min(N, 500), fanout="local")` of N new functions, wall
    time against the quota-bound ideal ceil(N/Q)*B + D, with D the median time a function spends
    outside its build, from `--d-n` functions migrated one after another first (fleet.py's (b));
(c) the same fleet again, unchanged: ListBuilds and ListRevisions (services/-) must not move;
    seconds per function;
(d) the flow process' peak RSS (ru_maxrss) in (a) and (c); then, once every revision has scaled
    to zero (the local cloud's `scale_to_zero_after_s` = --idle-s: Cloud Run's 15 minutes would
    outlast the run), the machine's memory in use (MemTotal - MemAvailable, /proc/meminfo: other
    users' processes included) beside what it was before the run, and the proportional set size
    (PSS) of this run's own processes (the local cloud with its zygotes and revisions, the
    Prefect server, Postgres).
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import ProcessCpu, machine, markdown_table, mib, poll_until, processes, seconds, write_section
from fleet import Children, count_builds, counts, prefect_api, write_fleet
from fleet_report import MAX_PARALLEL, OTHER_USERS, Run, failures, median, own_cpu, verdict

SECTION = "fleet-1000"
#: Issue 17's goals: (a)/ideal, a cached rerun per function, the flow process' peak RSS, the
#: machine's memory in use at the end.
GOAL_IDEAL, GOAL_RERUN_S, GOAL_FLOW_MIB, GOAL_MACHINE_GIB = 1.2, 0.1, 400, 4
SCALE_TO_ZERO_WAIT_S = 600.0


def memory_in_use_kib() -> int:
    """The machine's memory in use now: MemTotal - MemAvailable (KiB)."""
    info = Path("/proc/meminfo").read_text()
    total, available = (int(re.search(rf"^{key}:\s*(\d+) kB", info, re.M)[1])  # type: ignore[index]
                        for key in ("MemTotal", "MemAvailable"))
    return total - available


def descendants(table: dict[int, ProcessCpu]) -> set[int]:
    """This process and every process descended from it."""
    mine, grown = {os.getpid()}, True
    while grown:
        more = {p.pid for p in table.values() if p.ppid in mine} - mine
        mine |= more
        grown = bool(more)
    return mine


def own_pss_kib() -> int:
    """The PSS of this process and every process descended from it (KiB): shared pages (the
    zygotes' forks, hard-linked image files) counted once, split among those that share them."""
    total = 0
    for pid in descendants(processes()):
        try:
            found = re.search(r"^Pss:\s*(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        except OSError:
            continue
        total += int(found[1]) if found else 0
    return total


def others_line() -> str:
    """Who else used the machine: its load average and its busiest processes not of this run."""
    table = processes()
    mine = descendants(table)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    others = sorted((p for p in table.values() if p.pid not in mine), key=lambda p: -(p.own_s + p.reaped_s))
    names = []
    for p in others[:5]:
        try:
            names.append(Path(f"/proc/{p.pid}/comm").read_text().strip())
        except OSError:
            continue
    return f"load average {load}; busiest other processes since boot: {', '.join(names)}"


@dataclass
class Figures1000:
    n: int
    q: int
    b: float
    idle_s: float
    max_parallel: int
    machine: str
    others_before: str
    d: Run  # functions migrated one at a time, for D
    fleet: Run  # (a)
    builds_fleet: int
    rerun: Run  # (c)
    rerun_before: tuple[int, int]
    rerun_after: tuple[int, int]
    memory_before_kib: int
    memory_end_kib: int
    own_pss_end_kib: int
    revisions_running_end: int
    scaled_in_s: float


def measure(args: argparse.Namespace, root: Path, groups: dict[str, int], machine_line: str,
            others_before: str, memory_before_kib: int) -> Figures1000:
    from cf2run.fleet.quotas import BUILD_LIMIT, RUN_WRITES_LIMIT, QuotaLimits, ensure_limits
    from cf2run.gcp.cloud import Cloud
    from cf2run.localcloud.server import LocalCloud
    from cf2run.localcloud.settings import LocalCloudSettings

    ensure_limits(QuotaLimits(builds=args.q, run_writes_per_minute=100_000),
                  replace=[BUILD_LIMIT, RUN_WRITES_LIMIT])
    settings = LocalCloudSettings(build_latency_s=0.0, max_concurrent_builds=args.q,
                                  scale_to_zero_after_s=args.idle_s)
    children = Children(root, groups)
    max_parallel = min(args.n, MAX_PARALLEL)
    with LocalCloud(state_dir=root / "localcloud", settings=settings) as local:
        cloud = Cloud.local(local.endpoints)

        def manifest(prefix: str, count: int) -> Path:
            return write_fleet(root / prefix, [f"{prefix}-{i:04d}" for i in range(count)], local.state_dir)

        warm = children.run("each", manifest("warm", 1))
        print(f"warm-up: {seconds(warm.wall_s)}", flush=True)
        settings.build_latency_s = args.b
        one_by_one = children.run("each", manifest("fb", args.d_n))
        print(f"D from {args.d_n} one at a time: {median(one_by_one.outside_build()):.2f} s", flush=True)

        fleet_manifest = manifest("fa", args.n)
        before = count_builds(cloud)
        fleet = children.run("fleet", fleet_manifest, max_parallel=max_parallel)
        built = count_builds(cloud) - before
        print(f"(a) N={args.n}: {seconds(fleet.wall_s)}, peak RSS {mib(fleet.rss_peak_kib)}", flush=True)

        rerun_before = counts(cloud)
        rerun = children.run("fleet", fleet_manifest, max_parallel=max_parallel)
        rerun_after = counts(cloud)
        print(f"(c) rerun: {seconds(rerun.wall_s)}, peak RSS {mib(rerun.rss_peak_kib)}", flush=True)

        runtime = local.instances.runtime
        if args.recheck:  # printed only: the rerun as it was before it skipped unchanged functions
            poll_until(lambda: True if not runtime.running() else None, SCALE_TO_ZERO_WAIT_S, 1.0,
                       "every revision scaled to zero")
            rechecked = children.run("recheck", fleet_manifest, max_parallel=max_parallel)
            print(f"(c') rerun with recheck, every revision scaled to zero first: "
                  f"{seconds(rechecked.wall_s)}, {rechecked.wall_s / args.n:.3f} s per function", flush=True)
        watch = time.monotonic()
        poll_until(lambda: True if not runtime.running() else None, SCALE_TO_ZERO_WAIT_S, 1.0,
                   "every revision scaled to zero")
        scaled_in_s = time.monotonic() - watch
        print(f"every revision scaled to zero {scaled_in_s:.0f} s after (c)", flush=True)
        return Figures1000(
            n=args.n, q=args.q, b=args.b, idle_s=args.idle_s, max_parallel=max_parallel,
            machine=machine_line, others_before=others_before, d=one_by_one, fleet=fleet,
            builds_fleet=built, rerun=rerun, rerun_before=rerun_before, rerun_after=rerun_after,
            memory_before_kib=memory_before_kib, memory_end_kib=memory_in_use_kib(),
            own_pss_end_kib=own_pss_kib(), revisions_running_end=len(runtime.running()),
            scaled_in_s=scaled_in_s)


def report(f: Figures1000) -> str:
    waves, d = math.ceil(f.n / f.q), median(f.d.outside_build())
    ideal, a = waves * f.b + d, f.fleet.wall_s
    (b0, r0), (b1, r1) = f.rerun_before, f.rerun_after
    per_fn = f.rerun.wall_s / f.n
    cpus = os.cpu_count() or 1
    flow_peak = max(f.fleet.rss_peak_kib, f.rerun.rss_peak_kib)
    rows = [
        ["(a) fleet flow: migrate_fleet, fanout local", seconds(a),
         f"max_parallel {f.max_parallel}; {f.builds_fleet} builds; {f.fleet.state}" + failures(f.fleet), ""],
        ["ideal: ceil(N/Q)·B + D", seconds(ideal),
         f"{waves} x {f.b:g} s + D = {d:.2f} s (median time outside the build of {f.d.functions} functions "
         "migrated one after another)", ""],
        ["(a) / ideal", f"{a / ideal:.2f}x", "", f"≤ {GOAL_IDEAL:g}x: {verdict(a / ideal <= GOAL_IDEAL)}"],
        ["(a)'s CPU floor on this machine", seconds(own_cpu(f.fleet) / cpus),
         f"{own_cpu(f.fleet):.0f} CPU-s used by the fleet's processes / {cpus} CPUs; other users "
         f"{f.fleet.cpu.get(OTHER_USERS, 0.0):.0f} CPU-s meanwhile", ""],
        ["(c) rerun of the unchanged fleet", seconds(f.rerun.wall_s),
         f"builds (ListBuilds) {b0} → {b1}; revisions (ListRevisions) {r0} → {r1}" + failures(f.rerun),
         f"no build, no deploy, none failed: {verdict(b0 == b1 and r0 == r1 and not f.rerun.failed())}"],
        ["(c) per function", f"{per_fn:.3f} s", "",
         f"< {GOAL_RERUN_S:g} s: {verdict(per_fn < GOAL_RERUN_S)}"],
        ["(d) flow process peak RSS, (a)", mib(f.fleet.rss_peak_kib),
         f"after imports {mib(f.fleet.rss_before_kib)}", ""],
        ["(d) flow process peak RSS, (c)", mib(f.rerun.rss_peak_kib),
         f"after imports {mib(f.rerun.rss_before_kib)}",
         f"< {GOAL_FLOW_MIB} MiB (both): {verdict(flow_peak < GOAL_FLOW_MIB * 1024)}"],
        ["(d) machine memory in use at the end", mib(f.memory_end_kib),
         f"all {f.n} services deployed, every revision scaled to zero ({f.revisions_running_end} running, "
         f"{f.scaled_in_s:.0f} s after (c) with scale_to_zero_after_s = {f.idle_s:g} s); before the run "
         f"{mib(f.memory_before_kib)}; other users' processes included",
         f"< {GOAL_MACHINE_GIB} GiB: {verdict(f.memory_end_kib < GOAL_MACHINE_GIB * 1024 * 1024)}"],
        ["↳ this run's processes (PSS)", mib(f.own_pss_end_kib),
         "the local cloud (this process, zygotes, storage emulator), Prefect server, Postgres", ""],
    ]
    cpu_rows = [[part, f"{f.fleet.cpu.get(part, 0.0):.0f}", f"{f.rerun.cpu.get(part, 0.0):.0f}"]
                for part in f.fleet.cpu]
    cpu_rows.append(["Prefect server + Postgres after the flow process, until idle (backlog)",
                     f"{f.fleet.backlog_cpu_s:.0f} (in {f.fleet.backlog_wall_s:.0f} s)",
                     f"{f.rerun.backlog_cpu_s:.0f} (in {f.rerun.backlog_wall_s:.0f} s)"])
    settings = (f"N={f.n}, Q={f.q}, B={f.b:g} s; Prefect server on postgres; scale_to_zero_after_s = "
                f"{f.idle_s:g} s")
    return (f"Machine: {f.machine}.  \nOthers on the machine at the start: {f.others_before}; at the end: "
            f"{others_line()}.  \nCommand: `.venv/bin/python bench/fleet_1000.py "
            f"--n {f.n} --q {f.q} --b {f.b:g} --idle-s {f.idle_s:g}`.  \nSettings: {settings}.\n\n"
            + markdown_table(["measure", "value", "detail", "goal (issue 17)"], rows)
            + "\n\n" + markdown_table(["CPU seconds while the flow process lived", "(a)", "(c)"], cpu_rows)
            + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000, help="functions in the fleet (default 1000)")
    parser.add_argument("--q", type=int, default=20, help="concurrent-build quota (default 20)")
    parser.add_argument("--b", type=float, default=10.0, help="simulated build latency, seconds (default 10)")
    parser.add_argument("--d-n", type=int, default=5,
                        help="functions migrated one at a time for D (default 5)")
    parser.add_argument("--idle-s", type=float, default=60.0,
                        help="the local cloud's scale_to_zero_after_s (default 60)")
    parser.add_argument("--recheck", action="store_true",
                        help="after (c), once every revision scaled to zero, the rerun with recheck "
                             "(smoke-testing every function, as (c) did before); printed only")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (children's logs)")
    args = parser.parse_args(argv)
    if min(args.n, args.q, args.d_n) < 1 or args.b < 0 or args.idle_s <= 0:
        parser.error("--n, --q and --d-n must be at least 1, --b not negative, --idle-s positive")
    root = Path(tempfile.mkdtemp(prefix="cf2run-bench-fleet1000-"))
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")  # before anything imports prefect
    os.environ["TMPDIR"] = tempfile.tempdir = str(root)
    if args.keep:
        print(f"keeping {root} (children's output: children.log)", flush=True)
    else:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    machine_line, others_before, memory_before = machine(), others_line(), memory_in_use_kib()
    groups: dict[str, int] = {}
    with prefect_api(root, "postgres", groups) as url:
        os.environ["PREFECT_API_URL"] = url  # the children inherit it
        figures = measure(args, root, groups, machine_line, others_before, memory_before)
    text = report(figures)
    print("\n" + text)
    if not args.no_readme:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
