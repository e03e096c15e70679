"""Many simulated devices on one asyncio loop, usable from the command line and as a library.

One process can hold 10,000 devices because each device is a few asyncio tasks
and one socket; nothing is a thread. ``Fleet.start_in_thread()`` exists for
callers that are not async themselves (the ``alarmcentre demo`` command).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from alarmcentre.ingest.protocol import EventType

from .connection import BrokerAddress, SimulatorError, raise_open_file_limit
from .device import DeviceBehaviour, SimDevice
from .stats import Console, RateLimiter, Stats

DEFAULT_CONNECT_BATCH = 100


def own_loop_executor(loop: asyncio.AbstractEventLoop, workers: int) -> None:
    """Give a loop we own enough threads for blocking TCP connects.

    aiomqtt runs each connect in the default executor; its usual handful of
    threads would serialize handshakes to a distant broker. Only for loops the
    simulator created itself: a library caller's loop is not ours to change.
    """
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=max(4, min(64, workers))))


class Fleet:
    """N devices against one broker, each with its own connection and last will.

    Async use::

        fleet = Fleet("mqtt://127.0.0.1:1883", serials("SIM-", 100), heartbeat_interval=30)
        stats = await fleet.run(stop_event)          # or run(duration=60)

    From synchronous code::

        fleet.start_in_thread()
        fleet.wait_connected(30)
        fleet.press("SIM-00001")
        stats = fleet.stop()
    """

    def __init__(
        self,
        url: str | BrokerAddress,
        device_ids: Sequence[str],
        *,
        heartbeat_interval: float | None = 60.0,
        battery_start: float = 100.0,
        battery_drain: float = 0.5,
        press_rate: float = 0.0,
        fall_rate: float = 0.0,
        power_cut_rate: float = 0.0,
        power_cut_duration: float = 300.0,
        keepalive: int = 60,
        offline_on_stop: bool = True,
        serial_login: bool = False,
        alarm_lane: bool = True,
        rate_limit: float | None = None,
        connect_batch: int = DEFAULT_CONNECT_BATCH,
        verbose: bool = False,
        console: Console | None = None,
        report_every: float = 0.0,
        seed: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not device_ids:
            raise SimulatorError("a fleet needs at least one device")
        if len(set(device_ids)) != len(device_ids):
            raise SimulatorError("device ids must be unique (each is an MQTT client id)")
        if connect_batch < 1:
            raise SimulatorError("connect batch must be at least 1")
        self.broker = url if isinstance(url, BrokerAddress) else BrokerAddress.from_url(url)
        self.device_ids = list(device_ids)
        self.behaviour = DeviceBehaviour(
            heartbeat_interval=heartbeat_interval,
            battery_start=battery_start,
            battery_drain=battery_drain,
            press_rate=press_rate,
            fall_rate=fall_rate,
            power_cut_rate=power_cut_rate,
            power_cut_duration=power_cut_duration,
            keepalive=keepalive,
            offline_on_stop=offline_on_stop,
            alarm_lane=alarm_lane,
        )
        self.serial_login = serial_login
        self.rate_limit = rate_limit
        self.connect_batch = connect_batch
        self.console = console or Console(verbose=verbose)
        self.report_every = report_every
        self.timeout = timeout
        self._rng = random.Random(seed)
        self.stats = Stats(devices=len(self.device_ids))
        self.devices: dict[str, SimDevice] = {}
        self.connect_seconds: float | None = None  # time until every device had its first attempt

        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._connected_flag = threading.Event()
        self._finished_flag = threading.Event()

    # ------------------------------------------------------------------ async

    async def run(self, stop: asyncio.Event | None = None, duration: float | None = None) -> Stats:
        """Connect every device, run until ``stop`` is set or ``duration`` seconds pass, stop cleanly.

        Returns the statistics (also in ``self.stats``). Devices that cannot
        connect keep retrying in the background with backoff; they are counted,
        not fatal, because a load test should survive a broker hiccup.
        """
        raise_open_file_limit()
        self._loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        self._stop_event = stop
        gate = asyncio.Semaphore(self.connect_batch)
        limiter = RateLimiter(self.rate_limit)
        self.stats = Stats(devices=len(self.device_ids))
        self.devices = {
            device_id: SimDevice(
                device_id,
                self.broker,
                self.behaviour,
                stats=self.stats,
                limiter=limiter,
                console=self.console,
                connect_gate=gate,
                rng=random.Random(self._rng.random()),
                serial_login=self.serial_login,
                timeout=self.timeout,
            )
            for device_id in self.device_ids
        }
        self.console.note(
            f"connecting {len(self.devices)} device(s) to {self.broker.display()} "
            + ("logging in as their serials " if self.serial_login else "")
            + f"({self.connect_batch} handshakes at a time)"
        )
        started = time.monotonic()
        tasks = [asyncio.create_task(dev.run(), name=f"device {dev.device_id}")
                 for dev in self.devices.values()]
        reporter = asyncio.create_task(self._report(stop, started))
        deadline = None if duration is None else started + duration
        try:
            await self._wait(stop, self._all_attempted(), deadline)
            connected = sum(dev.connected.is_set() for dev in self.devices.values())
            if stop.is_set() or not all(dev.first_attempt_done.is_set() for dev in self.devices.values()):
                self.console.note(
                    f"stopping while connecting: {connected}/{len(self.devices)} device(s) connected"
                )
            else:
                self.connect_seconds = time.monotonic() - started
                self.console.note(
                    f"{connected}/{len(self.devices)} device(s) connected in {self.connect_seconds:.1f} s"
                )
                if connected == 0:
                    errors = {dev.last_error for dev in self.devices.values() if dev.last_error}
                    self.console.note(
                        f"warning: no device could connect to {self.broker.display()}: "
                        + "; ".join(sorted(errors)[:3])
                    )
            self._connected_flag.set()
            await self._wait(stop, None, deadline)
        finally:
            reporter.cancel()
            await self._shutdown_all(tasks)
            self.stats.ended = time.monotonic()
            self._connected_flag.set()
        return self.stats

    async def _all_attempted(self) -> None:
        for dev in self.devices.values():
            await dev.first_attempt_done.wait()

    @staticmethod
    async def _wait(stop: asyncio.Event, until: Any, deadline: float | None) -> None:
        """Wait for ``until`` (a coroutine, or forever if None), ``stop`` or the deadline."""
        waiters = [asyncio.ensure_future(stop.wait())]
        if until is not None:
            waiters.append(asyncio.ensure_future(until))
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _shutdown_all(self, tasks: list[asyncio.Task[None]]) -> None:
        # Every device is told at once; each says goodbye through the connect gate,
        # so 10,000 "offline" publishes and DISCONNECTs are spread like the connects.
        for dev in self.devices.values():
            dev.request_stop()
        try:
            async with asyncio.timeout(self.timeout + 5 + len(self.devices) / 200):
                for dev in self.devices.values():
                    await dev.done.wait()
        except TimeoutError:
            self.console.note("warning: some devices did not stop in time; closing their connections")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _report(self, stop: asyncio.Event, started: float) -> None:
        if self.report_every <= 0:
            return
        while not stop.is_set():
            await asyncio.sleep(self.report_every)
            self.console.note(self.stats.progress_line())

    async def send(self, device_id: str, event_type: EventType | str, **fields: Any) -> bool:
        """Make one device of the running fleet send an event (on the fleet's loop)."""
        try:
            dev = self.devices[device_id]
        except KeyError:
            raise SimulatorError(f"device {device_id!r} is not in this fleet") from None
        return await dev.send_event(event_type, **fields)

    # ----------------------------------------------------------------- threads

    def start_in_thread(self, duration: float | None = None) -> threading.Thread:
        """Run the fleet on its own event loop in a daemon thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("this fleet is already started")
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            own_loop_executor(loop, self.connect_batch)
            asyncio.set_event_loop(loop)
            try:
                self._stop_event = asyncio.Event()
                self._loop = loop
                ready.set()
                loop.run_until_complete(self.run(self._stop_event, duration))
            except BaseException as exc:  # handed to stop(), the thread has no one to tell
                self._thread_error = exc
            finally:
                ready.set()
                self._connected_flag.set()
                self._finished_flag.set()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=main, name="alarmcentre-sim-fleet", daemon=True)
        self._thread.start()
        ready.wait()
        return self._thread

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until every device has tried its first connect; False on timeout."""
        return self._connected_flag.wait(timeout)

    def stop(self, timeout: float | None = 60.0) -> Stats:
        """Stop a fleet started with ``start_in_thread()`` and return its statistics."""
        if self._thread is None:
            raise RuntimeError("this fleet was not started with start_in_thread()")
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not self._finished_flag.is_set():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the fleet did not stop in time")
        if self._thread_error is not None:
            raise self._thread_error
        return self.stats

    def press(self, device_id: str, event_type: EventType | str = EventType.BUTTON_PRESS,
              timeout: float = 15.0, **fields: Any) -> bool:
        """From another thread: make a device of the running fleet send an event; True if acknowledged."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("press() is for a fleet started with start_in_thread(); "
                               "use send() in async code")
        future = asyncio.run_coroutine_threadsafe(self.send(device_id, event_type, **fields), self._loop)
        return future.result(timeout)
