"""The Prefect UI as a user sees it, in a real headless Chromium on the real server of stack.py.

The run form of `migrate-from-manifest` refuses a bad function name before any run is created
(the error under the field, no flow run), and shows no 'Property is type "None"' noise; a fleet
run with a broken function shows its table (the message early, a short digest) and its report
(the failure in full under the table, with the hint), and the README's automation
(deployments/automations.yaml) fires on that failed run; its zombie automation (a run whose
heartbeats stop is marked Crashed) is accepted by the server; a fleet run again unchanged says
in its table that nothing was tested again, and the fleet form offers `recheck`. Screenshots go
to the test's directory, or to $CF2RUN_UI_SCREENSHOTS (docs/ui/ holds the README's).

Skipped, saying so, where Debian's chromium is not installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from fleet_samples import MISSING_ENTRY_POINT, write_fleet
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from prefect_server.browser import CHROMIUM, Browser
from prefect_server.processes import BIN, ROOT
from prefect_server.stack import PrefectStack

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no {CHROMIUM}: apt-get install chromium for the UI checks")

#: Sets a form field's value as typing does (the form listens to `input` events).
TYPE_INTO = """(function (label, value) {
  const labels = Array.from(document.querySelectorAll('.schema-form-property__label'));
  const field = labels.find(e => e.innerText.trim().split(' ')[0] === label)
    .closest('.schema-form-property').querySelector('textarea, input');
  const prototype = field.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
  Object.getOwnPropertyDescriptor(prototype, 'value').set.call(field, value);
  field.dispatchEvent(new Event('input', {bubbles: true}));
  return true;
})"""
OPEN_TAB = ("(() => {{ const tab = Array.from(document.querySelectorAll('li.p-tab'))"
            ".find(e => e.textContent.trim() === {!r}); if (tab) tab.click(); return !!tab; }})()")
CLICK = "Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === {!r}).click()"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    return Path(os.environ.get("CF2RUN_UI_SCREENSHOTS") or tmp_path / "screenshots")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with Browser.start(tmp_path / "chromium") as started:
        yield started


def test_run_form_refuses_a_bad_name_before_a_run_is_created(
        stack: PrefectStack, browser: Browser, screenshots: Path) -> None:
    with stack.client() as client:
        deployment = client.read_deployment_by_name("migrate-from-manifest/migrate-from-manifest")
    browser.open(f"{stack.ui_url}/deployments/deployment/{deployment.id}/run")
    browser.wait_for("document.body.innerText.includes('The function\\'s name in the manifest')",
                     what="the migrate-from-manifest form")
    # Typed and submitted again until the error shows: on a busy machine the form may still be
    # re-rendering (its schema fetched) when the first keystrokes land, and drop them.
    error = "'Hello_UI' does not match"
    browser.wait_for(f"({TYPE_INTO}('name', 'Hello_UI'), {CLICK.format('Submit')}, "
                     f"document.body.innerText.includes({error!r}))", timeout=90,
                     what="the name's error")
    browser.screenshot(screenshots / "run-form-bad-name.png")
    text = browser.text()
    assert "at most 45 characters" in text, "the field says the rule the error enforces"
    assert "Property is type" not in text
    assert "deployments/fleet.yaml" in browser.evaluate(
        "Array.from(document.querySelectorAll('textarea')).map(e => e.value).join(' ')")
    with stack.client() as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment.id])))
    assert runs == [], "the form must refuse the name before a run is created"


def test_fleet_run_table_and_report_read_in_a_browser_pane(
        stack: PrefectStack, browser: Browser, screenshots: Path, tmp_path: Path) -> None:
    create_the_readme_automation(stack, tmp_path)
    manifest = write_fleet(tmp_path, ["orders-api", "billing-api"], broken=["reports-api"])
    run = stack.run_deployment_like_the_ui("migrate-fleet/migrate-fleet", {"manifest": str(manifest)})
    assert run.state and run.state.is_failed(), stack.explain(run)
    assert automation_fired_for(stack, run.id), "deployments/automations.yaml must fire on a failed fleet"
    artifacts = {a.key: a for a in stack.artifacts(run) if a.key}
    assert set(artifacts) == {"migrate-fleet-fleet-table", "migrate-fleet-fleet-report"}, artifacts

    browser.resize(1600, 1100)
    browser.open(f"{stack.ui_url}/runs/flow-run/{run.id}")
    browser.wait_for(OPEN_TAB.format("Artifacts"), what="the fleet run's Artifacts tab")
    browser.wait_for("document.body.innerText.includes('migrate-fleet-fleet-report')",
                     what="the fleet run's artifacts")
    time.sleep(3)  # the run graph (a canvas) draws its task runs after the page has its text
    browser.screenshot(screenshots / "fleet-run.png")
    assert "1 of 3 functions failed: reports-api (build)" in browser.text()
    browser.resize(1600, 1000)

    table = artifacts["migrate-fleet-fleet-table"]
    browser.open(f"{stack.ui_url}/artifacts/artifact/{table.id}")
    browser.wait_for("document.querySelectorAll('table tr').length >= 4", what="the table's rows")
    browser.screenshot(screenshots / "fleet-table.png")
    headers = browser.evaluate(
        "Array.from(document.querySelectorAll('table th')).map(e => e.innerText.trim())")
    assert headers[:3] == ["function", "status", "message"], headers
    rows = json.loads(str(table.data))
    assert all(len(row["digest"]) == len("sha256:") + 12 for row in rows if row["digest"]), rows

    report = artifacts["migrate-fleet-fleet-report"]
    browser.open(f"{stack.ui_url}/artifacts/artifact/{report.id}")
    browser.wait_for("document.body.innerText.includes('Failed')", what="the report")
    browser.screenshot(screenshots / "fleet-report.png")
    text = browser.text()
    assert text.index("Functions") < text.index("reports-api failed at build")
    failure = text[text.index("reports-api failed at build"):]
    # the builder's words from the build log, and the fix in the manifest's words
    assert f"function named '{MISSING_ENTRY_POINT}'" in failure, failure[:2000]
    assert f"entry_point '{MISSING_ENTRY_POINT}' is not a function main.py defines" in failure, failure[:2000]


def test_an_unchanged_rerun_says_so_in_its_table_and_its_form_offers_recheck(
        stack: PrefectStack, browser: Browser, screenshots: Path, tmp_path: Path) -> None:
    """A fleet run again, unchanged: the table says the function was not tested again and which
    revision serves (not a fresh "smoke 200"); the fleet form offers `recheck`, described."""
    manifest = write_fleet(tmp_path, ["inventory-api"])
    first = stack.run_deployment_like_the_ui("migrate-fleet/migrate-fleet", {"manifest": str(manifest)})
    assert first.state and first.state.is_completed(), stack.explain(first)
    again = stack.run_deployment_like_the_ui("migrate-fleet/migrate-fleet", {"manifest": str(manifest)})
    assert again.state and again.state.is_completed(), stack.explain(again)
    artifacts = {a.key: a for a in stack.artifacts(again) if a.key}
    table, report = artifacts["migrate-fleet-fleet-table"], artifacts["migrate-fleet-fleet-report"]

    browser.resize(1600, 700)
    browser.open(f"{stack.ui_url}/artifacts/artifact/{table.id}")
    browser.wait_for("document.querySelectorAll('table tr').length >= 2", what="the rerun table's rows")
    browser.screenshot(screenshots / "fleet-rerun-table.png")
    text = browser.text()
    assert "unchanged, not tested again" in text, text[:2000]  # the message, cut short in the pane
    browser.open(f"{stack.ui_url}/artifacts/artifact/{report.id}")
    browser.wait_for("document.body.innerText.includes('Unchanged')", what="the rerun's report")
    assert "Unchanged: 1 (not tested again" in browser.text()

    with stack.client() as client:
        deployment = client.read_deployment_by_name("migrate-fleet/migrate-fleet")
    browser.resize(1600, 1100)
    browser.open(f"{stack.ui_url}/deployments/deployment/{deployment.id}/run")
    browser.wait_for("document.body.innerText.includes('Smoke-test (and compare with the old function)')",
                     timeout=90, what="the recheck field's description on the migrate-fleet form")


def create_the_readme_automation(stack: PrefectStack, tmp_path: Path) -> None:
    """deployments/automations.yaml, created as its comment says, with a (local) Slack block."""
    block_id = subprocess.run(
        [str(BIN / "python"), "-c", "from prefect.blocks.notifications import SlackWebhook; print("
         "SlackWebhook(url='http://127.0.0.1:9/hook').save('cf2run-alerts', overwrite=True))"],
        env=stack.env, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    automations = tmp_path / "automations.yaml"
    automations.write_text((ROOT / "deployments" / "automations.yaml").read_text()
                           .replace("NOTIFICATION-BLOCK-ID", block_id))
    created = subprocess.run([str(BIN / "prefect"), "automation", "create", "--from-file", str(automations)],
                             env=stack.env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    # both, as the server took them: the zombie one marks a run Crashed when its heartbeats stop
    found = {a["name"]: a for a in httpx.post(f"{stack.api_url}/automations/filter", json={},
                                               timeout=30).json()}
    assert {"cf2run fleet failed", "cf2run crash zombie flow runs"} <= set(found), sorted(found)
    zombie = found["cf2run crash zombie flow runs"]
    assert zombie["enabled"] and zombie["trigger"]["posture"] == "Proactive", zombie
    assert zombie["trigger"]["after"] == ["prefect.flow-run.heartbeat"], zombie
    assert [(a["type"], a["state"]) for a in zombie["actions"]] == [("change-flow-run-state", "CRASHED")]


def automation_fired_for(stack: PrefectStack, run_id: UUID, timeout: float = 60) -> bool:
    """Whether the automation triggered on `run_id`'s Failed event (its notification then fails
    to post to the unreachable hook, which the test does not need)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = httpx.post(f"{stack.api_url}/events/filter", timeout=30, json={
            "filter": {"event": {"name": ["prefect.automation.triggered"]}}, "limit": 50}).json()
        if any(f"prefect.flow-run.{run_id}" in json.dumps(event) for event in found["events"]):
            return True
        time.sleep(2)
    return False
