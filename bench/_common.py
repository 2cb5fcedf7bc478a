"""What the benchmarks share: stopwatches, medians, ratios, machine facts, README tables.

Speed goals are met here, never asserted in tests: each script measures its subject and a
baseline in the same run, prints a markdown table and writes it into bench/README.md between
``<!-- NAME -->`` and ``<!-- /NAME -->`` (see `write_section`).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cf2run.gcp.cloud import Backoff

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
README = BENCH_DIR / "README.md"

T = TypeVar("T")


class Stopwatch:
    """Wall time since creation (or the last `restart`), by `time.perf_counter`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def restart(self) -> None:
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def poll_until(check: Callable[[], T | None], timeout_s: float, interval_s: float = 0.01,
               what: str = "condition") -> T:
    """Call `check` every `interval_s` until it returns something other than None."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s:g}s")
        time.sleep(interval_s)


@dataclass
class Samples:
    """Repeated measurements of one thing, in seconds."""

    label: str
    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self) -> str:
        """``min-max`` (or the single value), in seconds."""
        if len(self.values) == 1:
            return seconds(self.values[0])
        return f"{min(self.values):.2f}-{max(self.values):.2f} s"


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def machine() -> str:
    """One line: date, CPUs, CPU model, memory, Python, Node, OS, load average (now)."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = found[1].strip() if found else cpu
    except OSError:
        pass
    memory = ""
    try:
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        memory = f", {int(found[1]) / 1024 / 1024:.0f} GiB RAM" if found else ""
    except OSError:
        pass
    node = "none"
    if shutil.which("node"):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    today = datetime.date.today().isoformat()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{today}; {os.cpu_count()} CPUs ({cpu}){memory}; Python {platform.python_version()}; "
            f"Node {node}; {platform.system()} {platform.release()}; load average {load}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this script was run, as a command to copy (relative to the repository root)."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join([".venv/bin/python", str(shown), *sys.argv[1:]])


def write_section(name: str, body: str, path: Path = README) -> None:
    """Put `body` between ``<!-- name -->`` and ``<!-- /name -->`` in `path` (appended if absent)."""
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


# -- added for bench/fleet.py: polling schedules, CPU and memory of processes ---------------------


def backoff_sees(duration: float, backoff: Backoff, expected_s: float | None = None) -> float:
    """When a poller that asks on `backoff.schedule(expected_s)` (cf2run.gcp.cloud) first sees
    something that takes `duration` seconds to finish."""
    return next(at for at in backoff.schedule(expected_s) if at >= duration)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat ((0, 0) elsewhere)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def memory_kib(field: str = "VmRSS", pid: int | str = "self") -> int | None:
    """A process' memory figure from /proc/PID/status in KiB: VmRSS (now) or VmHWM (peak RSS)."""
    try:
        found = re.search(rf"^{field}:\s*(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return int(found[1]) if found else None


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


@dataclass(frozen=True)
class ProcessCpu:
    """One process from /proc/PID/stat: its parent and group, and CPU seconds it used itself
    (user + system) and that its reaped children used."""

    pid: int
    ppid: int
    pgid: int
    own_s: float
    reaped_s: float


def processes() -> dict[int, ProcessCpu]:
    """Every process of the machine that can be read now, by pid (empty where there is no /proc)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        found[pid] = ProcessCpu(pid, int(fields[1]), int(fields[2]), own / tick, reaped / tick)
    return found
