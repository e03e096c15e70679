"""``alarmcentre-sim``: run a fleet, play a scenario, or press one button.

Exit codes: 0 all went well; 1 something failed at run time (no connection,
publishes without PUBACK); 2 bad command line or scenario file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

from alarmcentre.ingest.protocol import EventType

from .connection import (
    DEFAULT_URL,
    URL_ENV,
    BrokerAddress,
    SimulatorError,
    check_device_id,
    default_url,
    load_credentials,
    raise_open_file_limit,
    serials,
)
from .dc09 import EVENTS as DC09_EVENTS
from .dc09 import Dc09Panel
from .device import press_once
from .fleet import DEFAULT_CONNECT_BATCH, Fleet, own_loop_executor
from .scaip import MESSAGES as SCAIP_MESSAGES
from .scaip import ScaipError, ScaipUnit
from .scaip import mrq as scaip_mrq
from .scenario import ScenarioError, Step, load_scenario, run_scenario
from .stats import Console, Stats

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 0-100: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=None,
        help=f"broker, mqtt://[user:pass@]host:port or mqtts://... "
             f"(default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    common.add_argument("--cafile", help="CA certificate file for mqtts:// with a private CA")
    common.add_argument("--serial-login", action="store_true",
                        help="each device logs in with its serial as username and the URL's password, even when "
                             "the URL names a user (a URL without a user does this already)")
    common.add_argument("--credentials", metavar="FILE",
                        help="JSON object of serial to password (the demo's data/broker/credentials.json is one): "
                             "each device logs in as its serial with its own password")
    common.add_argument("--legacy-alarm-topic", action="store_true",
                        help="send alarms, cancels and mains power events on the events topic, as a device of "
                             "protocol 1.0 does, instead of the alarm lane topic (docs/protocol.md)")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="print every message sent (>) and received (<), one line each")

    parser = argparse.ArgumentParser(
        prog="alarmcentre-sim",
        description="Simulated safety-button devices speaking device protocol v1 over MQTT.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,scenario,press,scaip,dc09}")

    run = sub.add_parser("run", parents=[common], help="run a fleet of devices",
                         description="Run N devices, each with its own MQTT connection and last will.")
    who = run.add_argument_group("which devices")
    who.add_argument("-n", "--devices", type=_positive_int, default=None,
                     help="number of devices (default 1)")
    who.add_argument("--prefix", default="SIM-",
                     help="serial prefix: SIM- gives SIM-00001, ... (default SIM-)")
    who.add_argument("--start", type=int, default=1, help="first serial number (default 1)")
    who.add_argument("--digits", type=_positive_int, default=5,
                     help="zero-pad the number to at least this many digits (default 5; the demo's "
                          "DEMO-0001... need --prefix DEMO- --digits 4)")
    who.add_argument("--device-id", action="extend", nargs="+", default=[], metavar="SERIAL",
                     help="explicit serials instead of --devices/--prefix (repeatable)")
    what = run.add_argument_group("what they do")
    what.add_argument("--heartbeat-interval", type=_non_negative, default=60.0, metavar="SECONDS",
                      help="heartbeat period, +-10%% jitter, first beat at a random point "
                           "(default 60; 0: none)")
    what.add_argument("--battery", type=_percent, default=100.0, metavar="PERCENT",
                      help="starting battery level (default 100)")
    what.add_argument("--battery-drain", type=_non_negative, default=0.5, metavar="PERCENT_PER_HOUR",
                      help="battery drain, +-20%% per device; a battery event at each 10%% step "
                           "(default 0.5)")
    what.add_argument("--press-rate", type=_non_negative, default=0.0, metavar="PER_HOUR",
                      help="button presses per device per hour, Poisson (default 0)")
    what.add_argument("--fall-rate", type=_non_negative, default=0.0, metavar="PER_HOUR",
                      help="fall_detected events per device per hour, Poisson (default 0)")
    what.add_argument("--power-cut-rate", type=_non_negative, default=0.0, metavar="PER_HOUR",
                      help="mains failures per device per hour, Poisson (default 0)")
    what.add_argument("--power-cut-duration", type=_non_negative, default=300.0, metavar="SECONDS",
                      help="mean length of a power cut (default 300)")
    how = run.add_argument_group("how")
    how.add_argument("--duration", type=_non_negative, default=None, metavar="SECONDS",
                     help="stop by itself after this long (default: run until Ctrl-C)")
    how.add_argument("--rate-limit", type=_non_negative, default=0.0, metavar="MSGS_PER_S",
                     help="cap on publishes per second for the whole fleet (default 0: none)")
    how.add_argument("--connect-batch", type=_positive_int, default=DEFAULT_CONNECT_BATCH, metavar="N",
                     help=f"connection handshakes in flight at once (default {DEFAULT_CONNECT_BATCH})")
    how.add_argument("--keepalive", type=_positive_int, default=60, metavar="SECONDS",
                     help="MQTT keepalive (default 60)")
    how.add_argument("--report-every", type=_non_negative, default=10.0, metavar="SECONDS",
                     help="progress line on stderr this often (default 10; 0: none)")
    how.add_argument("--no-offline", action="store_true",
                     help="at the end, disconnect without publishing retained 'offline' first")
    how.add_argument("--seed", type=int, default=None, help="random seed, for repeatable jitter and presses")

    scen = sub.add_parser("scenario", parents=[common], help="play a scripted scenario file",
                          description="Play a YAML scenario: timed events and connection actions.")
    scen.add_argument("file", help="scenario YAML file")
    scen.add_argument("--check", action="store_true", help="only validate the file, connect nothing")
    scen.add_argument("--connect-timeout", type=_non_negative, default=10.0, metavar="SECONDS",
                      help="give up if the devices are not all connected after this long (default 10)")

    press = sub.add_parser("press", parents=[common], help="one device sends one event and disconnects",
                           description="Connect as SERIAL, publish online and one event, disconnect cleanly "
                                       "(no last will, and no 'offline' unless --offline-after).")
    press.add_argument("serial", help="device serial, e.g. SIM-00001")
    press.add_argument("--type", default=EventType.BUTTON_PRESS.value,
                       choices=[t.value for t in EventType], metavar="TYPE",
                       help="event type (default button_press), e.g. fall_detected, pull_cord, cancel")
    press.add_argument("--confidence", type=float, default=None, help="confidence 0..1 for fall_detected")
    press.add_argument("--level", type=int, default=None, help="level 0-100 for a battery event")
    press.add_argument("--version", type=int, default=None, help="version for config_applied/config_failed")
    press.add_argument("--reason", default=None, help="reason for config_failed")
    press.add_argument("--offline-after", action="store_true",
                       help="publish retained 'offline' before disconnecting")
    press.add_argument("--client-id", default=None,
                       help="MQTT client id (default SERIAL-press-PID, so a running fleet is not kicked off)")

    scaip = sub.add_parser("scaip", help="a SCAIP social alarm sends messages to the SCAIP receiver",
                           description="Send SIP MESSAGEs with an <mrq> as a SCAIP unit does (docs/scaip.md): "
                                       "answers the digest challenge, resends over UDP until answered (32 s). "
                                       "Exit 0 when every message was taken (status number 0).")
    scaip.add_argument("cid", help="the unit's controller id (alarmcentre devices scaip SERIAL --cid CID)")
    scaip.add_argument("--type", choices=sorted(SCAIP_MESSAGES), default="alarm",
                       help="alarm (ME 0010), cancel (RE), heartbeat (PI) or info (IN); default alarm")
    scaip.add_argument("--stc", help="status code instead of the type's own (e.g. 0067 for an unmapped alarm)")
    scaip.add_argument("--host", default="127.0.0.1", help="the receiver's address (default 127.0.0.1)")
    scaip.add_argument("--port", type=int, default=5060,
                       help="the receiver's port (default 5060; the demo's banner says which)")
    scaip.add_argument("--transport", choices=["udp", "tcp"], default="udp", help="default udp")
    scaip.add_argument("--password-file", help="file holding the unit's SIP password (none: no authentication)")
    scaip.add_argument("--callback", help="where the unit takes a call, e.g. gsm:+37120000000 (its <crd>)")
    scaip.add_argument("--count", type=_positive_int, default=1, help="messages to send (default 1)")
    scaip.add_argument("--interval", type=_non_negative, default=1.0, metavar="SECONDS",
                       help="pause between messages (default 1)")
    scaip.add_argument("-v", "--verbose", action="store_true", help="print every answer")

    dc09 = sub.add_parser("dc09", help="a SIA DC-09 alarm panel sends events to the DC-09 receiver",
                          description="Send SIA DCS frames as a DC-09 panel does (docs/dc09.md), encrypted with "
                                      "--key-file; the same frame again when no answer comes (3 tries). "
                                      "Exit 0 when every frame was ACKed.")
    dc09.add_argument("account", help="the panel's account number (alarmcentre devices dc09 SERIAL --account N)")
    dc09.add_argument("--type", choices=sorted(DC09_EVENTS), default="alarm",
                      help="alarm (MA), cancel (OC), link-test (NULL), periodic-test (RP), low-battery (YT), "
                           "mains-lost (AT), mains-back (AR); default alarm")
    dc09.add_argument("--host", default="127.0.0.1", help="the receiver's address (default 127.0.0.1)")
    dc09.add_argument("--port", type=int, default=12128,
                      help="the receiver's port (default 12128; the demo's banner says which)")
    dc09.add_argument("--transport", choices=["tcp", "udp"], default="tcp", help="default tcp")
    dc09.add_argument("--key-file", help="file holding the panel's AES key (none: unencrypted frames)")
    dc09.add_argument("--key-format", choices=["hex", "ascii"], default="hex",
                      help="hex: 32/48/64 hex digits (default); ascii: the 16/24/32 characters are the key")
    dc09.add_argument("--count", type=_positive_int, default=1, help="frames to send (default 1)")
    dc09.add_argument("--interval", type=_non_negative, default=1.0, metavar="SECONDS",
                      help="pause between frames (default 1)")
    dc09.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    return parser


def _install_stop(stop: asyncio.Event, console: Console, stats: Callable[[], Stats]) -> None:
    """First Ctrl-C (or SIGTERM) stops cleanly with a summary; a second one quits at once.

    Quitting at once means what it says: the summary so far, then the process
    ends without goodbyes, the sockets close and the broker publishes the wills
    of the devices still connected (as if the power of 10,000 homes went out).
    """
    loop = asyncio.get_running_loop()

    def second() -> None:
        console.note("quitting at once: the broker will publish the last will of every connected device")
        print(stats().summary(), flush=True)
        os._exit(130)

    def first(signame: str) -> None:
        console.note(f"{signame}: stopping cleanly (Ctrl-C again to quit at once)")
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, second)

    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows, nor outside the main thread: Ctrl-C then just interrupts.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, first, sig.name)


def _run_async(factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(factory())
    except KeyboardInterrupt:
        return 130


def _finish(stats: Stats, console: Console) -> int:
    """Print the summary; exit 1 if an event was never acknowledged or no device ever connected.

    A publish that failed but was delivered from the outbox after a reconnect is
    shown in the summary but is no failure of the run: that is the protocol working.
    """
    with contextlib.suppress(BrokenPipeError):
        print(stats.summary(), flush=True)
    failed = stats.undelivered > 0 or (stats.devices > 0 and not stats.devices_connected)
    return EXIT_FAILED if failed else EXIT_OK


def _device_ids(args: argparse.Namespace) -> list[str]:
    if args.device_id:
        if args.devices is not None:
            raise SimulatorError("give either --devices/--prefix or --device-id, not both")
        if len(set(args.device_id)) != len(args.device_id):
            raise SimulatorError("--device-id lists a serial twice")
        return [check_device_id(d) for d in args.device_id]
    return serials(args.prefix, args.devices or 1, args.start, args.digits)


async def _cmd_run(args: argparse.Namespace, broker: BrokerAddress, console: Console) -> int:
    device_ids = args.resolved_ids
    soft, _hard = raise_open_file_limit()
    if 0 < soft < len(device_ids) + 100:
        console.note(f"warning: only {soft} open files allowed (ulimit -n); {len(device_ids)} devices need "
                     "one each. Raise the hard limit (ulimit -Hn) or run fewer devices per process.")
    own_loop_executor(asyncio.get_running_loop(), args.connect_batch)
    fleet = Fleet(
        broker,
        device_ids,
        heartbeat_interval=args.heartbeat_interval or None,
        battery_start=args.battery,
        battery_drain=args.battery_drain,
        press_rate=args.press_rate,
        fall_rate=args.fall_rate,
        power_cut_rate=args.power_cut_rate,
        power_cut_duration=args.power_cut_duration,
        keepalive=args.keepalive,
        offline_on_stop=not args.no_offline,
        serial_login=args.serial_login,
        alarm_lane=not args.legacy_alarm_topic,
        rate_limit=args.rate_limit or None,
        connect_batch=args.connect_batch,
        console=console,
        report_every=args.report_every,
        seed=args.seed,
    )
    stop = asyncio.Event()
    _install_stop(stop, console, lambda: fleet.stats)
    stats = await fleet.run(stop, duration=args.duration)
    return _finish(stats, console)


async def _cmd_scenario(args: argparse.Namespace, broker: BrokerAddress, console: Console) -> int:
    stop = asyncio.Event()
    stats = Stats()
    _install_stop(stop, console, lambda: stats)
    await run_scenario(args.scenario, broker, console=console, stop=stop, stats=stats,
                       connect_timeout=args.connect_timeout, serial_login=args.serial_login,
                       alarm_lane=not args.legacy_alarm_topic)
    return _finish(stats, console)


_PRESS_FIELDS = ("confidence", "level", "version", "reason")


def _check_press(args: argparse.Namespace) -> None:
    """Refuse an event the centre would refuse, with the same rules as a scenario step."""
    fields = {name: getattr(args, name) for name in _PRESS_FIELDS if getattr(args, name) is not None}
    try:
        Step.model_validate({"at": 0, "type": args.type, **fields})
    except ValidationError as exc:
        problems = "; ".join(str(err["msg"]).removeprefix("Value error, ")
                             for err in exc.errors(include_url=False))
        raise SimulatorError(f"{args.type}: {problems}") from None


async def _cmd_press(args: argparse.Namespace, broker: BrokerAddress, console: Console) -> int:
    fields = {name: getattr(args, name) for name in _PRESS_FIELDS if getattr(args, name) is not None}
    stats = await press_once(broker, args.serial, args.type, fields=fields, console=console,
                             offline_after=args.offline_after, client_id=args.client_id,
                             serial_login=args.serial_login, alarm_lane=not args.legacy_alarm_topic)
    ok = stats.published.get(args.type, 0) == 1
    console.note(f"{args.serial}: {args.type} "
                 + ("acknowledged by the broker" if ok else "NOT acknowledged"))
    return EXIT_OK if ok and stats.total_failed == 0 else EXIT_FAILED


def _cmd_scaip(args: argparse.Namespace, console: Console) -> int:
    import secrets
    import time
    from pathlib import Path

    try:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
    except OSError as exc:
        print(f"alarmcentre-sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    unit = ScaipUnit(args.host, args.port, args.cid, password, transport=args.transport)
    taken = 0
    try:
        for number in range(args.count):
            if number:
                time.sleep(args.interval)
            ref = secrets.token_hex(6)
            try:
                answer = unit.send(scaip_mrq(ref=ref, cid=args.cid, kind=args.type, stc=args.stc,
                                             callback=args.callback))
            except ScaipError as exc:
                console.note(f"{args.cid}: {args.type} {ref}: {exc}")
                continue
            taken += answer.taken
            if args.verbose or not answer.taken:
                console.note(f"{args.cid}: {args.type} {ref}: SIP {answer.status}, status number {answer.snu}"
                             + (f" ({answer.text})" if answer.text else "")
                             + (f", sent {answer.sends} times" if answer.sends > 1 else ""))
    finally:
        unit.close()
    console.note(f"{args.cid}: {taken} of {args.count} {args.type} message(s) taken by the receiver")
    return EXIT_OK if taken == args.count else EXIT_FAILED


def _cmd_dc09(args: argparse.Namespace, console: Console) -> int:
    import time
    from pathlib import Path

    from alarmcentre.receivers.dc09 import parse_key

    try:
        key = parse_key(Path(args.key_file).read_text(), args.key_format) if args.key_file else None
    except (OSError, ValueError) as exc:
        print(f"alarmcentre-sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    panel = Dc09Panel(args.host, args.port, args.account.upper(), key, transport=args.transport)
    taken = 0
    for number in range(args.count):
        if number:
            time.sleep(args.interval)
        answer = panel.send(args.type)
        taken += answer.taken
        if args.verbose or not answer.taken:
            console.note(f"{panel.account}: {args.type} {panel.sequence:04d}: "
                         + (f"{answer.kind} ({answer.text})" if answer.kind else "no answer")
                         + (f", sent {answer.sends} times" if answer.sends > 1 else ""))
    console.note(f"{panel.account}: {taken} of {args.count} {args.type} frame(s) acknowledged by the receiver")
    return EXIT_OK if taken == args.count else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mqtt").setLevel(logging.WARNING)  # paho's packet log is not for testers
    console = Console(verbose=args.verbose)
    if args.command == "scaip":  # no broker: SIP to the SCAIP receiver
        return _cmd_scaip(args, console)
    if args.command == "dc09":  # no broker: frames to the DC-09 receiver
        return _cmd_dc09(args, console)
    commands = {"run": _cmd_run, "scenario": _cmd_scenario, "press": _cmd_press}
    # Everything that can be checked without a broker is checked first (exit 2).
    try:
        passwords = load_credentials(args.credentials) if args.credentials else None
        broker = BrokerAddress.from_url(args.url or default_url(), cafile=args.cafile, passwords=passwords)
        if args.command == "run":
            args.resolved_ids = _device_ids(args)
        elif args.command == "press":
            check_device_id(args.serial)
            _check_press(args)
        elif args.command == "scenario":
            args.scenario = load_scenario(args.file)
            if args.check:
                sc = args.scenario
                console.note(f"{args.file}: OK, {len(sc.devices)} device(s), {len(sc.steps)} step(s)")
                return EXIT_OK
    except ScenarioError as exc:
        print(f"alarmcentre-sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SimulatorError as exc:
        parser.error(str(exc))
    try:
        return _run_async(lambda: commands[args.command](args, broker, console))
    except SimulatorError as exc:
        print(f"alarmcentre-sim: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
