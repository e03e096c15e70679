"""The FastAPI application: routers of every domain, health and metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import __version__, gauges
from alarmcentre.clients.views import router as clients_router
from alarmcentre.config import Settings
from alarmcentre.contacts.views import router as contacts_router
from alarmcentre.deadletters.views import router as deadletters_router
from alarmcentre.devices.publisher import ConfigPublisher
from alarmcentre.devices.views import router as devices_router
from alarmcentre.dispatch.views import router as dispatch_router
from alarmcentre.health import HealthCheck, HealthChecks, database_check, liveness
from alarmcentre.incidents.views import router as incidents_router
from alarmcentre.municipalities.views import router as municipalities_router
from alarmcentre.reports.views import router as reports_router
from alarmcentre.tasks.views import router as tasks_router
from alarmcentre.users.views import router as auth_router
from alarmcentre.users.views import throttles as throttles_router
from alarmcentre.visits.views import integration_router
from alarmcentre.visits.views import router as visits_router
from alarmcentre.voice.views import api as voice_api_router
from alarmcentre.voice.views import router as voice_router
from alarmcentre.workorders.views import router as workorders_router

log = logging.getLogger(__name__)


def create_app(
    *, settings: Settings, session_factory: sessionmaker[Session],
    health_checks: HealthChecks | dict[str, HealthCheck] | None = None, config_publisher: ConfigPublisher | None = None,
) -> FastAPI:
    """`config_publisher` publishes device configurations when a technician saves one; without it
    they are saved and the scheduler publishes them. `health_checks`: the readiness checks of the parts
    this process runs besides the API ("database" is added when missing); more can be added later
    through `app.state.health.add(name, check)`."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import alarmcentre_dashboard as dashboard

        await dashboard.startup(app)
        yield
        await dashboard.shutdown(app)

    # FastAPIOffline: /docs and /redoc with their scripts served from the package, not a public CDN
    # (alarm centres often run on networks without internet, where /docs would be a blank page).
    app = FastAPIOffline(
        lifespan=lifespan,
        title="alarmcentre",
        version=__version__,
        description="Safety-button alarm monitoring centre: clients, devices, incidents.",
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.config_publisher = config_publisher
    checks = health_checks if isinstance(health_checks, HealthChecks) else HealthChecks(health_checks)
    if "database" not in checks:
        checks.add("database", database_check(session_factory))
    app.state.health = checks

    for router in (auth_router, throttles_router, municipalities_router, clients_router, contacts_router,
                   devices_router, incidents_router, deadletters_router, dispatch_router, tasks_router,
                   workorders_router, visits_router, integration_router, voice_router, voice_api_router,
                   reports_router):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: 200 while this process answers (alarmcentre/health.py)."""
        return liveness()

    @app.get("/readyz", tags=["health"], responses={503: {"description": "a check fails; the body names it"}})
    def readyz() -> JSONResponse:
        """Readiness: 200 when every check of the parts this process runs passes (database; broker,
        ingest and scheduler where they run here), else 503 naming each check and what is wrong."""
        ready, body = checks.run()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    def prometheus_metrics() -> Response:
        _refresh_incident_gauges(session_factory)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # The operator console, a client of the same domain services (dashboard/): pages, live feed, static files.
    import alarmcentre_dashboard as dashboard

    dashboard.install(app, settings=settings, session_factory=session_factory)
    return app


def _refresh_incident_gauges(factory: sessionmaker[Session]) -> None:
    try:
        gauges.refresh_incident_gauges(factory)
    except Exception as exc:
        # /metrics must still answer; the database readiness check tells the rest.
        log.warning("metrics: could not count open incidents: %s", type(exc).__name__)
