"""What a fleet run reports: one row per function (Prefect table artifact) and a markdown summary.

The same rows whichever way the fleet fanned out (in-process or over the migrate-function
deployment), since both give one `MigrationResult` per function; a dry run gives one
`FunctionPlan` per function instead.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cf2run.fleet.plan import FunctionPlan
from cf2run.results import MigrationResult

#: Steps in pipeline order; a step not listed here (a newer one) is shown after these.
STEP_ORDER = ("plan", "package", "build", "verify", "deploy", "smoke", "parity", "promote", "discard")


class FleetReport(BaseModel):
    """A fleet run: its results (or, for a dry run, its plans) in manifest order."""

    model_config = ConfigDict(extra="forbid")

    dry_run: bool = Field(default=False, description="True when nothing was changed.")
    fanout: str = Field(default="local", description="'local' or 'deployments'.")
    seconds: float = Field(default=0.0, description="Wall time of the fleet run.")
    results: list[MigrationResult] = Field(default_factory=list, description="One per function.")
    plans: list[FunctionPlan] = Field(default_factory=list, description="One per function (dry run).")

    @property
    def total(self) -> int:
        return len(self.plans) if self.dry_run else len(self.results)

    @property
    def failed(self) -> list[str]:
        """Functions that failed (or, in a dry run, could not be planned), with the failed step."""
        if self.dry_run:
            return [plan.function for plan in self.plans if not plan.ok]
        return [f"{r.function} ({r.failed_step})" for r in self.results if r.status == "failed"]

    @property
    def summary(self) -> str:
        """One line for the flow run's state message."""
        what = "planned" if self.dry_run else "migrated"
        if not self.failed:
            return f"all {self.total} functions {what} in {self.seconds:.1f}s"
        return f"{len(self.failed)} of {self.total} functions failed: {', '.join(self.failed)}"

    def rows(self) -> list[dict[str, Any]]:
        return plan_rows(self.plans) if self.dry_run else result_rows(self.results)

    def markdown(self) -> str:
        return plan_markdown(self) if self.dry_run else result_markdown(self)


def steps_of(results: list[MigrationResult]) -> list[str]:
    """Every step any result has timings for, in pipeline order."""
    seen = {step for result in results for step in result.timings}
    known = [step for step in STEP_ORDER if step in seen]
    return known + sorted(seen - set(STEP_ORDER))


#: Characters of a message the table shows (its full text is under the report's table).
MESSAGE_CELL = 48
#: Ids a message carries (builds, operations) that say nothing in a table cell.
UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b ?")
#: Hex digits of an image digest the table shows (as `docker images` does).
DIGEST_CELL = 12


def result_rows(results: list[MigrationResult]) -> list[dict[str, Any]]:
    """Table artifact rows, narrow enough for a browser pane: status, the message (cut short; the
    report has it in full), failed step, cached or built, parity with the old function, seconds,
    URL, short digest, revision."""
    return [{"function": r.function, "status": r.status, "message": short(r.message, MESSAGE_CELL),
             "failed step": r.failed_step or "", "build": "" if r.build_cached is None else r.build_note,
             "parity": r.parity or "",
             "seconds": round(sum(r.timings.values()), 1), "URL": r.url or "",
             "digest": short_digest(r.digest), "revision": r.revision or ""} for r in results]


def short(text: str | None, length: int) -> str:
    """`text` on one line without ids, cut to `length` characters (an ellipsis says it was cut)."""
    flat = " ".join(UUID_RE.sub("", text or "").split())
    return flat if len(flat) <= length else flat[:length - 1].rstrip() + "…"


def short_digest(digest: str | None) -> str:
    """``sha256:0123456789ab`` of a full digest ('' for none)."""
    if not digest:
        return ""
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}:{hexdigits[:DIGEST_CELL]}" if hexdigits else digest[:DIGEST_CELL]


def plan_rows(plans: list[FunctionPlan]) -> list[dict[str, Any]]:
    """Dry-run table rows: what the build and the deploy would do."""
    return [{"function": p.function, "build": p.build or "", "deploy": p.deploy or "",
             "image": p.image or "", "revision now": p.current_revision or "",
             "revision after": p.revision or ("(new image)" if p.build == "needed" else ""),
             "URL": p.url or "", "message": p.message or ""} for p in plans]


def result_markdown(report: FleetReport) -> str:
    results = report.results
    ok = [r for r in results if r.status == "succeeded"]
    built = sum(1 for r in results if r.build_cached is False)
    cached = sum(1 for r in results if r.build_cached)
    step_totals = {step: sum(r.timings.get(step, 0.0) for r in results) for step in steps_of(results)}
    lines = [f"# Fleet migration: {len(ok)} of {len(results)} succeeded", "",
             f"- **Functions:** {len(results)} ({len(ok)} succeeded, {len(results) - len(ok)} failed)",
             f"- **Images:** {built} built, {cached} cached",
             f"- **Unchanged:** {sum(r.unchanged for r in results)} (not tested again: each revision "
             "passed its checks when it was promoted)",
             f"- **Wall time:** {report.seconds:.1f}s (fan-out: {report.fanout})",
             "- **Step time (sum over functions):** "
             + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in step_totals.items()), ""]
    lines += ["## Functions", "", "| function | status | build | parity | seconds | URL |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r.function} | {r.status} | {_cell(r.build_note)} | {r.parity or '-'} | "
              f"{sum(r.timings.values()):.1f} | {r.url or '-'} |" for r in results]
    failed = [r for r in results if r.status == "failed"]
    if failed:  # in full, as paragraphs the page wraps: what failed, what keeps serving, the hint
        lines += ["", "## Failed", ""]
        lines += [f"- **{r.function}** failed at `{r.failed_step or '-'}`: {_line(r.message)}"
                  for r in failed]
    return "\n".join(lines) + "\n"


def plan_markdown(report: FleetReport) -> str:
    plans = report.plans
    count = {what: sum(1 for p in plans if what in (p.build, p.deploy))
             for what in ("needed", "cached", "create", "update", "unchanged")}
    lines = [f"# Fleet dry run: {len(plans)} functions, nothing changed", "",
             f"- **Builds:** {count['needed']} needed, {count['cached']} cached",
             f"- **Deploys:** {count['create']} create, {count['update']} update, "
             f"{count['unchanged']} unchanged",
             f"- **Could not plan:** {len(report.failed)}", "",
             "| function | build | deploy | revision now | revision after |", "|---|---|---|---|---|"]
    lines += [f"| {p.function} | {p.build or '-'} | {p.deploy or _cell(p.message)} | "
              f"{p.current_revision or '-'} | {p.revision or '-'} |" for p in plans]
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    """Text safe inside a markdown table cell."""
    return _line(text).replace("|", "\\|")


def _line(text: str | None) -> str:
    """Text on one markdown line (a list item)."""
    return " ".join((text or "-").split())
