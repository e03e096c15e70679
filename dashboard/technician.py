"""The technicians' pages: the device inventory, one device (state, history, programming) and work orders.

Roles follow the API (api_deps): all staff may read devices, as GET /api/v1/devices allows;
technicians and admins change them and are the only ones who see work orders at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from alarmcentre import clock
from alarmcentre.api_deps import DEVICE_EDITORS, INCIDENT_ROLES, STAFF, SessionDep
from alarmcentre.clients import service as clients
from alarmcentre.devices import service as devices
from alarmcentre.devices.catalogue import spec_for
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.devices.publisher import save_and_publish_config
from alarmcentre.devices.schemas import AssignIn, DevicePatch, SwapIn
from alarmcentre.schemas import MAX_ID
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre.workorders import service as workorders
from alarmcentre.workorders.models import WorkOrder, WorkOrderKind, WorkOrderStatus
from alarmcentre.workorders.schemas import DoneIn, NoteIn, WorkOrderIn
from alarmcentre_dashboard.auth import check_csrf, roles
from alarmcentre_dashboard.render import render, translate

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

router = APIRouter(include_in_schema=False)
Reader = Annotated[User, Depends(roles(*STAFF))]
Editor = Annotated[User, Depends(roles(*DEVICE_EDITORS))]
Csrf = Depends(check_csrf)
LIST_LIMIT = 300
CHART_READINGS = 200  # the sparkline's history; the table below it shows the newest few
TABLE_READINGS = 15
SETTING_PREFIX = "cfg_"  # form field names of the settings: never clash with csrf or version


def _clean(text: str, limit: int = 100) -> str:
    return text.strip()[:limit].replace("\x00", "")


def _number(text: str) -> int | None:
    """A database id typed by a person, or None (str.isdigit also accepts "²", which int() refuses)."""
    text = text.strip()
    return int(text) if re.fullmatch(r"[0-9]{1,10}", text) and 0 < int(text) <= MAX_ID else None


def _is_editor(user: User) -> bool:
    return user.role in DEVICE_EDITORS


# -- refusals: explained on the page, nothing changed ----------------------------------------


class Refused(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
                     for e in exc.errors())


@contextmanager
def _refusals(session: Session) -> Iterator[None]:
    """The action runs in a savepoint: refused half-way (a swap whose configuration does not fit), it
    leaves nothing behind. Order matters: the conflicts and ValidationError are ValueErrors too."""
    try:
        with session.begin_nested():
            yield
    except Refused:
        raise
    except (devices.DeviceConflict, workorders.Conflict) as exc:
        raise Refused(str(exc), status.HTTP_409_CONFLICT) from exc
    except ValidationError as exc:
        raise Refused(_problems(exc), status.HTTP_422_UNPROCESSABLE_CONTENT) from exc
    except (LookupError, ValueError) as exc:
        raise Refused(str(exc), status.HTTP_422_UNPROCESSABLE_CONTENT) from exc


# -- settings of a device model, as form fields ------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting of a model's configuration schema, as the form shows it."""

    key: str
    kind: str  # number, list, choice or text
    minimum: int | None = None
    maximum: int | None = None
    max_items: int | None = None
    choices: tuple[str, ...] = ()


def settings_of(model: str) -> list[Setting]:
    """From the JSON schema of the model's configuration: a new setting in the catalogue gets its field."""
    schema = spec_for(model).config_schema.model_json_schema()
    defs = schema.get("$defs", {})
    found = []
    for key, prop in schema.get("properties", {}).items():
        options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"] or [prop]
        option = options[0]
        if "$ref" in option:
            option = defs.get(option["$ref"].rsplit("/", 1)[-1], {})
        if "enum" in option:
            found.append(Setting(key, "choice", choices=tuple(str(c) for c in option["enum"])))
        elif option.get("type") == "integer":
            found.append(Setting(key, "number", minimum=option.get("minimum"), maximum=option.get("maximum")))
        elif option.get("type") == "array":
            found.append(Setting(key, "list", max_items=option.get("maxItems")))
        else:
            found.append(Setting(key, "text"))
    return found


def shown(value: Any) -> str:
    """A setting's value as typed in the form (lists one per comma)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def parse_settings(request: Request, settings: Sequence[Setting],
                   form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The configuration a form describes (an empty field: not set) and the fields it could not read."""
    config: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for setting in settings:
        raw = form.get(SETTING_PREFIX + setting.key, "").strip()
        if not raw:
            continue
        if setting.kind == "number":
            if not re.fullmatch(r"-?\d{1,9}", raw):
                errors[setting.key] = translate(request, "Enter a whole number.")
                continue
            config[setting.key] = int(raw)
        elif setting.kind == "list":
            config[setting.key] = [item.strip() for item in re.split(r"[,;\n]", raw) if item.strip()]
        else:
            config[setting.key] = raw
    return config, errors


def field_errors(exc: ValueError) -> dict[str, str]:
    """The catalogue's ValidationError, per setting (a list item says which one)."""
    cause = exc.__cause__
    if not isinstance(cause, ValidationError):
        return {}
    errors: dict[str, str] = {}
    for error in cause.errors():
        loc = error["loc"]
        key = str(loc[0]) if loc else ""
        where = f"{int(loc[1]) + 1}: " if len(loc) > 1 and isinstance(loc[1], int) else ""
        errors[key] = (errors[key] + "; " if key in errors else "") + where + error["msg"]
    return errors


# -- history charts -------------------------------------------------------------------------


def step_line(points: Sequence[tuple[datetime, float]], *, low: float, high: float, until: datetime,
              width: int = 300, height: int = 60) -> str:
    """SVG polyline points: a value holds until the next reading (the history keeps changes only)."""
    if not points:
        return ""
    start = points[0][0]
    end = max(until, points[-1][0])
    span = max((end - start).total_seconds(), 1.0)
    scale = max(high - low, 1.0)

    def x(moment: datetime) -> float:
        return round((moment - start).total_seconds() / span * width, 1)

    def y(value: float) -> float:
        return round(height - (min(max(value, low), high) - low) / scale * height, 1)

    coords: list[tuple[float, float]] = []
    for index, (moment, value) in enumerate(points):
        if index:
            coords.append((x(moment), y(points[index - 1][1])))
        coords.append((x(moment), y(value)))
    coords.append((float(width), y(points[-1][1])))
    return " ".join(f"{a},{b}" for a, b in coords)


def _charts(request: Request, session: Session, device: Device) -> dict[str, Any]:
    now = clock.now()
    battery = list(devices.battery_history(session, device=device, limit=CHART_READINGS))
    signal = list(devices.signal_history(session, device=device, limit=CHART_READINGS))
    low_percent = request.app.state.settings.battery_low_percent
    rssi = [r.rssi for r in signal]
    rssi_low, rssi_high = (min(rssi) - 5, max(max(rssi) + 5, min(rssi) + 15)) if rssi else (-120, -40)
    return {
        "battery": battery[:TABLE_READINGS], "battery_count": len(battery),
        "battery_line": step_line([(r.at, r.level) for r in reversed(battery)], low=0, high=100, until=now),
        "battery_threshold": round(60 - low_percent / 100 * 60, 1), "battery_low_percent": low_percent,
        "battery_since": battery[-1].at if battery else None,
        "signal": signal[:TABLE_READINGS], "signal_count": len(signal),
        "signal_line": step_line([(r.at, r.rssi) for r in reversed(signal)], low=rssi_low, high=rssi_high,
                                 until=now),
        "signal_range": (rssi_low, rssi_high), "signal_since": signal[-1].at if signal else None,
    }


# -- the inventory ---------------------------------------------------------------------------


@router.get("/ui/devices")
def device_list(request: Request, session: SessionDep, _user: Reader, q: str = "", state: str = "") -> Response:
    text = _clean(q, 64)
    chosen = DeviceStatus(state) if state in {s.value for s in DeviceStatus} else None
    rows = [{"device": row.device, "client": row.client, "programming": devices.config_state(row.device).value}
            for row in devices.inventory(session, search=text, status=chosen, limit=LIST_LIMIT)]
    counts = devices.inventory_counts(session)
    return render(request, "devices.html", {
        "rows": rows, "q": text, "state": chosen.value if chosen else "", "statuses": list(DeviceStatus),
        "counts": {s.value: counts.get(s, 0) for s in DeviceStatus}, "total": sum(counts.values()),
        "limit": LIST_LIMIT,
    })


def _device(session: Session, serial: str, *, lock: bool = False) -> Device:
    device = devices.get_by_serial(session, serial)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such device")
    return devices.lock(session, device) if lock else device


def _config_rows(session: Session, device: Device) -> list[dict[str, Any]]:
    """Every setting desired or reported; the ones that differ are flagged (the API's diff)."""
    diff = devices.config_diff(session, device=device)
    desired = dict(device.desired_config or {})
    rows = []
    for key in sorted(set(desired) | set(diff)):
        if key in diff:
            rows.append({"key": key, "desired": diff[key]["desired"], "reported": diff[key]["reported"],
                         "differs": True})
        else:
            rows.append({"key": key, "desired": desired[key], "reported": desired[key], "differs": False})
    return rows


def _device_context(request: Request, session: Session, device: Device, user: User, *,
                    form: dict[str, str] | None = None, errors: dict[str, str] | None = None,
                    client_q: str = "") -> dict[str, Any]:
    client = clients.get_client(session, device.client_id) if device.client_id else None
    history = list(reversed(devices.assignments(session, device=device)))
    names = clients.client_names(session, (a.client_id for a in history))
    settings = settings_of(device.model)
    if form is None:
        values = {s.key: shown((device.desired_config or {}).get(s.key)) for s in settings}
    else:
        values = {s.key: form.get(SETTING_PREFIX + s.key, "") for s in settings}
    editor = _is_editor(user)
    context: dict[str, Any] = {
        "device": device, "client": client, "assignments": history, "client_names": names,
        "can_open_clients": user.role in INCIDENT_ROLES, "editor": editor,
        "programming": devices.config_state(device).value,
        "published": device.config_published_version >= device.desired_config_version,
        "config_rows": _config_rows(session, device),
        "versions": devices.config_versions(session, device=device, limit=20),
        "settings": settings, "values": values, "errors": errors or {},
        "choice_keys": {s.key for s in settings if s.kind == "choice"},
        "prefix": SETTING_PREFIX, "shown": shown, "statuses": list(DeviceStatus),
        "client_q": client_q, "client_results": [], "in_stock": [], "orders": [], "kinds": list(WorkOrderKind),
        **_charts(request, session, device),
    }
    if editor:
        context["orders"] = workorders.orders_for_device(session, device_id=device.id, limit=20)
        if device.client_id is not None:
            context["in_stock"] = devices.spare_serials(session, excluding=device.id, limit=200)
        if client_q:
            found = list(clients.list_clients(session, search=client_q, limit=20))
            wanted = _number(client_q)
            by_id = clients.get_client(session, wanted) if wanted is not None else None
            if by_id is not None and by_id not in found:
                found.insert(0, by_id)
            context["client_results"] = found
    return context


@router.get("/ui/devices/{serial}")
def device_page(request: Request, session: SessionDep, user: Reader, serial: str, client_q: str = "") -> Response:
    device = _device(session, serial)
    return render(request, "device.html",
                  _device_context(request, session, device, user, client_q=_clean(client_q)))


def _refused_page(request: Request, session: Session, serial: str, user: User, refused: Refused,
                  **extra: Any) -> Response:
    session.expire_all()
    context = _device_context(request, session, _device(session, serial), user, **extra)
    context["error"] = translate(request, "Not done: %(reason)s", reason=str(refused))
    return render(request, "device.html", context, status_code=refused.status_code)


def _device_action(request: Request, session: Session, user: User, serial: str,
                   do: Callable[[Device], str | None]) -> Response:
    """Run `do` on the locked device; it may name the page to go to next (a swap: the replacement)."""
    device = _device(session, serial, lock=True)
    try:
        with _refusals(session):
            target = do(device)
    except Refused as refused:
        return _refused_page(request, session, serial, user, refused)
    return RedirectResponse(target or f"/ui/devices/{device.serial}", status_code=303)


async def form_fields(request: Request) -> dict[str, str]:
    """Every text field of the posted form: the settings differ by device model."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


@router.post("/ui/devices/{serial}/config", dependencies=[Csrf])
def save_config(request: Request, session: SessionDep, user: Editor, serial: str,
                form: Annotated[dict[str, str], Depends(form_fields)]) -> Response:
    """The same save as PUT /api/v1/devices/{serial}/config: validated, the next version, committed,
    then published when the centre has a publisher. Refused, nothing was written."""
    device = _device(session, serial)
    config, errors = parse_settings(request, settings_of(device.model), form)
    reason = ""
    code = status.HTTP_422_UNPROCESSABLE_CONTENT
    if errors:
        reason = "; ".join(f"{key}: {message}" for key, message in errors.items())
    else:
        # The version the form was made from: a colleague's save in between is not overwritten blindly.
        typed = form.get("version", "").strip()
        expected = int(typed) if re.fullmatch(r"[0-9]{1,9}", typed) else None
        try:
            # Commits this request's transaction on success: nothing may use `session` afterwards.
            save_and_publish_config(session, request.app.state.session_factory,
                                    getattr(request.app.state, "config_publisher", None), device=device,
                                    config=config, actor=f"user:{user.username}", expected_version=expected)
        except devices.DeviceConflict:
            reason = translate(request, "Someone else saved meanwhile. Check the configuration below and save again.")
            code = status.HTTP_409_CONFLICT
        except ValueError as exc:
            reason, errors = str(exc), field_errors(exc)
        else:
            return RedirectResponse(f"/ui/devices/{device.serial}#programming", status_code=303)
    session.expire_all()
    fresh = _device(session, serial)
    # On a conflict the form shows what is stored now; on invalid input, what was typed.
    context = _device_context(request, session, fresh, user, form=None if code == 409 else form, errors=errors)
    context["error"] = translate(request, "Not saved: %(reason)s", reason=reason)
    return render(request, "device.html", context, status_code=code)


@router.post("/ui/devices/{serial}/assign", dependencies=[Csrf])
def assign(request: Request, session: SessionDep, user: Editor, serial: str,
           client_id: Annotated[str, Form(max_length=20)] = "",
           reason: Annotated[str, Form(max_length=200)] = "") -> Response:
    def do(device: Device) -> None:
        body = AssignIn(client_id=client_id.strip() or None)  # type: ignore[arg-type]
        if body.client_id is None:
            raise Refused(translate(request, "Choose a client."), status.HTTP_422_UNPROCESSABLE_CONTENT)
        devices.assign_device(session, device=device, client_id=body.client_id,
                              reason=reason.strip() or f"assigned by {user.username}")
    return _device_action(request, session, user, serial, do)


@router.post("/ui/devices/{serial}/unassign", dependencies=[Csrf])
def unassign(request: Request, session: SessionDep, user: Editor, serial: str) -> Response:
    def do(device: Device) -> None:
        if device.client_id is None:
            raise devices.DeviceConflict(f"device {device.serial} is not assigned to a client")
        devices.assign_device(session, device=device, client_id=None)
    return _device_action(request, session, user, serial, do)


@router.post("/ui/devices/{serial}/swap", dependencies=[Csrf])
def swap(request: Request, session: SessionDep, user: Editor, serial: str,
         replacement_serial: Annotated[str, Form(max_length=64)] = "",
         reason: Annotated[str, Form(max_length=200)] = "") -> Response:
    def do(device: Device) -> str:
        body = SwapIn(replacement_serial=replacement_serial.strip(), reason=reason.strip())
        replacement = devices.get_by_serial(session, body.replacement_serial)
        if replacement is None:
            raise LookupError(f"device {body.replacement_serial} not found")
        devices.lock(session, replacement)
        devices.swap_device(session, faulty=device, replacement=replacement, reason=body.reason,
                            actor=f"user:{user.username}")
        return f"/ui/devices/{replacement.serial}"
    return _device_action(request, session, user, serial, do)


@router.post("/ui/devices/{serial}/status", dependencies=[Csrf])
def change_status(request: Request, session: SessionDep, user: Editor, serial: str,
                  device_status: Annotated[str, Form(max_length=20)] = "") -> Response:
    def do(device: Device) -> None:
        devices.update_device(session, device=device, patch=DevicePatch(status=device_status))  # type: ignore[arg-type]
    return _device_action(request, session, user, serial, do)


@router.post("/ui/devices/{serial}/workorders", dependencies=[Csrf])
def open_order(request: Request, session: SessionDep, user: Editor, serial: str,
               kind: Annotated[str, Form(max_length=40)] = "repair",
               summary: Annotated[str, Form(max_length=300)] = "",
               charge: Annotated[str, Form(max_length=10)] = "") -> Response:
    def do(device: Device) -> str:
        body = WorkOrderIn(serial=device.serial, kind=kind, summary=summary.strip(),  # type: ignore[arg-type]
                           free_of_charge=not charge)
        order = workorders.open_order(session, kind=body.kind, device=device, summary=body.summary,
                                      created_by=f"user:{user.username}", free_of_charge=body.free_of_charge)
        if order is None:
            raise workorders.Conflict(f"device {device.serial} has an open {body.kind.value} work order already")
        return f"/ui/workorders/{order.id}"
    return _device_action(request, session, user, serial, do)


# -- work orders ----------------------------------------------------------------------------

ORDER_FILTERS: dict[str, tuple[WorkOrderStatus, ...]] = {
    "active": workorders.ACTIVE,
    "open": (WorkOrderStatus.OPEN,),
    "assigned": (WorkOrderStatus.ASSIGNED,),
    "done": (WorkOrderStatus.DONE,),
    "all": tuple(WorkOrderStatus),
}


@router.get("/ui/workorders")
def order_list(request: Request, session: SessionDep, user: Editor, state: str = "active",
               mine: str = "") -> Response:
    state = state if state in ORDER_FILTERS else "active"
    rows = [{"order": row.order, "serial": row.serial, "client": row.client, "assignee": row.assignee}
            for row in workorders.board(session, status=ORDER_FILTERS[state], assigned_to=user.id if mine else None,
                                        newest_first=state in ("done", "all"), limit=LIST_LIMIT)]
    return render(request, "workorders.html", {"rows": rows, "state": state, "mine": bool(mine),
                                               "filters": list(ORDER_FILTERS), "limit": LIST_LIMIT})


def _order(session: Session, order_id: int, *, lock: bool = False) -> WorkOrder:
    order = workorders.get_order(session, order_id, lock=lock)
    if order is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such work order")
    return order


def _order_context(session: Session, order: WorkOrder, user: User) -> dict[str, Any]:
    device = devices.get_device(session, order.device_id)
    client = clients.get_client(session, order.client_id) if order.client_id else None
    assignee = users.get_user(session, order.assigned_to) if order.assigned_to else None
    technicians = users.active_users(session, roles=(Role.TECHNICIAN, Role.ADMIN))
    return {"order": order, "device": device, "client": client, "assignee": assignee,
            "notes": workorders.notes(session, order=order), "technicians": technicians,
            "mine": order.assigned_to == user.id, "done": order.status == WorkOrderStatus.DONE}


@router.get("/ui/workorders/{order_id}")
def order_page(request: Request, session: SessionDep, user: Editor, order_id: int) -> Response:
    return render(request, "workorder.html", _order_context(session, _order(session, order_id), user))


def _order_action(request: Request, session: Session, user: User, order_id: int,
                  do: Callable[[WorkOrder], None]) -> Response:
    order = _order(session, order_id, lock=True)
    try:
        with _refusals(session):
            do(order)
    except Refused as refused:
        session.expire_all()
        context = _order_context(session, _order(session, order_id), user)
        context["error"] = translate(request, "Not done: %(reason)s", reason=str(refused))
        return render(request, "workorder.html", context, status_code=refused.status_code)
    return RedirectResponse(f"/ui/workorders/{order.id}", status_code=303)


@router.post("/ui/workorders/{order_id}/assign", dependencies=[Csrf])
def assign_order(request: Request, session: SessionDep, user: Editor, order_id: int,
                 user_id: Annotated[str, Form(max_length=20)] = "") -> Response:
    def do(order: WorkOrder) -> None:
        to: User | None = user
        if user_id.strip():
            wanted = _number(user_id)
            to = users.get_user(session, wanted) if wanted is not None else None
            if to is None:
                raise LookupError(f"user {user_id.strip()} not found")
        workorders.assign(session, order=order, to=to, by=user)
    return _order_action(request, session, user, order_id, do)


@router.post("/ui/workorders/{order_id}/notes", dependencies=[Csrf])
def add_note(request: Request, session: SessionDep, user: Editor, order_id: int,
             text: Annotated[str, Form(max_length=4000)] = "") -> Response:
    def do(order: WorkOrder) -> None:
        body = NoteIn(text=text.strip())
        workorders.add_note(session, order=order, author=f"user:{user.username}", text=body.text)
    return _order_action(request, session, user, order_id, do)


@router.post("/ui/workorders/{order_id}/done", dependencies=[Csrf])
def finish_order(request: Request, session: SessionDep, user: Editor, order_id: int,
                 resolution: Annotated[str, Form(max_length=4000)] = "") -> Response:
    def do(order: WorkOrder) -> None:
        body = DoneIn(resolution=resolution.strip())
        workorders.finish(session, order=order, user=user, resolution=body.resolution)
    return _order_action(request, session, user, order_id, do)
