"""A receiver on the network: asyncio TCP and UDP on one port, shared by the DC-09 and SCAIP receivers.

TCP: a connection's bytes are cut into messages by the protocol's `split` (several in one segment, one over
several segments); a connection's messages are answered one after the other, each after its commit. UDP:
every datagram is cut the same way (a datagram is whole: `split_datagram`), each message answered to the
sender's address. The blocking work (decryption, the database) runs in worker threads, so one slow commit
does not stop other devices' connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 300  # a device's TCP connection with nothing to say for this long is closed

Handle = Callable[[bytes, str], bytes | None]  # (message, "tcp" | "udp") -> the answer, or None: no answer


@dataclass(frozen=True, slots=True)
class Framing:
    """How a protocol's messages are cut out of a byte stream."""

    name: str  # for the log: "dc09", "scaip"
    split: Callable[[bytearray], list[bytes]]  # takes whole messages off the buffer's front
    split_datagram: Callable[[bytes], list[bytes]]  # every message of one datagram
    max_message: int  # a buffer this long without a whole message is refused as one message


class ReceiverServer:
    def __init__(self, handle: Handle, framing: Framing, *, host: str, port: int) -> None:
        self.handle = handle
        self.framing = framing
        self.host = host
        self.port = port
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._connection, self.host, self.port, reuse_address=True)
        self.port = self._tcp.sockets[0].getsockname()[1]  # the one chosen for port 0
        try:
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self),
                                                               local_addr=(self.host, self.port))
        except OSError:
            self._tcp.close()
            raise
        log.info("%s: receiving on tcp and udp %s:%d", self.framing.name, self.host, self.port)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 5)

    async def serve_forever(self) -> None:
        assert self._tcp is not None
        await self._tcp.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), IDLE_TIMEOUT_S)
                except (TimeoutError, ConnectionError):
                    break
                if not chunk:
                    break
                buffer.extend(chunk)
                messages = self.framing.split(buffer)
                if len(buffer) > self.framing.max_message:  # no end in sight: refuse it as one over-long message
                    messages.append(bytes(buffer))
                    buffer.clear()
                for message in messages:
                    answer = await asyncio.to_thread(self.handle, message, "tcp")
                    if answer is not None:
                        writer.write(answer)
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        for message in self.framing.split_datagram(data):
            answer = await asyncio.to_thread(self.handle, message, "udp")
            if answer is not None and self._udp is not None:
                self._udp.sendto(answer, addr)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, server: ReceiverServer) -> None:
        self.server = server
        self.tasks: set[asyncio.Task[None]] = set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self.server._datagram(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def port_is_free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


class BackgroundReceiver:
    """A server on an event loop of its own, in a thread: what `alarmcentre up` runs beside the rest."""

    def __init__(self, server: ReceiverServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=server.framing.name, daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> BackgroundReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
