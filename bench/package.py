"""Packaging a 100 MB source tree: cf2run's streamed .tgz against `tar czf`, side by side.

    .venv/bin/python bench/package.py            # ~100 MB tree, 3 reps each (~1 min)
    .venv/bin/python bench/package.py --mb 20 --reps 1 --no-readme

The tree is generated (seeded): node_modules-like JavaScript text (what most of a big function
body is) plus incompressible native-addon-like binaries, about 100 MB in ~3,000 files. Each
measure runs in a fresh child process (`--child MODE TREE`), which reports its CPU time, wall
time and the peak RSS above what it had after its imports (`ru_maxrss`). Modes:

- `tar`: `tar czf` of the tree (GNU tar + gzip -6): the baseline;
- `cf2run`: `tasks.package.make_tarball` (ISA-L deflate, streamed to a temporary file);
- `zlib-9-memory`: what cf2run did until session 9 (tarfile into gzip level 9, all in memory);
- `zlib-6`, `zlib-ng-6`: cf2run's streaming with another deflate, to compare compressors.

Goals (issue 17): cf2run's throughput at least 0.8x tar's; peak memory under 64 MiB above the
process' baseline; the same tree gives the same sha256 twice.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import command_line, machine, markdown_table, ratio, write_section

MODES = ("tar", "cf2run", "zlib-9-memory", "zlib-6", "zlib-ng-6")
TOKENS = ("function", "return", "const", "let", "var", "this", "module.exports", "require", "=>",
          "if", "else", "for", "null", "undefined", "true", "false", "new", "Promise", "async",
          "await", "throw", "Error", "object", "length", "prototype", "callback", "options", "{",
          "}", "(", ");", "[", "]", ".", ",", "=", "===", "!==", "+", "'use strict';", "\n")


def make_tree(root: Path, megabytes: int, seed: int = 17) -> Path:
    """About `megabytes` MB: 80% JavaScript-like text, 20% random bytes, in ~30 files per MB."""
    rng = random.Random(seed)
    names = [f"{rng.choice('abcdefghij')}{i}" for i in range(400)]
    target, written, index = megabytes * 10**6, 0, 0
    while written < target * 0.8:
        words = rng.choices(TOKENS + tuple(names), k=rng.randint(2000, 8000))
        path = root / "node_modules" / f"pkg{index % 97}" / "lib" / f"m{index}.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = " ".join(words).encode()
        path.write_bytes(text)
        written, index = written + len(text), index + 1
    for number in range(max(1, megabytes // 10)):
        path = root / "node_modules" / f"pkg{number}" / "build" / "addon.node"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(target // 5 // max(1, megabytes // 10)))
    (root / "index.js").write_text("exports.handler = (req, res) => res.send('ok');\n")
    return root


# -- the child: one measure in a fresh process ---------------------------------------------------


def child(mode: str, tree: Path) -> dict[str, Any]:
    from tasks import package  # imported before the baseline is read

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu, wall = time.process_time(), time.perf_counter()
    if mode == "zlib-9-memory":
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in package._walk(tree.resolve(), None):
                package._add(tar, entry)
        size, sha = len(buffer.getvalue()), ""
    else:
        if mode != "cf2run":  # another deflate behind the same streaming
            import zlib_ng.zlib_ng as zlib_ng

            package.isal_zlib = zlib_ng if mode == "zlib-ng-6" else zlib  # type: ignore[assignment]
            package.ISAL_LEVEL = 6
        with package.make_tarball(tree) as tarball:
            size, sha = tarball.size, tarball.sha256 + "/" + tarball.archive_sha256
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "size": size,
            "sha": sha, "peak_above_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib}


def measure(mode: str, tree: Path) -> dict[str, Any]:
    if mode == "tar":
        with tempfile.TemporaryDirectory() as scratch:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = time.perf_counter()
            subprocess.run(["tar", "czf", f"{scratch}/out.tgz", "-C", str(tree), "."], check=True)
            wall = time.perf_counter() - wall
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            size = Path(f"{scratch}/out.tgz").stat().st_size
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return {"cpu_s": cpu, "wall_s": wall, "size": size, "sha": "", "peak_above_kib": 0}
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(tree)], check=True,
                          capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100, help="size of the generated tree (MB)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "TREE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="cf2run-bench-package-") as scratch:
        tree = make_tree(Path(scratch) / "src", args.mb)
        files = sum(1 for path in tree.rglob("*") if path.is_file())
        source_mb = sum(path.stat().st_size for path in tree.rglob("*") if path.is_file()) / 10**6
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for _ in range(args.reps):  # interleaved, so a busy moment hits every mode alike
            for mode in MODES:
                runs[mode].append(measure(mode, tree))
    print(report(runs, files, source_mb, args))
    if not args.no_readme:
        write_section("package", report(runs, files, source_mb, args))


def report(runs: dict[str, list[dict[str, Any]]], files: int, source_mb: float,
           args: argparse.Namespace) -> str:
    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    tar_wall = median("tar", "wall_s")
    rows = []
    for mode in MODES:
        wall = median(mode, "wall_s")
        peak = max(run["peak_above_kib"] for run in runs[mode]) / 1024
        rows.append([mode, f"{wall:.2f} s", f"{median(mode, 'cpu_s'):.2f} s",
                     f"{source_mb / wall:.0f} MB/s", ratio(tar_wall, wall),
                     f"{median(mode, 'size') / 10**6:.1f} MB",
                     "-" if mode == "tar" else f"{peak:.1f} MiB"])
    shas = {run["sha"] for run in runs["cf2run"]}
    cf2run_ratio = tar_wall / median("cf2run", "wall_s")
    cf2run_peak = max(run["peak_above_kib"] for run in runs["cf2run"]) / 1024
    goals = [
        ["throughput at least 0.8x `tar czf`", f"{cf2run_ratio:.2f}x", _met(cf2run_ratio >= 0.8)],
        ["peak memory under 64 MiB above baseline", f"{cf2run_peak:.1f} MiB", _met(cf2run_peak < 64)],
        ["same tree, same sha256 (every rep)", f"{len(shas)} distinct", _met(len(shas) == 1)],
    ]
    return "\n".join([
        f"Measured {machine()}.", f"`{command_line()}`: a generated tree of {source_mb:.0f} MB in "
        f"{files} files; median of {args.reps} reps, each in a fresh process.", "",
        markdown_table(["mode", "wall", "CPU", "throughput", "vs tar czf", ".tgz size",
                        "peak RSS above baseline"], rows), "",
        markdown_table(["goal (issue 17)", "measured", ""], goals)])


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()
