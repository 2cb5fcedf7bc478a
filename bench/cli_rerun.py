"""An unchanged rerun of one function from the command line: where its seconds go.

    .venv/bin/python bench/cli_rerun.py             # 5 reruns each way (~3 min)
    .venv/bin/python bench/cli_rerun.py --reps 2 --no-readme

One function (examples/python-http) on a fresh local cloud, migrated once (built, deployed),
then `cf2run migrate MANIFEST` run again, unchanged, as a user runs it (a new process each
time, wall time from the shell's point of view), three ways:

- temporary server: no Prefect server configured: Prefect starts one for the command;
- background server: a server `cf2run server start` left running (its PID in
  PREFECT_HOME/server.pid): cf2run uses it (cf2run/prefect_server.py);
- baselines: `python -c "import flows.migrate_function"` (the imports every run pays) and
  `python -c "import prefect"` (Prefect's share of them).

Goal (issue 16): an unchanged rerun under 3 s wall with the background server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    REPO,
    Samples,
    Stopwatch,
    command_line,
    free_port,
    machine,
    markdown_table,
    ratio,
    write_section,
)
from cf2run.localcloud.server import LocalCloud

BIN = Path(sys.executable).parent


def timed(args: list[str], env: dict[str, str], samples: Samples) -> str:
    watch = Stopwatch()
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    samples.add(watch.elapsed)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf2run-bench-cli-") as scratch, LocalCloud() as cloud:
        root = Path(scratch)
        home = root / "prefect-home"
        home.mkdir()
        manifest = root / "manifest.yaml"
        manifest.write_text(yaml.safe_dump({
            "target": {"kind": "local", "localcloud_dir": str(cloud.state_dir)},
            "functions": [{"name": "cli-rerun", "source": str(REPO / "examples" / "python-http"),
                           "runtime": "python311", "entry_point": "hello"}]}))
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        os.environ["PREFECT_HOME"] = str(home)
        migrate = [str(BIN / "cf2run"), "migrate", str(manifest)]
        temporary, background = Samples("temporary server"), Samples("background server")
        imports, prefect = Samples("imports"), Samples("import prefect")
        env = clean | {"PREFECT_HOME": str(home), "PREFECT_SERVER_API_PORT": str(free_port())}
        server = [str(BIN / "cf2run"), "server"]
        timed([*server, "start"], env, Samples("server start"))
        try:
            timed(migrate, env, Samples("first migration"))  # builds and deploys once
            for _ in range(args.reps):
                output = timed(migrate, env, background)
                assert "Starting temporary server" not in output, output[-2000:]
                timed([sys.executable, "-c", "import flows.migrate_function"], env, imports)
                timed([sys.executable, "-c", "import prefect"], env, prefect)
        finally:
            timed([*server, "stop"], env, Samples("server stop"))
        for _ in range(args.reps):
            timed(migrate, env, temporary)
    body = report(temporary, background, imports, prefect, args.reps)
    print(body)
    if not args.no_readme:
        write_section("cli_rerun", body)


def report(temporary: Samples, background: Samples, imports: Samples, prefect: Samples,
           reps: int) -> str:
    met = "met" if background.median < 3 else "NOT met"
    rows = [[s.label, f"{s.median:.2f} s", s.spread(), ratio(s.median, imports.median)]
            for s in (temporary, background, imports, prefect)]
    return "\n".join([
        f"Measured {machine()}.", f"`{command_line()}`: median of {reps} runs each.", "",
        markdown_table(["unchanged rerun of one function", "wall (median)", "min-max",
                        "vs the imports alone"], rows), "",
        f"Goal: under 3 s wall with a background server: {background.median:.2f} s, {met}; the "
        f"temporary server costs {temporary.median - background.median:.1f} s more per command."])


if __name__ == "__main__":
    main()
