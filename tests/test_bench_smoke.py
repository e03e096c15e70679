"""The ingest benchmark still runs: `bench/ingest.py --quick` end to end, so it cannot rot unnoticed.

It needs PostgreSQL and Mosquitto like the infra tests: skipped with a message where they are
missing, failing in CI. The figures themselves are not checked here (a shared CI machine is no
place for speed limits); only that every phase completes and reports them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import POSTGRES_ADMIN_URL, REPO, missing_service

BENCH = REPO / "bench" / "ingest.py"


def _mosquitto() -> str | None:
    return shutil.which("mosquitto", path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin")


def test_ingest_benchmark_quick_run_completes_and_prints_its_figures(tmp_path: Path) -> None:
    mosquitto = _mosquitto()
    if mosquitto is None:
        missing_service("no mosquitto binary on PATH or in /usr/sbin (Debian: apt-get install mosquitto)")
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        missing_service(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}".strip())

    result_file = tmp_path / "bench.json"
    try:
        proc = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--mosquitto", str(mosquitto),
             "--database-url", POSTGRES_ADMIN_URL, "--json", str(result_file)],
            cwd=REPO, capture_output=True, text=True, timeout=240,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bench/ingest.py --quick did not finish within {exc.timeout:.0f} s:\n{exc.stderr}")

    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    for figure in ("bare subscriber", "ingest, committed events", "ingest / bare subscriber", "p50", "p99",
                   "batch_max", "Mosquitto", "PostgreSQL", "cores"):
        assert figure in proc.stdout, f"{figure!r} missing from the benchmark's table:\n{proc.stdout}"

    report = json.loads(result_file.read_text())
    assert report["baseline"]["complete"] and report["baseline"]["rate"] > 0
    assert report["ingest"]["complete"] and report["ingest"]["rate"] > 0
    assert report["ingest"]["rejected"] == 0
    latency = report["latency"]
    assert latency["measured"] == latency["alarms"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]


def test_dashboard_benchmark_quick_run_completes_and_prints_its_figures() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "dashboard.py"), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    for figure in ("/healthz round trip", "queue fragment", "alarm commit -> event", "each renders",
                   "shared render", "p95 ratio"):
        assert figure in proc.stdout, f"{figure!r} missing from the benchmark's output:\n{proc.stdout}"
