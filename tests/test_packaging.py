"""The package list in pyproject.toml names every package, so a plain (non-editable) install is whole."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_alarmcentre_package_is_listed() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "alarmcentre").rglob("__init__.py")}
    # The console lives in dashboard/ and installs as alarmcentre_dashboard (package-dir).
    assert setuptools["package-dir"]["alarmcentre_dashboard"] == "dashboard"
    on_disk |= {".".join(("alarmcentre_dashboard", *init.parent.relative_to(REPO / "dashboard").parts))
                for init in (REPO / "dashboard").rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert {"alarmcentre_sim", "alarmcentre_dashboard"} <= listed


def test_the_built_wheel_holds_everything_and_runs(tmp_path: Path) -> None:
    """A plain install of the wheel (not this checkout) migrates a database and serves a dashboard page
    in both languages: migrations, templates, static files and translations are in it."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    noise = [line for line in (build.stdout + build.stderr).splitlines()
             if re.search(r"warning|deprecat|would be ignored", line, re.I) and "WARNING: Location" not in line]
    assert noise == [], "the build warns:\n" + "\n".join(noise)
    (wheel,) = (tmp_path / "dist").glob("alarmcentre-*.whl")
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    # The dependencies come from this environment, the project only from the wheel.
    env = {**os.environ, "PYTHONPATH": str(site), "ALARMCENTRE_DATA_DIR": str(tmp_path / "data")}
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    help_text = run([sys.executable, "-m", "alarmcentre.cli", "--help"])
    assert help_text.returncode == 0 and "ingest" in help_text.stdout, help_text
    upgraded = run([sys.executable, "-m", "alarmcentre.cli", "db", "upgrade"])
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    page = run([sys.executable, "-c", _SERVE_LOGIN_PAGE])
    assert page.returncode == 0, page.stderr[-3000:]
    origin, console, latvian, english, style = page.stdout.split("\n")[:5]
    assert origin.startswith(str(site)), f"imported from {origin}, not from the wheel"
    assert console.startswith(str(site)), f"dashboard imported from {console}, not from the wheel"
    assert latvian == "200 Pieslēgties" and english == "200 Log in" and style == "200", page.stdout


_SERVE_LOGIN_PAGE = """
import alarmcentre
import alarmcentre_dashboard
from fastapi.testclient import TestClient
from alarmcentre.app import create_app
from alarmcentre.config import Settings
from alarmcentre.runtime import Database
settings = Settings()
db = Database.open(settings)
client = TestClient(create_app(settings=settings, session_factory=db.sessions))
print(alarmcentre.__file__)
print(alarmcentre_dashboard.__file__)
for language in ("lv", "en"):
    client.cookies.set("ac_lang", language)
    page = client.get("/login")
    title = "Pieslēgties" if "Pieslēgties" in page.text else ("Log in" if "Log in" in page.text else "?")
    print(page.status_code, title)
print(client.get("/static/style.css").status_code)
"""
