"""The local Cloud Run's state on disk: written behind changes, and as it was at close."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from cf2run.localcloud.cloudrun.state import FILENAME, SAVE_DELAY_S, CloudRunState, Store, Tracked


def on_disk(state_dir: Path) -> dict[str, int]:
    path = state_dir / FILENAME
    return json.loads(path.read_text())["ports"] if path.exists() else {}


def test_changes_reach_the_disk_without_a_close(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        for i in range(50):  # a burst, as ten deploys at once make
            with store.lock:
                store.state.ports[f"service-{i}"] = 8000 + i
                store.save()
        deadline = time.monotonic() + 10 * SAVE_DELAY_S + 5
        while len(on_disk(tmp_path)) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert on_disk(tmp_path) == {f"service-{i}": 8000 + i for i in range(50)}
        assert Store(tmp_path).state.ports == store.state.ports  # what a restart finds
    finally:
        store.close()


def test_close_writes_what_is_pending_and_nothing_after(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.lock:
        store.state.ports["kept"] = 8001
        store.save()
    store.close()  # at once: no waiting for the writer
    assert on_disk(tmp_path) == {"kept": 8001}
    with store.lock:  # what shutting down does is not a change a restart should see
        store.state.ports["during-shutdown"] = 8002
        store.save()
    time.sleep(2 * SAVE_DELAY_S)
    assert on_disk(tmp_path) == {"kept": 8001}


def written(state_dir: Path) -> str:
    path = state_dir / FILENAME
    return path.read_text() if path.exists() else ""


def full_render(state: CloudRunState) -> str:
    """The document every message encoded afresh: what a save must write, whatever it re-encodes."""
    return CloudRunState(services=Tracked(state.services), revisions=Tracked(state.revisions),
                         templates=Tracked(state.templates), policies=Tracked(state.policies),
                         ports=dict(state.ports)).render()


def test_each_save_writes_every_change_and_a_restart_reads_them_back(tmp_path: Path) -> None:
    """Saves encode only the messages set or removed since the last one; what they write is the
    whole state all the same (added, replaced and deleted services, revisions, policies)."""
    store = Store(tmp_path)
    name = "projects/p/locations/r/services/s{}".format
    try:
        steps: list[Callable[[CloudRunState], object]] = [
            lambda state: state.services.update({name(i): run_v2.Service(name=name(i), uri=f"u{i}")
                                                 for i in range(5)}),
            lambda state: state.revisions.update({f"{name(i)}/revisions/a": run_v2.Revision(
                name=f"{name(i)}/revisions/a", service=name(i)) for i in range(5)}),
            lambda state: state.services.__setitem__(name(2), run_v2.Service(name=name(2), uri="moved")),
            lambda state: state.policies.__setitem__(name(1), policy_pb2.Policy(version=3, etag=b"e")),
            lambda state: (state.services.pop(name(3)), state.revisions.pop(f"{name(3)}/revisions/a")),
        ]
        for step in steps:
            with store.lock:
                step(store.state)
                store.save()
                expected = full_render(store.state)
            deadline = time.monotonic() + 10 * SAVE_DELAY_S + 5
            while written(tmp_path) != expected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert written(tmp_path) == expected
        restarted = CloudRunState.load(tmp_path)
        assert restarted.services[name(2)].uri == "moved" and name(3) not in restarted.services
        assert sorted(restarted.revisions) == sorted(f"{name(i)}/revisions/a" for i in (0, 1, 2, 4))
        assert restarted.policies[name(1)].version == 3
    finally:
        store.close()
