"""Liveness and readiness of a process.

- `/healthz` (liveness): the process answers. Always 200 with a small JSON body; a supervisor that
  restarts on failure restarts only a process that no longer answers at all.
- `/readyz` (readiness): the process can do its work now. 200 when every registered check passes,
  else 503; the body names each check and what is wrong.

Readiness is a registry of named checks, so a part added later registers its own with one call,
e.g. the canary: `health.add("canary", freshness_check(lambda: canary.last_success, max_age_s=300,
what="canary alarm"))`. A check returns None when healthy, else a short text saying what is wrong;
a check that raises counts as failing (the exception type is the answer), so one broken check
cannot take the endpoint down.

Processes without the API (standalone ingest and scheduler) serve the same two paths next to
/metrics with `start_http_server`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import __version__

if TYPE_CHECKING:
    from alarmcentre.ingest.consumer import Ingest, IngestConsumer

log = logging.getLogger(__name__)

# A named check: None when healthy, else what is wrong.
HealthCheck = Callable[[], str | None]
OK = "ok"


class HealthChecks:
    """The readiness checks of one process, by name."""

    def __init__(self, checks: Mapping[str, HealthCheck] | None = None) -> None:
        self._checks: dict[str, HealthCheck] = {}
        for name, check in (checks or {}).items():
            self.add(name, check)

    def add(self, name: str, check: HealthCheck) -> None:
        # Two parts claiming one name would hide one of them: refuse rather than replace.
        if name in self._checks:
            raise ValueError(f"a readiness check named {name!r} exists already")
        self._checks[name] = check

    def __contains__(self, name: object) -> bool:
        return name in self._checks

    def __iter__(self) -> Iterator[str]:
        return iter(self._checks)

    def run(self) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON body): the body is {"status": "ok"|"failing", "checks": {name: "ok"|problem}}."""
        results: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                problem = check()
            except Exception as exc:  # a failing check is an answer, not an error of the endpoint
                log.warning("readiness check %s raised %s", name, type(exc).__name__)
                problem = f"check failed: {type(exc).__name__}"
            results[name] = OK if problem is None else problem
        ready = all(value == OK for value in results.values())
        return ready, {"status": OK if ready else "failing", "checks": results}


def liveness() -> dict[str, Any]:
    return {"status": OK, "version": __version__}


# -- checks ----------------------------------------------------------------------------------


def database_check(factory: sessionmaker[Session]) -> HealthCheck:
    def check() -> str | None:
        try:
            with factory() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # any failure is the answer, not an error of the check
            return f"unreachable: {type(exc).__name__}"
        return None

    return check


SESSION_LOST_UNREADY_S = 600.0  # how long /readyz names a lost broker session


def ingest_checks(consumer: Ingest | IngestConsumer, *, max_lag_s: float) -> dict[str, HealthCheck]:
    """"broker": the ingest holds its broker connection, and has not come back to a lost session
    in the last SESSION_LOST_UNREADY_S; "ingest": it commits, and nothing it received has waited
    longer than `max_lag_s` uncommitted."""

    def broker() -> str | None:
        if not consumer.connected:
            return "ingest not connected to the broker"
        lost = consumer.session_lost_at
        if lost is not None and time.monotonic() - lost < SESSION_LOST_UNREADY_S:
            return (f"the broker had lost the ingest's persistent session {time.monotonic() - lost:.0f} s ago: "
                    "messages queued while the ingest was away may be lost")
        return None

    def ingest() -> str | None:
        if not consumer.worker_alive:
            return "ingest worker thread has stopped"
        if not consumer.database_ok:
            return "ingest cannot commit to the database (the broker holds the messages)"
        waited = consumer.waiting_age()
        if waited is not None and waited > max_lag_s:
            return (f"oldest uncommitted message has waited {waited:.0f} s (bound {max_lag_s:g} s); "
                    f"{consumer.pending} waiting")
        return None

    return {"broker": broker, "ingest": ingest}


def freshness_check(last_success: Callable[[], float | None], *, max_age_s: float, what: str,
                    since: float | None = None) -> HealthCheck:
    """Fails when `last_success()` (Unix time, or None for never) is older than `max_age_s`. Until the
    first success, `since` (Unix time, default: now) counts instead, so a process is not unready
    during its first period."""
    started = time.time() if since is None else since

    def check() -> str | None:
        last = last_success()
        age = time.time() - (started if last is None else last)
        if age <= max_age_s:
            return None
        if last is None:
            return f"no {what} yet, {age:.0f} s after start (bound {max_age_s:g} s)"
        return f"last {what} {age:.0f} s ago (bound {max_age_s:g} s)"

    return check


# -- /healthz, /readyz and /metrics for processes without the API ---------------------------


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape must not keep the process from exiting


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per probe and scrape would bury the logs


StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def health_wsgi_app(checks: HealthChecks) -> WsgiApp:
    """/healthz and /readyz as above; every other path is Prometheus's /metrics, as before."""
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _json(start_response, 200, liveness())
        if path == "/readyz":
            ready, body = checks.run()
            return _json(start_response, 200 if ready else 503, body)
        return metrics_app(environ, start_response)

    return app


def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def start_http_server(host: str, port: int, checks: HealthChecks) -> WSGIServer:
    """Serve /healthz, /readyz and /metrics in a daemon thread; `port` 0 picks a free one
    (`server.server_port`). Stop with `server.shutdown()`."""
    server = make_server(host, port, health_wsgi_app(checks), server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="health-http", daemon=True).start()
    return server
