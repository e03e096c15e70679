"""Counters, the fleet-wide rate limit and the one-line-per-message console output.

Every device of a fleet shares one of each, so the summary and the rate cap are
about the whole fleet, not one connection.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO


@dataclass
class Stats:
    """What the simulator did; printed as the summary and readable by library users.

    Only the event loop that runs the fleet writes to it; other threads may read
    ``snapshot()`` at any time.
    """

    devices: int = 0
    published: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    connect_failures: int = 0
    connections_lost: int = 0
    outbox: int = 0  # events waiting for a connection (undelivered if the run ends now)
    resent: int = 0  # events delivered from an outbox after a reconnect
    outbox_dropped: int = 0  # events lost because an outbox was full
    devices_connected: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    _ack_total: float = 0.0
    _ack_count: int = 0
    _ack_max: float = 0.0

    def record_publish(self, kind: str, ok: bool, seconds: float) -> None:
        """Count one publish; ``seconds`` is the time until the PUBACK (or the failure)."""
        if ok:
            self.published[kind] += 1
            self._ack_total += seconds
            self._ack_count += 1
            self._ack_max = max(self._ack_max, seconds)
        else:
            self.failed[kind] += 1

    @property
    def total_published(self) -> int:
        return sum(self.published.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def undelivered(self) -> int:
        """Events that never got a PUBACK: still in an outbox, or dropped from a full one."""
        return self.outbox + self.outbox_dropped

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def snapshot(self) -> dict[str, object]:
        """A plain copy, safe to take from another thread."""
        return {
            "devices": self.devices,
            "devices_connected": len(self.devices_connected),
            "published": dict(self.published),
            "failed": dict(self.failed),
            "received": dict(self.received),
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "connections_lost": self.connections_lost,
            "outbox": self.outbox,
            "resent": self.resent,
            "outbox_dropped": self.outbox_dropped,
            "elapsed": round(self.elapsed(), 3),
            "puback_avg_ms": round(1000 * self._ack_total / self._ack_count, 3) if self._ack_count else None,
            "puback_max_ms": round(1000 * self._ack_max, 3) if self._ack_count else None,
        }

    def progress_line(self) -> str:
        """One short line for the periodic progress report of a long run."""
        elapsed = self.elapsed()
        rate = self.total_published / elapsed if elapsed > 0 else 0.0
        return (
            f"[{elapsed:7.1f} s] connected {len(self.devices_connected)}/{self.devices}, "
            f"published {self.total_published} ({rate:.0f}/s avg), failed {self.total_failed}, "
            f"waiting {self.outbox}, "
            f"connections lost {self.connections_lost}"
        )

    def summary(self) -> str:
        """The multi-line report printed at the end of a run and at Ctrl-C."""
        snap = self.snapshot()
        elapsed = self.elapsed()
        lines = [
            f"summary: {self.devices} device(s), {elapsed:.1f} s",
            f"  devices that connected: {snap['devices_connected']}/{self.devices} "
            f"(connects {self.connects}, connect failures {self.connect_failures}, "
            f"connections lost {self.connections_lost})",
            f"  published: {self.total_published} ok, {self.total_failed} failed (no PUBACK)"
            + (f" ({self.total_published / elapsed:.1f}/s)" if elapsed > 0 else ""),
        ]
        for kind in sorted(set(self.published) | set(self.failed)):
            failed = self.failed.get(kind, 0)
            lines.append(
                f"    {kind:<22}{self.published.get(kind, 0):>9}" + (f"   failed {failed}" if failed else "")
            )
        if self.outbox or self.resent or self.outbox_dropped:
            lines.append(
                f"  outbox: {self.resent} event(s) delivered after a reconnect, "
                f"{self.outbox} never delivered, {self.outbox_dropped} dropped (outbox full)"
            )
        if self.received:
            lines.append("  received: " + ", ".join(f"{k} {v}" for k, v in sorted(self.received.items())))
        if self._ack_count:
            lines.append(
                f"  PUBACK wait: avg {snap['puback_avg_ms']:.1f} ms, max {snap['puback_max_ms']:.1f} ms"
            )
        return "\n".join(lines)


class RateLimiter:
    """Spaces publishes to at most ``rate`` per second across the whole fleet.

    Each caller reserves the next free slot and sleeps until it, so waiting callers
    are served in arrival order with no polling, however many devices wait.
    A rate of ``None`` or 0 means no limit.
    """

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def acquire(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Console:
    """Prints the ``--verbose`` message lines and notices, one line each.

    Separate from logging so a tester can grep the output; ``sink`` lets a
    library user (or a test) capture the lines instead.
    """

    def __init__(
        self,
        verbose: bool = False,
        sink: Callable[[str], None] | None = None,
        stream: TextIO | None = None,  # both kinds of line to one stream (tests)
    ) -> None:
        self.verbose = verbose
        self._sink = sink
        self._stream = stream

    def _write(self, line: str, err: bool = False) -> None:
        if self._sink is not None:
            self._sink(line)
            return
        stream = self._stream or (sys.stderr if err else sys.stdout)
        try:
            print(line, file=stream, flush=True)
        except BrokenPipeError:
            # The reader went away (`... | head`): the devices carry on, silently.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)

    def message(self, direction: str, device_id: str, kind: str, payload: bytes | str) -> None:
        """One message sent (``>``), received (``<``) or failed (``!``), only with --verbose."""
        if not self.verbose:
            return
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        self._write(f"{stamp} {direction} {device_id} {kind} {text}")

    def note(self, text: str) -> None:
        """A notice always shown (start, progress, warnings); on stderr so stdout stays messages only."""
        self._write(text, err=True)
