"""The SCAIP receiver on the network (receivers/server.py): SIP over TCP (messages cut by Content-Length)
and UDP (one message a datagram) on one port."""

from __future__ import annotations

from alarmcentre.receivers.scaip import ScaipReceiver
from alarmcentre.receivers.scaip_message import MAX_MESSAGE, split_datagram, split_stream
from alarmcentre.receivers.server import BackgroundReceiver, Framing, ReceiverServer

SCAIP_FRAMING = Framing("scaip", split_stream, split_datagram, MAX_MESSAGE)


def scaip_server(receiver: ScaipReceiver, *, host: str, port: int) -> ReceiverServer:
    return ReceiverServer(lambda message, transport: receiver.handle(message, transport=transport), SCAIP_FRAMING,
                          host=host, port=port)


def background_scaip_server(receiver: ScaipReceiver, *, host: str, port: int) -> BackgroundReceiver:
    return BackgroundReceiver(scaip_server(receiver, host=host, port=port))
