"""The operator dashboard: server-rendered pages (Jinja2), a live feed (SSE), Latvian and English.

`install(app)` adds it to the API application: the pages, the feed, the static files and the
error pages of the dashboard's own routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from alarmcentre.canary import CanaryWatch
from alarmcentre.clients.access import AccessCipher
from alarmcentre.config import Settings
from alarmcentre.users.models import Role
from alarmcentre_dashboard import login, operator, records, reports, technician
from alarmcentre_dashboard.auth import BadCsrf, LoginRequired, NotAllowed, user_from_cookie
from alarmcentre_dashboard.i18n import WEB_DIR
from alarmcentre_dashboard.live import LiveFeed, SharedRendering, event_stream
from alarmcentre_dashboard.render import render

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

DASHBOARD_PREFIXES = ("/ui", "/login", "/logout", "/language")


def _is_fragment(request: Request) -> bool:
    """Requests of the page's own script (fragments, the feed) get status codes, not redirects."""
    return request.headers.get("X-Requested-With") == "fetch" or request.url.path == "/ui/events"


async def startup(app: FastAPI) -> None:
    """With a running server: the feed polls even with no browser connected (the canary)."""
    app.state.live_feed.start()


async def shutdown(app: FastAPI) -> None:
    await app.state.live_feed.stop()


def install(app: FastAPI, *, settings: Settings, session_factory: sessionmaker[Session]) -> None:
    # The canary is watched where the dashboards' feed runs: its test alarm must reach that far.
    canary = CanaryWatch(settings) if settings.canary_mqtt_url else None
    app.state.live_feed = feed = LiveFeed(session_factory, poll_s=settings.live_poll_s, canary=canary)
    if canary is not None and "canary" not in app.state.health:
        # (An app made again over the same checks, as a restarted server in the tests, keeps the first.)
        app.state.health.add("canary", canary.readiness)
    app.state.access_cipher = AccessCipher(settings)
    app.state.shared_rendering = SharedRendering()
    for router in (login.router, operator.router, records.router, reports.router, technician.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")

    @app.get("/ui/events", include_in_schema=False)
    async def live_events(request: Request) -> Response:
        """Server-Sent Events: hello on (re)connection, then a change event whenever something changed."""
        from starlette.concurrency import run_in_threadpool

        def who() -> Role | None:
            with session_factory() as session:
                user = user_from_cookie(session, request)
                return user.role if user is not None else None

        role = await run_in_threadpool(who)
        if role is None:
            return JSONResponse({"detail": "not logged in"}, status_code=401)
        # Pings as named events (not comments), so the page's script hears them: silence means dead.
        return EventSourceResponse(event_stream(feed, is_disconnected=request.is_disconnected), ping=5,
                                   ping_message_factory=lambda: ServerSentEvent(event="ping", data="-"),
                                   headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/ui/system", include_in_schema=False)
    def system_state() -> JSONResponse:
        """What the banner shows: the database and the canary as this process sees them (no login:
        it names no person, and a wall screen or a probe may read it)."""
        return JSONResponse(feed.system_state(), headers={"Cache-Control": "no-store"})

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if _is_fragment(request):
            return JSONResponse({"detail": "not logged in"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={target}" if request.method == "GET" else "/login", status_code=303)

    @app.exception_handler(NotAllowed)
    async def not_allowed(request: Request, _exc: NotAllowed) -> Response:
        return render(request, "error.html", {"code": 403}, status_code=403)

    @app.exception_handler(BadCsrf)
    async def bad_csrf(request: Request, _exc: BadCsrf) -> Response:
        return render(request, "error.html", {"code": "csrf"}, status_code=403)

    @app.exception_handler(StarletteHTTPException)
    async def dashboard_http_errors(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith(DASHBOARD_PREFIXES) and not _is_fragment(request):
            return render(request, "error.html", {"code": exc.status_code}, status_code=exc.status_code)
        return await http_exception_handler(request, exc)
