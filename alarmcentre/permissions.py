"""Who may do what: one table of capabilities for the API and the dashboard.

Every route of the application (API and dashboard) is given one domain capability here, and
every capability the callers allowed. `tests/test_permissions.py` calls every route as every
caller and fails when the answer differs from this table, when a route has no capability, or
when an API route and a dashboard route of one capability let different callers in. The table
in docs/security.md ("Who may do what") is `markdown_table()` (the test compares them):

    python -m alarmcentre.permissions

The role checks themselves stay where they are (`alarmcentre/api_deps.py` `require_roles`,
`dashboard/auth.py` `roles`, and the rules of `alarmcentre/clients/access.py`); this module
is what they are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

from alarmcentre.users.models import Role

NOBODY = "no login"
INTEGRATION = "integration key"
STAFF_ROLES = (Role.OPERATOR.value, Role.SUPERVISOR.value, Role.TECHNICIAN.value, Role.ADMIN.value)
CALLERS = (NOBODY, *STAFF_ROLES, INTEGRATION)

_ALL = frozenset(CALLERS)
_STAFF = frozenset(STAFF_ROLES)
_INCIDENTS = frozenset({"operator", "supervisor", "admin"})
_SUPERVISING = frozenset({"supervisor", "admin"})
_DEVICES = frozenset({"technician", "admin"})


@dataclass(frozen=True)
class Capability:
    allowed: frozenset[str]
    note: str = ""


CAPABILITIES: dict[str, Capability] = {
    "log in, front door, system banner": Capability(_ALL, "the API's login form, `/` and `/ui/system`"),
    "own session": Capability(_STAFF, "who am I, log out, the dashboard's live feed"),
    "manage login throttles": Capability(_SUPERVISING),
    "read municipalities": Capability(_STAFF),
    "create and change municipalities": Capability(frozenset({"admin"})),
    "read client records": Capability(_STAFF, "technicians get `medical_notes: null`"),
    "read client files, contacts and plans": Capability(
        _INCIDENTS, "medical notes, contacts, response plans, shared resources, a client's incidents"),
    "edit clients, contacts and plans": Capability(_SUPERVISING, "the dashboard's form is the next row"),
    "edit clients on the dashboard (with access information)": Capability(
        frozenset({"admin"}), "the dashboard's client form also writes the door codes"),
    "reveal access information": Capability(
        frozenset({"operator", "supervisor"}), "and only the owner of an open alarm incident"),
    "read the reveal audit": Capability(_SUPERVISING),
    "read a client's home-care visits": Capability(_STAFF, "docs/visits.md"),
    "read devices": Capability(_STAFF, "also the monthly-test reminders"),
    "edit devices": Capability(_DEVICES, "register, change, assign, swap, program"),
    "work orders": Capability(_DEVICES, "read, open, assign, note, finish"),
    "read dead letters": Capability(frozenset({"supervisor", "technician", "admin"})),
    "read incidents": Capability(_INCIDENTS, "the queue, incidents, their steps, the outcome codes"),
    "act on incidents": Capability(_INCIDENTS, "operators on the incidents they own; supervisors, admins on any"),
    "read texts": Capability(_INCIDENTS),
    "simulate SMS replies and calls": Capability(_INCIDENTS, "the outbox only"),
    "operator tasks": Capability(_INCIDENTS, "the task queue and welfare checks"),
    "manage shared resources": Capability(frozenset({"admin"})),
    "read reports": Capability(_SUPERVISING),
    "import and export visits": Capability(frozenset({INTEGRATION}), "nothing else opens these routes"),
}

# (method, path) -> capability. Paths as the application declares them.
ROUTES: dict[tuple[str, str], str] = {
    # -- the API --
    ("POST", "/api/v1/auth/token"): "log in, front door, system banner",
    ("POST", "/api/v1/auth/logout"): "own session",
    ("GET", "/api/v1/auth/me"): "own session",
    ("GET", "/api/v1/login-throttles"): "manage login throttles",
    ("DELETE", "/api/v1/login-throttles"): "manage login throttles",
    ("GET", "/api/v1/municipalities"): "read municipalities",
    ("POST", "/api/v1/municipalities"): "create and change municipalities",
    ("PATCH", "/api/v1/municipalities/{municipality_id}"): "create and change municipalities",
    ("GET", "/api/v1/clients"): "read client records",
    ("POST", "/api/v1/clients"): "edit clients, contacts and plans",
    ("GET", "/api/v1/clients/{client_id}"): "read client records",
    ("PATCH", "/api/v1/clients/{client_id}"): "edit clients, contacts and plans",
    ("GET", "/api/v1/clients/{client_id}/contacts"): "read client files, contacts and plans",
    ("POST", "/api/v1/clients/{client_id}/contacts"): "edit clients, contacts and plans",
    ("GET", "/api/v1/contacts/{contact_id}"): "read client files, contacts and plans",
    ("PATCH", "/api/v1/contacts/{contact_id}"): "edit clients, contacts and plans",
    ("DELETE", "/api/v1/contacts/{contact_id}"): "edit clients, contacts and plans",
    ("GET", "/api/v1/clients/{client_id}/plan"): "read client files, contacts and plans",
    ("PUT", "/api/v1/clients/{client_id}/plan"): "edit clients, contacts and plans",
    ("GET", "/api/v1/resources"): "read client files, contacts and plans",
    ("POST", "/api/v1/resources"): "manage shared resources",
    ("PUT", "/api/v1/resources/{resource_id}"): "manage shared resources",
    ("GET", "/api/v1/clients/{client_id}/visits"): "read a client's home-care visits",
    ("GET", "/api/v1/clients/{client_id}/welfare"): "operator tasks",
    ("GET", "/api/v1/devices"): "read devices",
    ("POST", "/api/v1/devices"): "edit devices",
    ("GET", "/api/v1/devices/{serial}"): "read devices",
    ("PATCH", "/api/v1/devices/{serial}"): "edit devices",
    ("POST", "/api/v1/devices/{serial}/assign"): "edit devices",
    ("GET", "/api/v1/devices/{serial}/events"): "read devices",
    ("POST", "/api/v1/devices/{serial}/swap"): "edit devices",
    ("GET", "/api/v1/devices/{serial}/assignments"): "read devices",
    ("GET", "/api/v1/devices/{serial}/battery"): "read devices",
    ("GET", "/api/v1/devices/{serial}/signal"): "read devices",
    ("GET", "/api/v1/devices/{serial}/config"): "read devices",
    ("PUT", "/api/v1/devices/{serial}/config"): "edit devices",
    ("GET", "/api/v1/monthly-test-due"): "read devices",
    ("GET", "/api/v1/work-orders"): "work orders",
    ("POST", "/api/v1/work-orders"): "work orders",
    ("GET", "/api/v1/work-orders/{order_id}"): "work orders",
    ("POST", "/api/v1/work-orders/{order_id}/assign"): "work orders",
    ("POST", "/api/v1/work-orders/{order_id}/notes"): "work orders",
    ("POST", "/api/v1/work-orders/{order_id}/done"): "work orders",
    ("GET", "/api/v1/dead-letters"): "read dead letters",
    ("GET", "/api/v1/incidents"): "read incidents",
    ("GET", "/api/v1/incidents/{incident_id}"): "read incidents",
    ("GET", "/api/v1/incidents/{incident_id}/steps"): "read incidents",
    ("GET", "/api/v1/outcomes"): "read incidents",
    ("POST", "/api/v1/incidents/{incident_id}/acknowledge"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/calls"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/steps/start"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/notify"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/emergency"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/notes"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/handover"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/resolve"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/steps/{step_id}/answer"): "act on incidents",
    ("POST", "/api/v1/incidents/{incident_id}/reopen"): "act on incidents",
    ("GET", "/api/v1/sms"): "read texts",
    ("POST", "/api/v1/sms/simulate-reply"): "simulate SMS replies and calls",
    ("POST", "/api/v1/voice/simulate-call"): "simulate SMS replies and calls",
    ("GET", "/api/v1/tasks"): "operator tasks",
    ("POST", "/api/v1/tasks/{task_id}/claim"): "operator tasks",
    ("POST", "/api/v1/tasks/{task_id}/complete"): "operator tasks",
    ("GET", "/api/v1/reports/answer-times"): "read reports",
    ("POST", "/api/v1/integration/batch"): "import and export visits",
    ("POST", "/api/v1/integration/visits.csv"): "import and export visits",
    ("GET", "/api/v1/integration/visits/export"): "import and export visits",
    # -- the dashboard --
    ("GET", "/"): "log in, front door, system banner",
    ("GET", "/ui/system"): "log in, front door, system banner",
    ("GET", "/ui/events"): "own session",
    ("GET", "/ui/queue"): "read incidents",
    ("GET", "/ui/queue/rows"): "read incidents",
    ("GET", "/ui/alarms"): "read incidents",
    ("GET", "/ui/incidents"): "read incidents",
    ("GET", "/ui/incidents/{incident_id}"): "read incidents",
    ("GET", "/ui/incidents/{incident_id}/live"): "read incidents",
    ("POST", "/ui/incidents/{incident_id}/acknowledge"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/call"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/voice/answer"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/voice/call"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/steps/{step_id}/start"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/steps/{step_id}/notify"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/steps/{step_id}/answer"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/emergency"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/note"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/handover"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/resolve"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/reopen"): "act on incidents",
    ("POST", "/ui/incidents/{incident_id}/reveal"): "reveal access information",
    ("GET", "/ui/clients"): "read client files, contacts and plans",
    ("GET", "/ui/clients/{client_id}"): "read client files, contacts and plans",
    ("POST", "/ui/clients/{client_id}"): "edit clients on the dashboard (with access information)",
    ("GET", "/ui/sms"): "read texts",
    ("POST", "/ui/sms/simulate-reply"): "simulate SMS replies and calls",
    ("POST", "/ui/voice/simulate-call"): "simulate SMS replies and calls",
    ("GET", "/ui/audit/reveals"): "read the reveal audit",
    ("GET", "/ui/reports/answer-times"): "read reports",
    ("GET", "/ui/reports/answer-times.csv"): "read reports",
    ("GET", "/ui/devices"): "read devices",
    ("GET", "/ui/devices/{serial}"): "read devices",
    ("POST", "/ui/devices/{serial}/config"): "edit devices",
    ("POST", "/ui/devices/{serial}/assign"): "edit devices",
    ("POST", "/ui/devices/{serial}/unassign"): "edit devices",
    ("POST", "/ui/devices/{serial}/swap"): "edit devices",
    ("POST", "/ui/devices/{serial}/status"): "edit devices",
    ("POST", "/ui/devices/{serial}/workorders"): "work orders",
    ("GET", "/ui/workorders"): "work orders",
    ("GET", "/ui/workorders/{order_id}"): "work orders",
    ("POST", "/ui/workorders/{order_id}/assign"): "work orders",
    ("POST", "/ui/workorders/{order_id}/notes"): "work orders",
    ("POST", "/ui/workorders/{order_id}/done"): "work orders",
}


def is_dashboard(path: str) -> bool:
    return not path.startswith("/api/")


def allowed(method: str, path: str) -> frozenset[str]:
    return CAPABILITIES[ROUTES[(method, path)]].allowed


def markdown_table() -> str:
    """The capability × caller table of docs/security.md, with where each capability is served."""
    head = ["capability", *CALLERS, "served by", "note"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for name, capability in CAPABILITIES.items():
        paths = [path for (_m, path), cap in ROUTES.items() if cap == name]
        served = " and ".join(label for label, present in (
            ("API", any(not is_dashboard(p) for p in paths)), ("dashboard", any(is_dashboard(p) for p in paths)))
            if present)
        marks = ["yes" if caller in capability.allowed else "–" for caller in CALLERS]
        lines.append("| " + " | ".join([name, *marks, served, capability.note]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
