"""A receiver's event `seq`: what tells a device's resent message from a new one that looks the same.

The ingest deduplicates on (device, seq) (docs/protocol.md). DC-09 and SCAIP devices send no such number; their
own references (a 4-digit DC-09 sequence, a SCAIP `ref`) wrap or repeat. So the seq is a digest of what makes
the message itself, and, for a message without a timestamp of its own, of the time window it came in: the same
message again within `window_s` is the device resending (it missed the answer); later, it is a new event.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmcentre.devices.models import DeviceEvent


def digest(*parts: str) -> int:
    value = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(value[:8], "big") >> 1  # 0 … 2**63-1


def retransmission_seq(session: Session, *, device_id: int, parts: tuple[str, ...], now: datetime,
                       timestamp: datetime | None, window_s: int) -> int:
    """The seq of a message made of `parts`; with a timestamp it is itself unique, without one the window
    decides (a copy seen in the previous window, less than window_s ago, is the same event)."""
    if timestamp is not None:
        return digest(*parts, timestamp.isoformat())
    bucket = int(now.timestamp() // window_s)
    previous = digest(*parts, f"untimed:{bucket - 1}")
    seen = session.scalar(select(DeviceEvent.received_at).where(DeviceEvent.device_id == device_id,
                                                                DeviceEvent.seq == previous))
    if seen is not None and now - seen <= timedelta(seconds=window_s):
        return previous
    return digest(*parts, f"untimed:{bucket}")
