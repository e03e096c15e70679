"""The layout's rules hold: the import contracts of pyproject.toml ([tool.importlinter], drawn in
docs/architecture.md) pass, and breaking one fails, so an upward or SQL import cannot land unseen."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]


def _lint(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LINT, cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_the_import_contracts_hold() -> None:
    run = _lint()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
    assert "The dashboard runs no SQL of its own" in run.stdout


def test_a_query_written_in_the_dashboard_breaks_its_contract(tmp_path: Path) -> None:
    """The dashboard as it is, with one page that imports SQLAlchemy and one that reads an API route
    module: found ahead of the installed dashboard, each line is reported."""
    copy = tmp_path / "alarmcentre_dashboard"
    shutil.copytree(REPO / "dashboard", copy, ignore=shutil.ignore_patterns("__pycache__"))
    records = copy / "records.py"
    records.write_text(records.read_text() + "\nfrom sqlalchemy import select  # noqa\n")
    reports = copy / "reports.py"
    reports.write_text(reports.read_text() + "\nfrom alarmcentre.reports.views import parse_month  # noqa\n")
    run = _lint(PYTHONPATH=str(tmp_path))
    assert run.returncode != 0, run.stdout[-4000:]
    assert "alarmcentre_dashboard.records -> sqlalchemy" in run.stdout
    assert "alarmcentre_dashboard.reports -> alarmcentre.reports.views" in run.stdout
    assert "1 broken" in run.stdout
