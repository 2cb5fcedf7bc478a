"""What `cf2run discover` prints: a table of the functions, what was not carried and what to do,
what changed since the last run, then the manifest(s) and the next command."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from cf2run.discovery.run import Result


def print_result(result: Result, console: Console | None = None) -> None:
    console = console or Console(width=200)
    table = Table(title="cf2run discover")
    for column in ("function", "region", "outcome", "service", "details"):
        table.add_column(column, overflow="fold")
    for row in sorted(result.rows, key=lambda r: (r.region, r.function)):
        table.add_row(row.function, row.region, row.outcome, row.service, row.detail)
    console.print(table)
    for service, items in sorted(result.not_carried.items()):
        console.print(f"{service}: not carried:", highlight=False)
        for item in items:
            console.print(f"  - {item.setting}: {item.advice}", highlight=False, soft_wrap=True)
    for region in result.unreachable:
        console.print(f"warning: the Cloud Functions API could not list {region}; its functions "
                      "are missing here", highlight=False)
    for folder in result.kept_sources:
        console.print(f"kept your edits in {folder} (the function did not change since)", highlight=False)
    changes = result.changes
    if changes is not None:
        if changes.any:
            for label, names in (("new", changes.new), ("removed", changes.removed),
                                 ("updated", changes.updated)):
                if names:
                    console.print(f"{label} since the last discover: {', '.join(names)}", highlight=False)
        else:
            console.print("no function changed since the last discover", highlight=False)
    for manifest in result.manifests:
        console.print(f"wrote {manifest}; next: cf2run plan {_shown(manifest)}", highlight=False)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
