"""The local cloud's costs that grow with the number of services, not with the work (issue 17).

    .venv/bin/python bench/localcloud_scale.py                       # 300 and 1000 services (~1 min)
    .venv/bin/python bench/localcloud_scale.py --services 300 --idle-s 5 --no-readme

Two costs a 1000-function fleet pays however little happens, each beside its baseline in the
same run:

- **idle URLs**: CPU seconds per second of this process while N service URLs listen and nobody
  calls: the `Router` (one thread accepts for every URL: frontend/acceptor.py) against N
  `LoopbackServer`s (a `serve_forever` thread per URL polling every 0.25 s: what the router was);
- **state saves**: milliseconds per write-behind save of the Cloud Run state holding N services
  (a service, its revision, template and IAM policy each) after one service changed
  (`CloudRunState.render`: the changed messages encoded, the others' texts joined) against a
  save that encodes every message (what the first save after a start does; before the dirty
  set, each save also serialized every message to find the changed ones: bench/README.md has
  that code's figures, measured once).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import command_line, machine, markdown_table, ratio, write_section
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from cf2run.localcloud.cloudrun.router import Router, running_only
from cf2run.localcloud.cloudrun.state import CloudRunState, Tracked
from cf2run.localcloud.iam.metadata import LoopbackServer, QuietHandler, TokenAuthority

SECTION = "localcloud-scale"


def idle_cpu(idle_s: float) -> float:
    """CPU seconds per second this process uses while it waits `idle_s`."""
    started_cpu, started = time.process_time(), time.monotonic()
    time.sleep(idle_s)
    return (time.process_time() - started_cpu) / (time.monotonic() - started)


def router_idle(services: int, idle_s: float, state_dir: Path) -> float:
    router = Router(TokenAuthority(state_dir), backend=running_only(lambda revision: None))
    try:
        for i in range(services):
            router.open(f"projects/p/locations/r/services/s{i}")
        return idle_cpu(idle_s)
    finally:
        router.stop_all()


def listeners_idle(services: int, idle_s: float) -> float:
    listeners = [LoopbackServer(QuietHandler) for _ in range(services)]
    try:
        return idle_cpu(idle_s)
    finally:
        for listener in listeners:
            listener.stop()


def state_of(services: int) -> CloudRunState:
    """A state as a fleet leaves it: per service, the service, one revision, its template and policy."""
    state = CloudRunState()
    for i in range(services):
        state.services[f"s{i}"], state.revisions[f"s{i}/r"] = service(i, 0), revision(i)
        state.templates[f"s{i}/r"] = service(i, 0).template
        state.policies[f"s{i}"] = policy_pb2.Policy(version=1, etag=b"0123456789abcdef")
    state.render()  # the first save encodes everything, before and now
    return state


def service(i: int, generation: int) -> run_v2.Service:
    limits = run_v2.ResourceRequirements(limits={"cpu": "1", "memory": "256Mi"})
    container = run_v2.Container(image=f"us-central1-docker.pkg.dev/p/cf2run/s{i}@sha256:{'0' * 64}",
                                 env=[run_v2.EnvVar(name=f"VAR_{n}", value="x" * 20) for n in range(5)],
                                 resources=limits)
    return run_v2.Service(name=f"s{i}", uri=f"http://127.0.0.1:{10000 + i}", generation=generation,
                          labels={"managed-by": "cf2run"}, etag=f"e{generation}",
                          template=run_v2.RevisionTemplate(revision=f"s{i}-r", containers=[container]),
                          traffic_statuses=[run_v2.TrafficTargetStatus(revision=f"s{i}-r", percent=100)])


def revision(i: int) -> run_v2.Revision:
    return run_v2.Revision(name=f"s{i}/r", service=f"s{i}", generation=1,
                           containers=service(i, 0).template.containers)


def full_save(state: CloudRunState) -> str:
    """A save that encodes every message afresh."""
    return CloudRunState(services=Tracked(state.services), revisions=Tracked(state.revisions),
                         templates=Tracked(state.templates), policies=Tracked(state.policies),
                         ports=dict(state.ports)).render()


def save_ms(services: int, saves: int, save: Callable[[CloudRunState], object]) -> float:
    """Milliseconds per save after one service changed."""
    state = state_of(services)
    started = time.perf_counter()
    for n in range(saves):
        state.services[f"s{n % services}"] = service(n % services, n + 1)
        save(state)
    return (time.perf_counter() - started) / saves * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--saves", type=int, default=100)
    parser.add_argument("--no-readme", action="store_true")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as state_dir:
        for count in options.services:
            before = listeners_idle(count, options.idle_s)
            now = router_idle(count, options.idle_s, Path(state_dir))
            rows.append([f"idle: CPU-s per second, {count} URLs", f"{before:.4f}", f"{now:.4f}",
                         ratio(now, before)])
    for count in options.services:
        before = save_ms(count, options.saves, full_save)
        now = save_ms(count, options.saves, CloudRunState.render)
        rows.append([f"save after one change: ms, {count} services", f"{before:.2f}", f"{now:.2f}",
                     ratio(now, before)])
    body = "\n".join([machine(), "", f"Command: `{command_line()}`.", "",
                      markdown_table(["measure", "baseline (a thread per URL; every message encoded)",
                                      "now (one acceptor; the changed messages encoded)", "ratio"],
                                     rows)])
    print(body)
    if not options.no_readme:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
