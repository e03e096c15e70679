"""The DC-09 receiver on the network (receivers/server.py): TCP and UDP on one port, frames cut at CR or LF."""

from __future__ import annotations

from alarmcentre.receivers.dc09 import Dc09Receiver
from alarmcentre.receivers.dc09_frame import MAX_FRAME, split_frames
from alarmcentre.receivers.server import BackgroundReceiver, Framing, ReceiverServer


def _datagram_frames(data: bytes) -> list[bytes]:
    buffer = bytearray(data)
    frames = split_frames(buffer)
    if buffer.strip():
        frames.append(bytes(buffer))  # a datagram is whole: a frame without CR ends with it
    return frames


DC09_FRAMING = Framing("dc09", split_frames, _datagram_frames, MAX_FRAME)


def dc09_server(receiver: Dc09Receiver, *, host: str, port: int) -> ReceiverServer:
    return ReceiverServer(lambda frame, transport: receiver.handle(frame, transport=transport), DC09_FRAMING,
                          host=host, port=port)


def background_dc09_server(receiver: Dc09Receiver, *, host: str, port: int) -> BackgroundReceiver:
    return BackgroundReceiver(dc09_server(receiver, host=host, port=port))
