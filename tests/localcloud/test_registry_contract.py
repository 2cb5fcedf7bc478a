"""The registry scenarios of registry_scenario.py against Debian's docker-registry
(distribution 2.8), the reference the local registry must behave like.

Skipped, saying why, when /usr/bin/docker-registry is not installed
(``apt-get install -y docker-registry``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from registry_scenario import SCENARIOS, Target, make_target

from cf2run.localcloud.storage.emulator import free_port

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


def _binary() -> str | None:
    return shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None)


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _binary()
    if binary is None:
        reason = "docker-registry (distribution 2.8) is not installed: apt-get install -y docker-registry"
        print(reason)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("distribution")
    port = free_port()
    config = work / "config.yml"
    config.write_text(CONFIG.format(root=work / "storage", port=port))
    log_path = work / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/v2/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"docker-registry did not answer on {url}/v2/; log:\n{log_path.read_text()[-3000:]}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario_on_distribution(distribution: str, tmp_path: Path,
                                  scenario: Callable[[Target], None]) -> None:
    scenario(make_target(distribution, tmp_path))
