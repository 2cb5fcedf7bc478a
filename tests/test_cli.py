"""The `cf2run` command as a user runs it: a subprocess, its exit code and what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from cf2run.localcloud.endpoints import FILENAME
from cf2run.localcloud.server import LocalCloud

ROOT = Path(__file__).resolve().parents[1]
CF2RUN = Path(sys.executable).with_name("cf2run")


def cf2run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CF2RUN), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_invalid_manifest_exits_2_naming_the_field_before_any_cloud_call(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("target: {kind: local, localcloud_dir: /nonexistent}\n"
                        "functions:\n  - {name: Bad_Name, source: ., runtime: python312, "
                        "entry_point: main}\n")
    run = cf2run("migrate", str(manifest))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "functions[0]" in run.stderr and "name" in run.stderr
    assert "no local cloud found" not in run.stderr  # validation came before any connection


def test_unknown_only_name_is_refused(tmp_path: Path) -> None:
    run = cf2run("migrate", "examples/manifest.yaml", "--only", "no-such-function")
    assert run.returncode == 2
    assert "no-such-function" in run.stderr


@pytest.mark.usefixtures("prefect_api")
def test_migrate_only_one_sample_prints_its_row_and_exits_0(localcloud: LocalCloud) -> None:
    run = cf2run("migrate", "examples/manifest.yaml", "--only", "storage-events",
                 env={"CF2RUN_LOCALCLOUD_DIR": str(localcloud.state_dir),
                      "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = next(line for line in run.stdout.splitlines() if "storage-events" in line)
    assert "ok" in row and "http://127.0.0.1:" in row
    assert "hello-python" not in run.stdout


def test_localcloud_add_secret_adds_versions_the_local_cloud_reads(localcloud: LocalCloud,
                                                                   tmp_path: Path) -> None:
    value = tmp_path / "value.txt"
    value.write_bytes(b"hola")
    state = ["--state-dir", str(localcloud.state_dir)]
    first = cf2run("localcloud", "add-secret", "greeting", "--data-file", str(value), *state)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "Created version [1] of the secret [greeting] in project [local-project]."
    second = subprocess.run([str(CF2RUN), "localcloud", "add-secret", "greeting", "--data-file", "-", *state],
                            input=b"adios", capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert b"Created version [2]" in second.stdout
    secrets = localcloud.cloudrun.secrets  # what the local Cloud Run resolves secret_env from
    assert secrets.access("local-project", "greeting", "1") == b"hola"
    assert secrets.access("local-project", "greeting") == b"adios"


def test_localcloud_add_secret_refuses_a_bad_id_or_a_missing_file(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path)]
    bad = cf2run("localcloud", "add-secret", "no/slashes", "--data-file", "-", *state)
    assert bad.returncode == 2
    assert "'no/slashes' is not a valid secret id" in bad.stderr
    missing = cf2run("localcloud", "add-secret", "ok", "--data-file", str(tmp_path / "nope"), *state)
    assert missing.returncode == 2
    assert "--data-file" in missing.stderr and "No such file" in missing.stderr
    assert not (tmp_path / "secretmanager").exists()


def test_localcloud_token_needs_a_running_local_cloud(tmp_path: Path, localcloud: LocalCloud) -> None:
    """Issue 16: it minted a token of a brand-new key (refused by every service) when none ran."""
    missing = cf2run("localcloud", "token", "http://127.0.0.1:1", "--state-dir", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no local cloud found" in missing.stderr
    assert not (tmp_path / "none").exists()  # nothing created there
    token = cf2run("localcloud", "token", "http://127.0.0.1:1", "--state-dir", str(localcloud.state_dir))
    assert token.returncode == 0
    assert localcloud.accounts.tokens.verify(token.stdout.strip(), "http://127.0.0.1:1")


def test_help_shows_the_state_dir_default() -> None:
    """Rich took `[default: ...]` for markup and dropped it."""
    shown = cf2run("localcloud", "serve", "--help", env={"COLUMNS": "120"})
    text = " ".join(shown.stdout.replace("│", " ").split())
    assert "default: $CF2RUN_LOCALCLOUD_DIR, else ~/.cf2run/localcloud" in text


def test_every_command_says_at_once_that_the_local_cloud_is_stopped_or_killed(tmp_path: Path) -> None:
    """Issue 16: `migrate` retried for ~10 minutes per function on a local cloud that was not
    running. Stopped, its endpoints.json says so; killed (kill -9 leaves the file as it was, and
    nothing listens on its ports), a refused connection says so."""
    state = tmp_path / "cloud"
    LocalCloud(state_dir=state).start().close()  # a real local cloud of this test's own, stopped
    (tmp_path / "fn").mkdir()
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"target: {{kind: local, localcloud_dir: {state}}}\nfunctions:\n"
                        "  - {name: hello, source: fn, runtime: python312, entry_point: main}\n")
    commands = [("plan", str(manifest)), ("migrate", str(manifest)), ("fleet", str(manifest)),
                ("rollback", "hello", "--manifest", str(manifest)),
                ("localcloud", "token", "http://127.0.0.1:1", "--state-dir", str(state))]
    unset = {"PREFECT_API_URL": ""}  # the fast path must not need a Prefect server either

    def refused_by_all(why: str) -> None:
        for command in commands:
            run = cf2run(*command, env=unset)
            assert run.returncode == 2, (command, run.stdout, run.stderr)
            assert f"no local cloud is running in {state}: {why}" in run.stderr, (command, run.stderr)
            assert f"start it with `cf2run localcloud serve --state-dir {state}`" in run.stderr
            assert "Traceback" not in run.stderr

    refused_by_all(f"{state / FILENAME} says it was stopped")
    recorded = json.loads((state / FILENAME).read_text())
    del recorded["stopped"]  # what kill -9 leaves: the file of a running cloud, and nobody there
    (state / FILENAME).write_text(json.dumps(recorded))
    refused_by_all(f"nothing answers at {recorded['accounts'].removeprefix('http://')}")
