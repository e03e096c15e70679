"""Scripted scenarios: a YAML file of timed steps for named devices.

Scenarios exist for reproducible tests of the centre (an alarm and its cancel,
a fall nobody answers, a power cut), so the file is validated completely before
anything connects, and every error names the step (1-based) and its line.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from alarmcentre.ingest.protocol import (
    DEVICE_ID_PATTERN,
    EventType,
    Rejection,
    events_topic,
    parse_message,
)

from .connection import BrokerAddress, SimulatorError
from .device import DeviceBehaviour, SimDevice, now_rfc3339
from .stats import Console, RateLimiter, Stats

Action = Literal["disconnect", "clean_disconnect", "connect"]

# The fields a step may give, per event type; everything else is refused by the centre.
EVENT_FIELDS: dict[EventType, frozenset[str]] = {
    EventType.BATTERY: frozenset({"level", "low"}),
    EventType.HEARTBEAT: frozenset({"battery", "rssi", "mains"}),
    EventType.FALL_DETECTED: frozenset({"confidence"}),
    EventType.CONFIG_APPLIED: frozenset({"version"}),
    EventType.CONFIG_FAILED: frozenset({"version", "reason"}),
}
_ALL_EVENT_FIELDS = ("level", "low", "battery", "rssi", "mains", "confidence", "version", "reason")
# Fields the device fills in itself when a step leaves them out.
_PLACEHOLDERS: dict[str, Any] = {"level": 100}


class ScenarioError(SimulatorError):
    """A scenario file that cannot be run; the message says where and why."""


class Step(BaseModel):
    """One line of a scenario: at ``at`` seconds, ``device`` sends ``type`` or does ``action``."""

    model_config = ConfigDict(extra="forbid")

    at: Annotated[float, Field(ge=0, description="seconds from the start (all devices connected)")]
    device: Annotated[str, Field(pattern=f"^{DEVICE_ID_PATTERN}$")] | None = None
    type: EventType | None = None
    action: Action | None = None
    raw: str | None = None  # published as is on the events topic, to test refusals

    level: StrictInt | None = None
    low: StrictBool | None = None
    battery: StrictInt | None = None
    rssi: StrictInt | None = None
    mains: StrictBool | None = None
    confidence: Annotated[float, Field(strict=False)] | None = None
    version: StrictInt | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _one_thing(self) -> Step:
        chosen = [name for name in ("type", "action", "raw") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of 'type' (an event), 'action' or 'raw'"
                             + (f", not {' and '.join(chosen)}" if chosen else ""))
        given = self.event_fields()
        if self.type is None:
            if given:
                raise ValueError(f"{', '.join(sorted(given))} only go with an event 'type'")
            return self
        allowed = EVENT_FIELDS.get(self.type, frozenset())
        extra = sorted(set(given) - allowed)
        if extra:
            raise ValueError(
                f"{self.type.value} events have no field {', '.join(extra)}"
                + (f" (allowed: {', '.join(sorted(allowed))})" if allowed else " (they have no extra fields)")
            )
        # Check the values exactly as the centre will, with its own parser.
        sample = {"seq": 1, "ts": now_rfc3339(), "type": self.type.value, **_PLACEHOLDERS, **given}
        sample = {k: v for k, v in sample.items() if k in allowed or k in ("seq", "ts", "type")}
        result = parse_message(events_topic("CHECK"), json.dumps(sample).encode(),
                               received_at=datetime.now(UTC))
        if isinstance(result, Rejection):
            raise ValueError(f"the centre would refuse this event: {result.detail}")
        return self

    def event_fields(self) -> dict[str, Any]:
        """The event fields this step sets (the rest the device fills in)."""
        return {name: getattr(self, name) for name in _ALL_EVENT_FIELDS if getattr(self, name) is not None}


class Scenario(BaseModel):
    """A whole scenario file."""

    model_config = ConfigDict(extra="forbid")

    devices: Annotated[list[Annotated[str, Field(pattern=f"^{DEVICE_ID_PATTERN}$")]], Field(min_length=1)]
    steps: Annotated[list[Step], Field(min_length=1)]
    # Heartbeats of the devices' own; off unless set, so a scenario sends only its steps.
    heartbeat_interval: Annotated[float, Field(gt=0)] | None = None
    battery: Annotated[int, Field(ge=0, le=100)] = 100  # starting level
    linger: Annotated[float, Field(ge=0)] = 1.0  # seconds connected after the last step

    @model_validator(mode="after")
    def _devices_known(self) -> Scenario:
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("devices: each device may be listed once")
        for number, step in enumerate(self.steps, start=1):
            if step.device is None:
                if len(self.devices) != 1:
                    raise ValueError(
                        f"step {number}: 'device' is needed when the scenario has several devices"
                    )
                step.device = self.devices[0]
            elif step.device not in self.devices:
                raise ValueError(f"step {number}: device {step.device!r} is not in 'devices'")
        return self

    def ordered_steps(self) -> list[tuple[int, Step]]:
        """Steps with their 1-based numbers, by time; steps at the same time keep file order."""
        return sorted(enumerate(self.steps, start=1), key=lambda item: item[1].at)


def _step_lines(text: str) -> list[int]:
    """The 1-based line where each step starts, for error messages (best effort)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "steps" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate scenario YAML; raises ScenarioError with step numbers and lines."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(f"{source}:{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with 'devices' and 'steps'")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_describe(exc, source, _step_lines(text))) from None


def _describe(exc: ValidationError, source: str, lines: list[int]) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        # Errors of the whole scenario about one step start with "step N: ".
        named = re.match(r"step (\d+): (.*)", msg, re.DOTALL)
        if not loc and named:
            loc, msg = ["steps", int(named.group(1)) - 1], named.group(2)
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            number = loc[1] + 1
            line = f", line {lines[loc[1]]}" if loc[1] < len(lines) else ""
            where = f"step {number}{line}"
            rest = loc[2:]
            # Errors inside a union name the member tried; the field is what matters.
            rest = [part for part in rest
                    if not (isinstance(part, str) and part.startswith(("function-", "Annotated")))]
        else:
            where = "scenario"
            rest = loc
        field = ".".join(str(part) for part in rest)
        problems.append(f"{where}: {field + ': ' if field else ''}{msg}")
    return f"{source}: " + ("\n  ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, str(path))


async def run_scenario(
    scenario: Scenario,
    url: str | BrokerAddress,
    *,
    console: Console | None = None,
    stop: asyncio.Event | None = None,
    connect_timeout: float = 10.0,
    seed: int | None = None,
    serial_login: bool = False,
    stats: Stats | None = None,
    alarm_lane: bool = True,
) -> Stats:
    """Connect the scenario's devices, play the steps in time order, then stop them cleanly.

    Each step waits for its PUBACK before the next one runs, so the centre
    receives the events of one device in the file's order with increasing seq.
    Time 0 is when every device is connected.
    """
    broker = url if isinstance(url, BrokerAddress) else BrokerAddress.from_url(url)
    console = console or Console()
    stop = stop or asyncio.Event()
    stats = stats or Stats()
    stats.devices = len(scenario.devices)
    limiter = RateLimiter(None)
    rng = random.Random(seed)
    behaviour = DeviceBehaviour(
        heartbeat_interval=scenario.heartbeat_interval,
        battery_start=scenario.battery,
        battery_drain=0.0,
        alarm_lane=alarm_lane,
    )
    devices = {
        device_id: SimDevice(device_id, broker, behaviour, stats=stats, limiter=limiter, console=console,
                             rng=random.Random(rng.random()), timeout=connect_timeout,
                             serial_login=serial_login)
        for device_id in scenario.devices
    }
    tasks = [asyncio.create_task(dev.run()) for dev in devices.values()]
    try:
        try:
            async with asyncio.timeout(connect_timeout):
                await asyncio.gather(*(dev.connected.wait() for dev in devices.values()))
        except TimeoutError:
            missing = [d.device_id + (f" ({d.last_error})" if d.last_error else "")
                       for d in devices.values() if not d.connected.is_set()]
            raise SimulatorError(
                f"could not connect to {broker.display()} within {connect_timeout:g} s: {', '.join(missing)}"
            ) from None
        console.note(f"scenario: {len(devices)} device(s) connected to {broker.display()}, "
                     f"{len(scenario.steps)} step(s)")
        start = time.monotonic()
        for number, step in scenario.ordered_steps():
            delay = start + step.at - time.monotonic()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass
            if stop.is_set():
                console.note(f"scenario: stopped before step {number}")
                break
            await _play(number, step, devices[step.device or scenario.devices[0]], console)
        else:
            if scenario.linger > 0:
                try:
                    async with asyncio.timeout(scenario.linger):
                        await stop.wait()
                except TimeoutError:
                    pass
    finally:
        await asyncio.gather(*(dev.shutdown() for dev in devices.values()), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats.ended = time.monotonic()
    return stats


async def _play(number: int, step: Step, dev: SimDevice, console: Console) -> None:
    if step.type is not None:
        ok = await dev.send_event(step.type, **step.event_fields())
    elif step.raw is not None:
        ok = await dev.send_raw(step.raw.encode("utf-8"))
    elif step.action == "disconnect":
        await dev.drop()
        ok = True
    elif step.action == "clean_disconnect":
        await dev.disconnect_clean()
        ok = True
    else:
        ok = await dev.reconnect()
    if not ok:
        what = f"step {number} ({step.type or step.action or 'raw'} for {dev.device_id})"
        if step.action == "connect":
            console.note(f"scenario: {what} failed: {dev.last_error or 'not connected in time'}")
        else:
            console.note(f"scenario: {what} not acknowledged: kept in the device's outbox "
                         "until it is connected again")
