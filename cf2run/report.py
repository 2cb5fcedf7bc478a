"""Run migrations from the command line and print what happened, one row per function."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from cf2run.fleet.quotas import ensure_limits
from cf2run.manifest.spec import FunctionSpec, Target
from cf2run.results import MigrationResult


def migrate_each(functions: Iterable[FunctionSpec], target: Target, recheck: bool = False
                 ) -> list[MigrationResult]:
    """Run the migrate-function flow for each function, one after another (creating the quota
    limits the steps take, with their defaults, when missing: as a fleet run does); `recheck`:
    smoke-test the unchanged ones too."""
    from flows.migrate_function import migrate_function

    ensure_limits()
    results: list[MigrationResult] = []
    for spec in functions:
        state = migrate_function(spec, target, recheck, return_state=True)
        result: object = state.result(raise_on_failure=False)
        if not isinstance(result, MigrationResult):  # the flow itself crashed
            result = MigrationResult(function=spec.name, status="failed", failed_step="flow",
                                     message=str(result or state.message))
        results.append(result)
    return results


def results_table(results: list[MigrationResult], title: str = "Migrations") -> Table:
    table = Table(title=title)
    for column in ("function", "status", "URL"):
        table.add_column(column, no_wrap=True)
    for column in ("smoke / error", "build", "parity", "time"):
        table.add_column(column)
    for r in results:
        status = "[green]ok[/]" if r.status == "succeeded" else f"[red]failed at {r.failed_step}[/]"
        table.add_row(r.function, status, r.url or "-", r.message or "-", r.build_note, r.parity or "-",
                      f"{sum(r.timings.values()):.1f}s")
    return table


def print_results(results: list[MigrationResult], title: str = "Migrations") -> None:
    console = Console()
    if not console.is_terminal:  # a log or a pipe: do not squeeze URLs into 80 columns
        console = Console(width=200)
    console.print(results_table(results, title))
    warned = [(r.function, warning) for r in results for warning in r.warnings]
    if warned:
        console.print("\nWarnings:")
        for function, warning in warned:
            console.print(f"  {function}: {warning}", soft_wrap=True, crop=False, markup=False,
                          highlight=False)
    triggers = [r for r in results if r.eventarc and r.status == "succeeded"]
    if triggers:
        console.print("\nEventarc triggers to create (once the events move from the Cloud Functions):")
        for result in triggers:
            console.print(f"  {result.function}: {result.eventarc}", soft_wrap=True, crop=False, markup=False,
                          highlight=False)
