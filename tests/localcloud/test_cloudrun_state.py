"""The local Cloud Run's state on disk: written behind changes, and as it was at close."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cf2run.localcloud.cloudrun.state import FILENAME, SAVE_DELAY_S, Store


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
