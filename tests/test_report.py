"""What a user reads after a migration: the CLI's table and notes, the per-function summary."""

from __future__ import annotations

import pytest

from cf2run.report import print_results
from cf2run.results import MigrationResult
from flows.migrate_function import summary

WARNING = (".env looks like a dotenv file and would be uploaded with the source; add `/.env` to "
           ".gcloudignore to leave it out")


def migrated(**fields: object) -> MigrationResult:
    return MigrationResult.model_validate({"function": "orders-api", "status": "succeeded",
                                           "url": "http://127.0.0.1:1", **fields})


def test_warnings_are_printed_under_the_table_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    print_results([migrated(warnings=[WARNING]), migrated(function="quiet")])
    out = capsys.readouterr().out
    assert f"Warnings:\n  orders-api: {WARNING}\n" in out
    assert "quiet:" not in out


def test_the_summary_lists_the_warnings() -> None:
    assert f"**Warnings:**\n\n- {WARNING}\n" in summary(migrated(warnings=[WARNING]))
    assert "Warnings" not in summary(migrated())
