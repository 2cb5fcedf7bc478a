"""Python revisions forked from a zygote (cf2run.localcloud.cloudrun.zygote): real images, real Functions
Framework processes, one zygote per dependency set, and nothing a revision can tell apart from
a new interpreter. The images and fixtures are test_runtime's."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_runtime
from test_runtime import CRASHING, PIP_LAYER, _push, eventually, group_alive, python_image

from cf2run.gcp.oci import RegistryClient
from cf2run.localcloud.cloudrun.runtime import RevisionFailed, RevisionSpec, Runtime
from cf2run.localcloud.settings import LocalCloudSettings

ff_deps = test_runtime.ff_deps
registry = test_runtime.registry
runtime = test_runtime.runtime

#: What a revision can see of how it was started.
INTROSPECT = """\
import json, os, sys
ANSWER = {answer!r}

def hello(request):
    main = sys.modules["__main__"]
    return json.dumps({{"answer": ANSWER, "env": dict(os.environ), "path": sys.path,
                       "argv": [sys.argv, sys.orig_argv], "cwd": os.getcwd(), "pgid": os.getpgid(0),
                       "flags": list(sys.flags),
                       "main": getattr(main, "__file__", None), "main_name": main.__name__,
                       "framework": sys.modules["functions_framework"].__file__,
                       "stdout": [sys.stdout.encoding, sys.stdout.line_buffering, sys.stdout.write_through]}})
"""


def _get(address: str) -> dict:
    return httpx.get(f"http://{address}/", timeout=30).json()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _cpu_s(pgid: int) -> float:
    """utime + stime of the live processes of process group `pgid`, in seconds."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _processes_in(directory: Path, *, below: bool = True) -> list[int]:
    """Live processes whose working directory is `directory` (or, if `below`, under it): in a
    runtime's directory run its zygotes, under it its revisions (in their image's root)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            continue
        if state != "Z" and (Path(cwd).is_relative_to(directory) if below else Path(cwd) == directory):
            found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_functions_sharing_a_dependency_set_are_forked_from_one_zygote(
        runtime: Runtime, registry: RegistryClient, ff_deps: Path) -> None:
    one = python_image(registry, ff_deps, "one", INTROSPECT.format(answer="one"))
    two = python_image(registry, ff_deps, "two", INTROSPECT.format(answer="two"))
    answers = [_get(runtime.start(RevisionSpec(service=name, revision=f"{name}-1", image=image)))
               for name, image in (("one", one), ("two", two))]
    assert [a["answer"] for a in answers] == ["one", "two"]  # each its own main.py

    zygotes = runtime.zygotes.pids()
    assert len(zygotes) == 1
    assert _processes_in(runtime.root, below=False) == zygotes
    for answer in answers:
        main_pid = answer["pgid"]  # the revision leads its own process group ...
        assert main_pid != os.getpgid(0)
        assert _ppid(main_pid) == zygotes[0]  # ... and is the zygote's child, not the local cloud's
        assert answer["main_name"] == "__main__"
        assert answer["main"].endswith("functions_framework/__main__.py")


def test_a_forked_revision_sees_what_a_new_interpreter_would(
        tmp_path: Path, registry: RegistryClient, ff_deps: Path) -> None:
    """Env (exactly its own), sys.path, argv, cwd, flags, stdio: as with fork_server off."""
    image = python_image(registry, ff_deps, "same", INTROSPECT.format(answer="same"))
    seen: dict[bool, Any] = {}
    for fork_server in (True, False):
        runtime = Runtime(tmp_path / str(fork_server), registry, fork_server=fork_server)
        try:
            forked = _get(runtime.start(RevisionSpec(service="same", revision="same-1", image=image,
                                                     env={"ONLY_ONE": "1"})))
            other = _get(runtime.start(RevisionSpec(service="same", revision="same-2", image=image,
                                                    env={"ONLY_TWO": "2"})))
            assert bool(runtime.zygotes.pids()) is fork_server
        finally:
            runtime.stop_all()
        assert forked["env"]["ONLY_ONE"] == "1" and "ONLY_ONE" not in other["env"]
        assert "ONLY_TWO" not in forked["env"]
        assert forked["env"]["PORT"] != other["env"]["PORT"]
        root = str(tmp_path / str(fork_server))
        seen[fork_server] = {key: _relative(value, root) for key, value in forked.items() if key != "pgid"}
    assert seen[True]["env"].pop("PORT") and seen[False]["env"].pop("PORT")
    assert seen[True] == seen[False]
    assert seen[True]["env"]["PYTHONPATH"] == f"ROOT/images/{_digest(seen[True])}/rootfs/{PIP_LAYER}"


def _relative(value: object, root: str) -> object:
    """`value` with the runtime's directory written ROOT (two runtimes, two directories)."""
    if isinstance(value, str):
        return value.replace(root, "ROOT")
    if isinstance(value, list):
        return [_relative(item, root) for item in value]
    if isinstance(value, dict):
        return {key: _relative(item, root) for key, item in value.items()}
    return value


def _digest(answer: dict) -> str:
    return str(answer["cwd"]).split("/")[2]


def test_stop_and_crashes_of_forked_revisions(runtime: Runtime, registry: RegistryClient,
                                              ff_deps: Path) -> None:
    image = python_image(registry, ff_deps, "crashy", INTROSPECT.format(answer="x"))
    address = runtime.start(RevisionSpec(service="crashy", revision="crashy-1", image=image))
    process = runtime._instances["crashy-1"].process
    pgid = _get(address)["pgid"]
    runtime.stop("crashy-1")
    assert process.returncode == 0  # gunicorn's arbiter exits cleanly on SIGTERM
    assert not group_alive(pgid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{address}/", timeout=5)
    assert "[crashy-1] Container called exit(0)." in runtime.logs("crashy")

    address = runtime.start(RevisionSpec(service="crashy", revision="crashy-2", image=image))
    process = runtime._instances["crashy-2"].process
    pgid = _get(address)["pgid"]
    os.kill(pgid, signal.SIGKILL)  # the revision's main process dies later on
    assert eventually(lambda: runtime.address("crashy-2") is None)
    assert process.returncode == -signal.SIGKILL
    assert eventually(lambda: not group_alive(pgid))  # its worker goes with it
    assert eventually(lambda: "[crashy-2] Container terminated on signal 9." in runtime.logs("crashy"))
    assert len(runtime.zygotes.pids()) == 1  # the zygote lives on


def test_a_forked_function_that_crashes_at_import_fails_with_its_traceback(
        runtime: Runtime, registry: RegistryClient, ff_deps: Path) -> None:
    image = python_image(registry, ff_deps, "boom", CRASHING)
    with pytest.raises(RevisionFailed) as failed:
        runtime.start(RevisionSpec(service="boom", revision="boom-1", image=image))
    assert len(runtime.zygotes.pids()) == 1  # it was forked, and the zygote is unharmed
    reason = failed.value.reason
    assert "The user-provided container exited with code 1 before listening" in reason
    assert reason.endswith("RuntimeError: boom at import: DATABASE_URL is not set")
    logs = runtime.logs("boom")
    assert "[boom-1] starting up" in logs and "[boom-1] Traceback (most recent call last):" in logs
    assert "zygote" not in logs  # the traceback is the function's, not the zygote's
    assert "[boom-1] Container called exit(1)." in logs


def test_revisions_a_zygote_cannot_serve_as_a_new_interpreter_start_as_processes(
        runtime: Runtime, registry: RegistryClient, ff_deps: Path) -> None:
    """A module of its own named like one the zygote imported (here a namespace portion, which
    a new interpreter would put on flask.__path__), or an env var read at import that differs."""
    shadowing = _push(registry, "shadowing",
                      [{PIP_LAYER: ff_deps}, {"workspace/main.py": INTROSPECT.format(answer="s").encode(),
                                              "workspace/flask/README.txt": b"not a package"}],
                      ["python3", "-m", "functions_framework", "--target", "hello"],
                      {"PYTHONPATH": f"/{PIP_LAYER}", "PYTHONUNBUFFERED": "1"})
    plain = python_image(registry, ff_deps, "plain", INTROSPECT.format(answer="p"))
    starts = [RevisionSpec(service="plain", revision="plain-1", image=plain),
              RevisionSpec(service="shadowing", revision="shadowing-1", image=shadowing),
              RevisionSpec(service="plain", revision="plain-2", image=plain,
                           env={"FORWARDED_ALLOW_IPS": "*"})]
    parents = [_ppid(_get(runtime.start(spec))["pgid"]) for spec in starts]
    assert parents == [*runtime.zygotes.pids(), os.getpid(), os.getpid()]


def test_stop_all_stops_the_zygotes(runtime: Runtime, registry: RegistryClient, ff_deps: Path) -> None:
    image = python_image(registry, ff_deps, "gone", INTROSPECT.format(answer="g"))
    groups = [_get(runtime.start(RevisionSpec(service="gone", revision=f"gone-{n}", image=image)))["pgid"]
              for n in range(2)]
    zygotes = runtime.zygotes.pids()
    assert len(zygotes) == 1
    runtime.stop_all()
    assert not any(group_alive(pgid) for pgid in groups)
    assert not _alive(zygotes[0])
    assert _processes_in(runtime.root) == []
    assert runtime.zygotes.pids() == []


def test_a_zygote_that_dies_takes_its_revisions_and_is_replaced(
        runtime: Runtime, registry: RegistryClient, ff_deps: Path) -> None:
    image = python_image(registry, ff_deps, "reborn", INTROSPECT.format(answer="r"))
    pgid = _get(runtime.start(RevisionSpec(service="reborn", revision="reborn-1", image=image)))["pgid"]
    [zygote] = runtime.zygotes.pids()
    os.kill(zygote, signal.SIGKILL)
    assert eventually(lambda: runtime.address("reborn-1") is None)
    assert eventually(lambda: not group_alive(pgid))
    pgid = _get(runtime.start(RevisionSpec(service="reborn", revision="reborn-2", image=image)))["pgid"]
    assert runtime.zygotes.pids() != [zygote] and _ppid(pgid) == runtime.zygotes.pids()[0]


def test_the_fork_server_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LocalCloudSettings().fork_server is True
    monkeypatch.setenv("CF2RUN_LOCALCLOUD_FORK_SERVER", "0")
    assert LocalCloudSettings().fork_server is False


def test_cpu_per_start_with_and_without_a_zygote(tmp_path: Path, registry: RegistryClient, ff_deps: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: CPU seconds of a revision's process group once it is ready."""
    image = python_image(registry, ff_deps, "cpu", INTROSPECT.format(answer="cpu"))
    per_start = {}
    for fork_server in (False, True):
        runtime = Runtime(tmp_path / str(fork_server), registry, fork_server=fork_server)
        try:
            runtime.start(RevisionSpec(service="cpu", revision="cpu-0", image=image))  # the zygote, if any
            zygote_s = sum(_cpu_s(pid) for pid in runtime.zygotes.pids())
            samples = []
            for n in range(1, 6):
                runtime.start(RevisionSpec(service="cpu", revision=f"cpu-{n}", image=image))
                time.sleep(0.3)  # let the worker settle
                samples.append(_cpu_s(runtime._instances[f"cpu-{n}"].process.pid))
        finally:
            runtime.stop_all()
        per_start[fork_server] = (sum(samples) / len(samples), zygote_s)
    with capsys.disabled():
        for fork_server, (cpu_s, zygote_s) in per_start.items():
            print(f"\nCPU per Python start, fork_server={fork_server}: {cpu_s:.3f}s"
                  + (f" (the zygote's imports, once: {zygote_s:.2f}s)" if fork_server else ""))
    assert all(cpu_s > 0 for cpu_s, _ in per_start.values())
