"""The FastAPI application: routers of every domain, health and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import __version__, metrics
from alarmcentre.clients.views import router as clients_router
from alarmcentre.config import Settings
from alarmcentre.contacts.views import router as contacts_router
from alarmcentre.deadletters.views import router as deadletters_router
from alarmcentre.devices.publisher import ConfigPublisher
from alarmcentre.devices.views import router as devices_router
from alarmcentre.dispatch.views import router as dispatch_router
from alarmcentre.incidents.models import Incident, IncidentStatus
from alarmcentre.incidents.views import router as incidents_router
from alarmcentre.municipalities.views import router as municipalities_router
from alarmcentre.tasks.views import router as tasks_router
from alarmcentre.users.views import router as auth_router
from alarmcentre.visits.views import integration_router
from alarmcentre.visits.views import router as visits_router
from alarmcentre.workorders.views import router as workorders_router

log = logging.getLogger(__name__)
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"

# A named check: returns None when healthy, else what is wrong.
HealthCheck = Callable[[], str | None]


def create_app(
    *, settings: Settings, session_factory: sessionmaker[Session], health_checks: dict[str, HealthCheck] | None = None,
    config_publisher: ConfigPublisher | None = None,
) -> FastAPI:
    """`config_publisher` publishes device configurations when a technician saves one; without it
    they are saved and the scheduler publishes them."""
    app = FastAPI(
        title="alarmcentre",
        version=__version__,
        description="Safety-button alarm monitoring centre: clients, devices, incidents.",
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.config_publisher = config_publisher
    checks: dict[str, HealthCheck] = {"database": lambda: _database_check(session_factory)}
    checks.update(health_checks or {})

    for router in (auth_router, municipalities_router, clients_router, contacts_router, devices_router,
                   incidents_router, deadletters_router, dispatch_router, tasks_router, workorders_router,
                   visits_router, integration_router):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """200 when every part this process runs is working, else 503 naming what is not."""
        results: dict[str, Any] = {}
        for name, check in checks.items():
            problem = check()
            results[name] = "ok" if problem is None else problem
        healthy = all(value == "ok" for value in results.values())
        return JSONResponse({"status": "ok" if healthy else "failing", "checks": results},
                            status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    def prometheus_metrics() -> Response:
        _refresh_incident_gauges(session_factory)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if (DASHBOARD_DIR / "index.html").exists():
        app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/dashboard/")

    return app


def _database_check(factory: sessionmaker[Session]) -> str | None:
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure is the answer, not an error of the check
        return f"unreachable: {type(exc).__name__}"
    return None


def _refresh_incident_gauges(factory: sessionmaker[Session]) -> None:
    try:
        with factory() as session:
            rows = session.execute(
                select(Incident.status, func.count()).where(Incident.status != IncidentStatus.RESOLVED)
                .group_by(Incident.status)
            ).all()
        counts = {status: number for status, number in rows}
    except Exception as exc:
        # /metrics must still answer; the database health check tells the rest.
        log.warning("metrics: could not count open incidents: %r", exc)
        return
    for status in (IncidentStatus.OPEN, IncidentStatus.ACKNOWLEDGED):
        metrics.OPEN_INCIDENTS.labels(status.value).set(counts.get(status, 0))
