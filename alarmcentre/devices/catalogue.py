"""What the centre knows about each device model: its supervision window and its configuration schema.

Supervision presets follow the spirit of EN 50136-1 (alarm transmission systems): the
reporting time allowed before a path counts as failed. A model either names a preset or
takes its heartbeat interval times the tolerance setting (3 x 60 s = 3 min by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alarmcentre.clients.models import Language
from alarmcentre.schemas import Phone

SUPERVISION_PRESETS: dict[str, int] = {
    "fast": 3 * 60,  # IP units that poll every 60-90 s
    "standard": 30 * 60,
    "daily": 25 * 3600,  # units that report once a day (+1 h of slack)
}


class BaseConfig(BaseModel):
    """Settings every speech unit has; a model's schema may add its own."""

    model_config = ConfigDict(extra="forbid")
    alarm_numbers: Annotated[list[Phone], Field(max_length=5)] | None = None
    heartbeat_interval: Annotated[int, Field(ge=10, le=90_000)] | None = None
    volume: Annotated[int, Field(ge=0, le=10)] | None = None
    language: Language | None = None


class FallSensorConfig(BaseConfig):
    fall_sensitivity: Annotated[int, Field(ge=1, le=5)] | None = None


@dataclass(frozen=True)
class DeviceModelSpec:
    supervision: str | None  # a SUPERVISION_PRESETS name, or None: heartbeat interval x tolerance
    config_schema: type[BaseConfig]


CATALOGUE: dict[str, DeviceModelSpec] = {
    "generic": DeviceModelSpec(None, BaseConfig),
    "ip-pendant": DeviceModelSpec("fast", FallSensorConfig),
    "gsm-unit": DeviceModelSpec("standard", BaseConfig),
    "daily-unit": DeviceModelSpec("daily", BaseConfig),
}


def spec_for(model: str) -> DeviceModelSpec:
    # An unknown model is supervised by its heartbeat and accepts the base settings only.
    return CATALOGUE.get(model, CATALOGUE["generic"])


def supervision_window_s(*, model: str, heartbeat_interval_s: int, tolerance: float) -> float:
    spec = spec_for(model)
    if spec.supervision is not None:
        return float(SUPERVISION_PRESETS[spec.supervision])
    return heartbeat_interval_s * tolerance


def validate_config(model: str, config: dict[str, Any]) -> dict[str, Any]:
    """The configuration as the device will receive it (unset keys dropped); ValueError if invalid."""
    try:
        parsed = spec_for(model).config_schema.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid configuration for model {model}: {problems}") from exc
    return parsed.model_dump(mode="json", exclude_none=True)
