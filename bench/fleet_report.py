"""bench/fleet.py's figures, and the markdown it writes from them.

`Figures` holds everything one run measured; `report` turns it into the goals table (a, ideal,
b, c, d), "where the time goes in (a)" (step medians, the local Cloud Build's own times, the
build quota's use, a timeline) and the CPU used while each flow process lived. Nothing here
starts a process or imports cf2run: it is arithmetic and text.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from _common import backoff_sees, command_line, markdown_table, mib, seconds

if TYPE_CHECKING:
    from cf2run.gcp.cloud import Backoff

#: Issue 4, "Speed": (a)/ideal at most this; (b)/(a) at least this; a cached rerun under this per function.
GOAL_IDEAL, GOAL_SPEEDUP, GOAL_RERUN_S = 1.2, 8.0, 0.2
MAX_PARALLEL = 500  # migrate_fleet's own upper bound for max_parallel
STEPS = ("package", "build", "verify", "deploy", "smoke", "promote")
#: The parts of the CPU table that are the orchestration's cost (the flow process and its API).
PREFECT_PARTS = ("flow process", "Prefect server", "Postgres")
#: The part of the CPU table that is not the fleet's: other processes of the machine.
OTHER_USERS = "rest of the machine (other users)"


@dataclass
class Run:
    """One flow process: what it measured itself (`bench/fleet.py --child` writes these fields
    as JSON, up to `results` and `plans`), then what the parent measured around it."""

    phase: str  # "fleet", "each", "dry-run" or "orchestration"
    state: str  # the flow run's final state ("Completed" ...)
    wall_s: float  # around the flow call, imports excluded
    started_at: float  # epoch seconds, around the flow call
    ended_at: float
    rss_before_kib: int  # VmRSS after imports, before the flow
    rss_peak_kib: int  # ru_maxrss: the process' peak RSS since it started
    cpu_total_s: float  # user + system, imports included
    cpu_imports_s: float  # user + system before the flow call (imports)
    results: list[dict[str, Any]] = field(default_factory=list)  # MigrationResult dumps
    plans: list[dict[str, Any]] = field(default_factory=list)  # dry run, orchestration: {"function", "ok"}
    process_wall_s: float = 0.0  # the process' whole life, from the parent
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by part of the machine meanwhile
    backlog_cpu_s: float = 0.0  # Prefect server + Postgres after the process ended, until idle
    backlog_wall_s: float = 0.0

    @property
    def functions(self) -> int:
        return len(self.results) or len(self.plans)

    def failed(self) -> list[str]:
        if not self.results:
            return [p["function"] for p in self.plans if not p["ok"]]
        return [f"{r['function']} at {r['failed_step']}: {r['message']}" for r in self.results
                if r["status"] != "succeeded"]

    def step(self, name: str) -> list[float]:
        return [r["timings"][name] for r in self.results if name in r["timings"]]

    def outside_build(self) -> list[float]:
        return [sum(v for k, v in r["timings"].items() if k != "build") for r in self.results]


@dataclass(frozen=True)
class BuildTimes:
    """One build, from the local Cloud Build's own records (its clock, epoch seconds)."""

    function: str
    created: float
    started: float
    finished: float

    @property
    def working(self) -> float:
        return self.finished - self.started

    @property
    def queued(self) -> float:
        return self.started - self.created


def polled(poll: Backoff, builds: list[BuildTimes]) -> dict[str, float]:
    """Seconds from CreateBuild until tasks/build.py's polling sees each build finished, by
    function (derived): the backoff, with quick asks around the median of the (up to 16) builds
    that had finished when it was created, as `tasks.build.RecentBuilds` has them in the flow."""
    from tasks.build import RecentBuilds  # not at import: prefect must see PREFECT_HOME first

    seen, recent = {}, RecentBuilds()
    done = sorted(builds, key=lambda b: b.finished)
    for build in sorted(builds, key=lambda b: b.created):
        while done and done[0].finished < build.created:
            recent.add(done[0].finished - done[0].created)
            done.pop(0)
        seen[build.function] = backoff_sees(build.finished - build.created, poll, recent.typical_s())
    return seen


@dataclass
class Figures:
    """Everything one run of bench/fleet.py measured."""

    n: int
    q: int
    b: float
    max_parallel: int
    run_writes: int  # the cf2run-cloud-run-writes limit, per minute
    prefect_db: str
    machine: str  # taken before the run started anything (its load average: the others' load)
    poll: Backoff  # tasks/build.py's GetBuild backoff on the local target (LOCAL_POLLING.build)
    fleet: Run  # (a)
    builds_fleet: list[BuildTimes]  # (a)'s builds
    rerun: Run  # (c)
    rerun_before: tuple[int, int]  # (builds, revisions) in the local cloud before (c)
    rerun_after: tuple[int, int]
    rerun_half: Run | None  # (c) for the first N/2, for the memory slope
    each: Run  # (b)
    builds_each: int
    dry: Run | None  # (d) the dry run of --cached-n
    orchestration: Run | None = None  # (e) (a)'s shape in Prefect, steps that do nothing
    fleet_walls: list[float] = field(default_factory=list)  # every run of (a); `fleet` is the median one


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def report(f: Figures) -> str:
    settings = (f"N={f.n}, Q={f.q}, B={f.b:g} s; Prefect server (`prefect server start`) on {f.prefect_db}; "
                f"`cf2run-cloud-build` limit = Q, local Cloud Build max_concurrent_builds = Q; "
                f"`cf2run-cloud-run-writes` = {f.run_writes}/minute")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    table = markdown_table(["measure", "value", "detail", "goal (issue 4)"], goal_rows(f) + memory_rows(f))
    return (f"Machine: {f.machine} (before the run; at the end: {load}).  \nCommand: `{command_line()}`.  \n"
            f"Settings: {settings}.\n\n{table}\n\nWhere the time goes in (a):\n\n{profile(f)}\n")


def runs_of_a(f: Figures) -> str:
    """Which of (a)'s runs the figures are (the machine's noise: ±2 s between runs)."""
    if len(f.fleet_walls) < 2:
        return ""
    walls = ", ".join(f"{wall:.1f}" for wall in sorted(f.fleet_walls))
    return f"; the median of {len(f.fleet_walls)} runs of N new functions each ({walls} s)"


def goal_rows(f: Figures) -> list[list[str]]:
    """(a), the ideal, (b) and (c), each against its goal."""
    waves, outside = math.ceil(f.n / f.q), median(f.each.outside_build())
    ideal, a = waves * f.b + outside, f.fleet.wall_s
    each_n = f.each.functions
    each_per_fn = f.each.wall_s / each_n
    each_total = each_per_fn * f.n  # = f.each.wall_s when --baseline-n is N
    extrapolated = each_n != f.n
    (b0, r0), (b1, r1) = f.rerun_before, f.rerun_after
    rerun_per_fn = f.rerun.wall_s / f.n
    return [
        ["(a) fleet flow: migrate_fleet, fanout local", seconds(a),
         f"max_parallel {f.max_parallel}; {len(f.builds_fleet)} builds; {f.fleet.state}" + failures(f.fleet)
         + runs_of_a(f), ""],
        ["ideal: ceil(N/Q)·B + D", seconds(ideal),
         f"{waves} x {f.b:g} s + D = {outside:.2f} s (median time a function of (b) spends outside its "
         "build: package, verify, deploy, smoke, promote)", ""],
        ["(a) / ideal", f"{a / ideal:.2f}x", "", f"≤ {GOAL_IDEAL:g}x: {verdict(a / ideal <= GOAL_IDEAL)}"],
        cpu_floor_row(f, ideal),
        *orchestration_rows(f, ideal),
        ["(b) one after another: migrate_each, seed's way", seconds(each_total),
         (f"{each_n} functions measured, {each_per_fn:.2f} s each, x {f.n} (extrapolated)" if extrapolated
          else f"{each_per_fn:.2f} s per function") + f"; {f.builds_each} builds, none cached"
         + failures(f.each), ""],
        ["speedup (b) / (a)", f"{each_total / a:.1f}x", "(b) extrapolated" if extrapolated else "",
         f"≥ {GOAL_SPEEDUP:g}x: {verdict(each_total / a >= GOAL_SPEEDUP)}"],
        ["(c) rerun of the unchanged fleet", seconds(f.rerun.wall_s),
         f"builds (ListBuilds) {b0} → {b1}; revisions (ListRevisions) {r0} → {r1}" + failures(f.rerun),
         f"no build, no deploy, none failed: {verdict(b0 == b1 and r0 == r1 and not f.rerun.failed())}"],
        ["(c) per function", f"{rerun_per_fn:.3f} s", "",
         f"< {GOAL_RERUN_S:g} s: {verdict(rerun_per_fn < GOAL_RERUN_S)}"],
    ]


def cpu_floor_row(f: Figures, ideal: float) -> list[str]:
    """The shortest (a) this machine allows at (a)'s CPU cost: the fleet's own CPU seconds over
    the CPUs, and how many CPUs the 1.2x goal would take at that cost."""
    cpus = os.cpu_count() or 1
    own = own_cpu(f.fleet)
    needed = math.ceil(own / (GOAL_IDEAL * ideal))
    return ["(a)'s CPU floor on this machine", seconds(own / cpus),
            f"{own:.0f} CPU-s used by the fleet's processes (flow after its imports, Prefect server, "
            f"Postgres, local cloud, revisions) / {cpus} CPUs: no schedule ends (a) sooner here; "
            f"{GOAL_IDEAL:g}x the ideal takes ≥ {needed} CPUs at this cost", ""]


def own_cpu(run: Run) -> float:
    """CPU seconds the run's own processes used (all but other users'), without the flow
    process' imports (its wall time does not count them either)."""
    return sum(used for part, used in run.cpu.items() if part != OTHER_USERS) - run.cpu_imports_s


def orchestration_cpu(run: Run) -> float:
    """What the flow process, the Prefect server and its database used for the run, backlog included."""
    return sum(run.cpu.get(part, 0.0) for part in PREFECT_PARTS) + run.backlog_cpu_s


def orchestration_rows(f: Figures, ideal: float) -> list[list[str]]:
    """(e): what Prefect alone costs in (a)'s shape, and its share of the 1.2x budget."""
    if (e := f.orchestration) is None:
        return []
    cpus, spent = os.cpu_count() or 1, own_cpu(e) + e.backlog_cpu_s
    budget = GOAL_IDEAL * ideal * cpus
    return [["(e) Prefect alone: (a)'s shape, steps that do nothing", seconds(e.wall_s),
             f"{e.functions} functions x {len(STEPS)} step task runs, uncached, max_parallel "
             f"{f.max_parallel}: {spent:.0f} CPU-s ({spent / max(e.functions, 1):.2f} per function; "
             f"{e.backlog_cpu_s:.0f} of them the server's after the flow ended), {spent / budget:.0%} "
             f"of the {budget:.0f} CPU-s that {cpus} CPUs give in {GOAL_IDEAL:g}x the ideal", ""]]


def failures(run: Run) -> str:
    failed = run.failed()
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return f"; **{len(failed)} failed**: " + "; ".join(failed[:3]) + more if failed else ""


def memory_rows(f: Figures) -> list[list[str]]:
    """(d): the flow process' peak RSS for (a), (c), (c) of half the fleet, the slope to 1000, the dry run."""

    def row(what: str, run: Run, detail: str = f"max_parallel {f.max_parallel}") -> list[str]:
        grown = run.rss_peak_kib - run.rss_before_kib
        return [what, mib(run.rss_peak_kib),
                f"{detail}; after imports {mib(run.rss_before_kib)}, +{mib(grown)} during the flow", ""]

    rows = [row(f"(d) peak RSS, (a) migration of {f.n}", f.fleet),
            row(f"(d) peak RSS, (c) cached rerun of {f.n}", f.rerun)]
    if (half := f.rerun_half) is not None:
        slope = (f.rerun.rss_peak_kib - half.rss_peak_kib) / (f.n - half.functions)
        rows += [row(f"(d) peak RSS, cached rerun of {half.functions}", half),
                 ["(d) cached rerun of 1000, extrapolated", mib(f.rerun.rss_peak_kib + slope * (1000 - f.n)),
                  f"linear in N from the two cached reruns ({slope:.0f} KiB per function); not measured",
                  "reported"]]
    if (dry := f.dry) is not None:
        rows.append(row(f"(d) peak RSS, dry run of {dry.functions}", dry,
                        f"max_parallel {min(dry.functions, MAX_PARALLEL)}; {dry.wall_s:.1f} s, "
                        f"{dry.wall_s / dry.functions:.3f} s per function"))
    return rows


def profile(f: Figures) -> str:
    """Steps of (a) against (b); (a)'s builds and the build quota's use; a timeline; the CPU table."""
    header = ["", "(a) fleet: median", "(a) max", "(b) one at a time: median"]
    rows = [[f"step `{step}` (s)", f"{median(f.fleet.step(step)):.2f}",
             f"{max(f.fleet.step(step), default=0):.2f}", f"{median(f.each.step(step)):.2f}"]
            for step in STEPS]
    parts = [markdown_table(header, rows + build_rows(f)), quota_use(f), timeline(f), cpu_table(f)]
    return "\n\n".join(part for part in parts if part)


def build_rows(f: Figures) -> list[list[str]]:
    """(a)'s builds as the local Cloud Build saw them, and as the build step did."""
    if not f.builds_fleet:
        return []
    p = f.poll
    step_s = {r["function"]: r["timings"].get("build", 0.0) for r in f.fleet.results}
    seen = polled(p, f.builds_fleet)

    def row(what: str, values: list[float]) -> list[str]:
        return [what, f"{median(values):.2f}", f"{max(values):.2f}", ""]

    return [
        row("Cloud Build: WORKING per build (at least B, the real warm build and push included)",
            [x.working for x in f.builds_fleet]),
        row("Cloud Build: QUEUED per build", [x.queued for x in f.builds_fleet]),
        row(f"build seen by tasks/build.py's local GetBuild polling (`LOCAL_POLLING.build`: {p.first_s:g} s "
            f"x{p.factor:g} … {p.maximum_s:g} s, and {p.first_s:g} s apart around the median of the "
            "builds done before) after finishing (derived)",
            [seen[x.function] - (x.finished - x.created) for x in f.builds_fleet]),
        row("build step minus the build as polled = waiting for a `cf2run-cloud-build` slot, queueing "
            "included (+ HEAD, CreateBuild)", [step_s[x.function] - seen[x.function] for x in f.builds_fleet
                                               if x.function in step_s]),
    ]


def quota_use(f: Figures) -> str:
    """How much of the Q build slots (a)'s builds used, and how many slot-seconds were left free
    while functions were still waiting for one."""
    if not f.builds_fleet:
        return ""
    builds = sorted(f.builds_fleet, key=lambda x: x.created)
    first, last_create = builds[0].created, builds[-1].created
    span = max(x.finished for x in builds) - first
    by_function = polled(f.poll, builds)
    seen = [by_function[x.function] for x in builds]
    busy = sum(x.working for x in builds) / (f.q * span) if span > 0 else 0.0
    held = sum(seen) / (f.q * span) if span > 0 else 0.0
    # Every function wants its build from the flow's start (max_parallel >= N), so until the last
    # CreateBuild someone is always waiting: a slot not held then is a slot wasted.
    window = last_create - first
    held_in_window = sum(max(0.0, min(x.created + s, last_create) - x.created)
                         for s, x in zip(seen, builds, strict=True))
    idle = f.q * window - held_in_window
    return (f"First CreateBuild → last build finished: {span:.1f} s of the {f.fleet.wall_s:.1f} s "
            f"(ideal for the builds alone: {math.ceil(f.n / f.q) * f.b:g} s). Share of the Q={f.q} "
            f"build slots over that span: {100 * busy:.0f}% building, {100 * held:.0f}% held by a "
            f"build step (building, or finished and not yet polled). Between the first and the last "
            f"CreateBuild ({window:.1f} s, functions waiting for a slot all along) {idle:.0f} "
            f"slot-seconds of {f.q * window:.0f} were free: ≈ {idle / f.q:.1f} s of wall time lost "
            "to steps not taking a free slot at once.")


def timeline(f: Figures) -> str:
    if not f.builds_fleet:
        return ""
    first = min(x.created for x in f.builds_fleet)
    last = max(x.finished for x in f.builds_fleet)
    return (f"Timeline of (a) (flow process and local Cloud Build clocks, same machine): flow start → first "
            f"CreateBuild {first - f.fleet.started_at:.1f} s; first CreateBuild → last build finished "
            f"{last - first:.1f} s; last build finished → flow end {f.fleet.ended_at - last:.1f} s.")


def cpu_table(f: Figures) -> str:
    """Where the machine's CPU went while each measured flow process lived."""
    runs = [(name, run) for name, run in (("(a) fleet", f.fleet), ("(c) rerun", f.rerun),
                                          ("(b) one at a time", f.each), ("(d) dry run", f.dry),
                                          ("(e) Prefect alone", f.orchestration))
            if run is not None]
    cpus = os.cpu_count() or 1
    rows = [[part, *[f"{run.cpu.get(part, 0.0):.0f}" for _, run in runs]] for part in f.fleet.cpu]
    rows.append(["**total** / available (wall x CPUs)",
                 *[f"{sum(run.cpu.values()):.0f} / {run.process_wall_s * cpus:.0f}" for _, run in runs]])
    rows.append(["Prefect server + Postgres after the flow process ended, until idle (its backlog)",
                 *[f"{run.backlog_cpu_s:.0f} (in {run.backlog_wall_s:.0f} s)" for _, run in runs]])
    rows.append([" + ".join(PREFECT_PARTS) + ", backlog included, per function",
                 *[f"{orchestration_cpu(run) / max(run.functions, 1):.2f}" for _, run in runs]])
    header = ["CPU seconds used while the flow process lived", *[name for name, _ in runs]]
    return markdown_table(header, rows)
