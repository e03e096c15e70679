"""The one source of "now" (always UTC, timezone-aware), replaceable in tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

_now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    return _now()


def set_clock(func: Callable[[], datetime] | None) -> None:
    """Install a clock for tests; None restores the system clock."""
    global _now
    _now = func if func is not None else (lambda: datetime.now(UTC))
