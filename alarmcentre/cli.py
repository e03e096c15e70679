"""The `alarmcentre` command."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alarmcentre import __version__
from alarmcentre.config import Settings

log = logging.getLogger("alarmcentre")

EPILOG = """\
Every option can also be set in the environment: ALARMCENTRE_DATABASE_URL, ALARMCENTRE_MQTT_URL,
ALARMCENTRE_DATA_DIR, ALARMCENTRE_API_PORT, ALARMCENTRE_BROKER_PORT, ALARMCENTRE_ADMIN_USER,
ALARMCENTRE_ADMIN_PASSWORD, ALARMCENTRE_LOG_JSON ... (see the README, "Configuration").
"""

METRICS_PORT_HELP = "port of this process's /metrics, /healthz and /readyz (default 9101, 0: none)"


def _common(parser: argparse.ArgumentParser, *, api: bool = False, broker: bool = False) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql://user@host/db "
                        "(default: SQLite file in the data directory)")
    parser.add_argument("--data-dir", help="where the SQLite file and embedded broker state live (default: ./data)")
    parser.add_argument("--log-json", action="store_true", default=None, help="log one JSON object per line")
    if broker:
        parser.add_argument("--mqtt-url", help="use this broker instead of starting an embedded one: the centre's "
                            "login on its centre listener (mqtt://alarmcentre:password@host:1884)")
        parser.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"],
                            help="embedded broker: auto prefers an installed mosquitto binary, else amqtt")
        parser.add_argument("--broker-port", type=int, help="embedded broker port for devices (default 18830)")
    if api:
        parser.add_argument("--host", dest="api_host", help="API address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", dest="api_port", type=int, help="API port (default 8000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alarmcentre",
        description="Safety-button alarm monitoring centre: MQTT ingest, incidents, API.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"alarmcentre {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="everything in one process: embedded broker, SQLite, ingest, scheduler, API")
    _common(up, api=True, broker=True)

    demo = sub.add_parser("demo", help="`up` plus demo clients, devices, staff logins and simulated devices")
    _common(demo, api=True, broker=True)
    demo.add_argument("--devices", type=int, default=10, help="simulated devices (default 10)")
    demo.add_argument("--press-rate", type=float, default=3.0,
                      help="button presses per device per hour (default 3: an alarm every ~2 minutes)")

    api = sub.add_parser("api", help="the HTTP API alone (production: several may run)")
    _common(api, api=True)

    ingest = sub.add_parser("ingest", help="the ingest alone, against an external broker (several may run on a "
                            "RabbitMQ cluster: each message goes to one of them)")
    _common(ingest)
    ingest.add_argument("--mqtt-url", help="MQTT broker URL (or ALARMCENTRE_MQTT_URL): subscribe there")
    ingest.add_argument("--ingest-url", help="the RabbitMQ cluster's nodes, amqp://user:pw@node1:5672/,amqp://... "
                        "(or ALARMCENTRE_INGEST_URL): consume its replicated queues instead; one of the two is "
                        "required")
    ingest.add_argument("--worker", dest="ingest_worker",
                        help="this worker's name on the cluster, unique per worker (or ALARMCENTRE_INGEST_WORKER; "
                        "default: the host name)")
    ingest.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP)

    dc09 = sub.add_parser("receive-dc09", help="the SIA DC-09 receiver alone: alarm panels over TCP and UDP")
    _common(dc09)
    dc09.add_argument("--host", dest="dc09_host", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    dc09.add_argument("--port", dest="dc09_port", type=int, help="TCP and UDP port (default 12128)")
    dc09.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP)

    scaip = sub.add_parser("receive-scaip", help="the SCAIP receiver alone: social alarms' SIP MESSAGEs, TCP and UDP")
    _common(scaip)
    scaip.add_argument("--host", dest="scaip_host", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    scaip.add_argument("--port", dest="scaip_port", type=int, help="TCP and UDP port (default 5060)")
    scaip.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP)

    scheduler = sub.add_parser("scheduler", help="the periodic jobs alone")
    _common(scheduler)
    scheduler.add_argument("--metrics-port", type=int, help=METRICS_PORT_HELP)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser("upgrade", help="apply all migrations (safe to repeat)")
    _common(upgrade)

    users = sub.add_parser("users", help="staff accounts")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    create = users_sub.add_parser("create", help="create a user (password from --password-stdin or a prompt)")
    _common(create)
    create.add_argument("username")
    create.add_argument("--role", required=True, choices=["operator", "supervisor", "technician", "admin"])
    create.add_argument("--full-name", default="")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    unlock = users_sub.add_parser("unlock", help="forget a username's failed logins (the growing waits "
                                   "between its attempts), from every address")
    _common(unlock)
    unlock.add_argument("username")
    disable = users_sub.add_parser("disable", help="a member of staff who left: the login stops working and every "
                                   "session and API token of it ends at once")
    _common(disable)
    disable.add_argument("username")
    enable = users_sub.add_parser("enable", help="let a disabled login log in again")
    _common(enable)
    enable.add_argument("username")
    password = users_sub.add_parser("set-password", help="a new password (from --password-stdin or a prompt); the "
                                    "login's open sessions end")
    _common(password)
    password.add_argument("username")
    password.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    sub.add_parser("access-key", help="print a new key for door and key-safe codes (ALARMCENTRE_ACCESS_KEY)")
    keys = sub.add_parser("keys", help="the key of door and key-safe codes")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = keys_sub.add_parser(
        "rotate", help="encrypt every client's access information again with a new key. Key file in the data "
        "directory: a new key is made, the old one kept beside it as access.key.retired-TIME for old backups. "
        "ALARMCENTRE_ACCESS_KEY: set it to NEW,OLD first (alarmcentre access-key makes NEW), then drop OLD")
    _common(rotate)

    integration = sub.add_parser("integration", help="API keys of other systems (the home-care service)")
    integration_sub = integration.add_subparsers(dest="integration_command", required=True, metavar="ACTION")
    create_key = integration_sub.add_parser(
        "create-key", help="create an API key of role integration (X-Api-Key); printed once, stored hashed")
    _common(create_key)
    create_key.add_argument("name", help="whose key, e.g. the home-care service's name")
    create_key.add_argument("--municipality", type=int, metavar="ID",
                            help="the one municipality (its id) whose clients, workers and visits the key may reach; "
                            "without it: every municipality")
    revoke_key = integration_sub.add_parser("revoke-key", help="stop a key at once (a leaked key, a system retired)")
    _common(revoke_key)
    revoke_key.add_argument("name", help="the name the key was created with")

    devices = sub.add_parser("devices", help="device broker logins")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    provision = devices_sub.add_parser(
        "provision", help="generate a device's broker login (printed once), write Mosquitto's password and ACL "
        "files, register the device if missing")
    _common(provision)
    provision.add_argument("serial", help="the device's serial: also its broker username")
    provision.add_argument("--password-file", default="config/mosquitto/passwords",
                           help="Mosquitto password_file to add the login to (default config/mosquitto/passwords)")
    provision.add_argument("--acl-file", default="config/mosquitto/acl",
                           help="Mosquitto acl_file that must confine devices to their topics "
                           "(default config/mosquitto/acl; created if missing)")
    provision.add_argument("--model", default="generic", help="device model when registering (default generic)")
    provision.add_argument("--rabbitmq-definitions", metavar="FILE",
                           help="a RabbitMQ cluster instead of Mosquitto: add the login to this definitions file "
                           "(created if missing; `rabbitmqctl import_definitions FILE` applies it), not to the "
                           "Mosquitto files")
    provision.add_argument("--embedded", action="store_true",
                           help="also let the device log in to the embedded broker of `alarmcentre up` "
                           "(stored in DATA_DIR/broker/credentials.json; applies at the next start)")
    revoke = devices_sub.add_parser(
        "revoke", help="shut a lost or stolen device out of the broker: remove its login (Mosquitto's password "
        "file, a RabbitMQ definitions file, the embedded broker's logins)")
    _common(revoke)
    revoke.add_argument("serial", help="the device's serial (its broker username)")
    revoke.add_argument("--password-file", default="config/mosquitto/passwords",
                        help="Mosquitto password_file to remove the login from (default config/mosquitto/passwords)")
    revoke.add_argument("--rabbitmq-definitions", metavar="FILE",
                        help="a RabbitMQ cluster instead of Mosquitto: remove the login from this definitions file")
    revoke.add_argument("--embedded", action="store_true",
                        help="also remove it from the embedded broker's logins (DATA_DIR/broker/credentials.json; "
                        "applies at the next start of `alarmcentre up`)")
    rabbit = sub.add_parser(
        "rabbitmq-definitions", help="write the centre's part of a RabbitMQ cluster into a definitions file: its "
        "replicated queues, their bindings, the device subscription policy and the centre's login (docs/brokers.md)")
    _common(rabbit)
    rabbit.add_argument("file", help="definitions file to create or bring up to date (device logins in it are kept)")
    rabbit.add_argument("--new-centre-password", action="store_true",
                        help="replace the centre's password (printed once); without it a new one is made only "
                        "when the file has no centre login")
    dc09_account = devices_sub.add_parser(
        "dc09", help="give a device a SIA DC-09 account (its panel's account number) and AES key; registers the "
        "device if missing (docs/dc09.md)")
    _common(dc09_account)
    dc09_account.add_argument("serial", help="the device's serial in the centre")
    dc09_account.add_argument("--account", required=True, help="the panel's account number, 3-16 hex digits")
    dc09_account.add_argument("--key-file", help="file holding the panel's AES key (none: unencrypted frames)")
    dc09_account.add_argument("--key-format", choices=["hex", "ascii"], default="hex",
                              help="hex: 32/48/64 hex digits (default); ascii: the 16/24/32 characters are the key")
    dc09_account.add_argument("--supervision-s", type=int,
                              help="the panel's link-test (or periodic test) interval in seconds: supervision "
                              "expects one at least this often (times the tolerance)")
    dc09_account.add_argument("--model", default="dc09-panel", help="device model when registering")
    scaip_device = devices_sub.add_parser(
        "scaip", help="give a device a SCAIP controller id (the <cid> it sends) and SIP digest password; registers "
        "the device if missing (docs/scaip.md)")
    _common(scaip_device)
    scaip_device.add_argument("serial", help="the device's serial in the centre")
    scaip_device.add_argument("--cid", required=True, help="the device's controller id, as in its <cid> tag")
    scaip_device.add_argument("--password-file",
                              help="file holding the device's SIP password, 8-128 characters (none: no "
                              "authentication)")
    scaip_device.add_argument("--supervision-s", type=int,
                              help="the device's heartbeat (PI) interval in seconds: supervision expects one at "
                              "least this often (times the tolerance)")
    scaip_device.add_argument("--model", default="scaip-unit", help="device model when registering")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    names = ("database_url", "data_dir", "log_json", "mqtt_url", "ingest_url", "ingest_worker", "broker",
             "broker_port", "api_host", "api_port",
             "metrics_port", "dc09_host", "dc09_port", "scaip_host", "scaip_port")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    from alarmcentre.runtime import configure_logging

    configure_logging(settings)
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "up": _cmd_up, "demo": _cmd_up, "api": _cmd_api, "ingest": _cmd_ingest, "scheduler": _cmd_scheduler,
        "receive-dc09": _cmd_receive_dc09, "receive-scaip": _cmd_receive_scaip,
        "db": _cmd_db, "users": _cmd_users, "devices": _cmd_devices,
        "integration": _cmd_integration, "access-key": _cmd_access_key, "keys": _cmd_keys,
        "rabbitmq-definitions": _cmd_rabbitmq_definitions,
    }
    from sqlalchemy.exc import OperationalError

    from alarmcentre.broker import BrokerError

    if args.command in ("up", "demo", "api", "ingest", "scheduler", "receive-dc09", "receive-scaip"):
        problems = settings.production_problems(command=args.command)
        if problems:
            print("alarmcentre: ALARMCENTRE_ENV=production, and these settings are not safe for it:\n"
                  + "\n".join(f"  - {problem}" for problem in problems), file=sys.stderr)
            return 2
    try:
        return handlers[args.command](args, settings)
    except (_UsageError, BrokerError) as exc:
        print(f"alarmcentre: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        from sqlalchemy.engine import make_url

        where = make_url(settings.resolved_database_url()).render_as_string(hide_password=True)
        print(f"alarmcentre: cannot use the database {where}: {exc.orig}", file=sys.stderr)
        return 1


class _UsageError(Exception):
    pass


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from alarmcentre.demo import NotADemoDatabase
    from alarmcentre.runtime import run_all_in_one

    try:
        return run_all_in_one(settings, demo=args.command == "demo",
                              demo_devices=getattr(args, "devices", 0), press_rate=getattr(args, "press_rate", 0.0))
    except NotADemoDatabase as exc:
        raise _UsageError(str(exc)) from exc


def _cmd_api(_args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from alarmcentre.app import create_app
    from alarmcentre.runtime import Database

    db = Database.open(settings)
    publisher = None
    if settings.mqtt_url:
        from alarmcentre.devices.publisher import ConfigPublisher

        publisher = ConfigPublisher(settings.mqtt_url, timeout_s=settings.config_publish_timeout_s)
    app = create_app(settings=settings, session_factory=db.sessions, config_publisher=publisher)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None)
    return 0


def _cmd_ingest(_args: argparse.Namespace, settings: Settings) -> int:
    from alarmcentre.health import HealthChecks, database_check, ingest_checks
    from alarmcentre.ingest.consumer import build_ingest
    from alarmcentre.runtime import Database, start_metrics_server

    if not settings.mqtt_url and not settings.ingest_url:
        raise _UsageError("ingest needs a broker: --mqtt-url or ALARMCENTRE_MQTT_URL (MQTT), or --ingest-url or "
                          "ALARMCENTRE_INGEST_URL (the queues of a RabbitMQ cluster)")
    db = Database.open(settings)
    try:
        consumer = build_ingest(settings, db.sessions)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    checks = HealthChecks({"database": database_check(db.sessions),
                           **ingest_checks(consumer, max_lag_s=settings.readiness_ingest_lag_s)})
    start_metrics_server(settings, checks)
    consumer.start()
    _wait_for_signal()
    consumer.stop()
    return 0


def _cmd_receive_dc09(_args: argparse.Namespace, settings: Settings) -> int:
    from alarmcentre.clients.access import AccessCipher
    from alarmcentre.receivers.dc09 import Dc09Receiver
    from alarmcentre.receivers.dc09_server import dc09_server

    def server(db: Any) -> Any:
        receiver = Dc09Receiver(db.sessions, settings=settings, cipher=AccessCipher(settings).get)
        return dc09_server(receiver, host=settings.dc09_host, port=settings.dc09_port)

    return _serve_receiver("DC-09 receiver", server, settings)


def _cmd_receive_scaip(_args: argparse.Namespace, settings: Settings) -> int:
    from alarmcentre.clients.access import AccessCipher
    from alarmcentre.receivers.scaip import ScaipReceiver
    from alarmcentre.receivers.scaip_server import scaip_server

    def server(db: Any) -> Any:
        receiver = ScaipReceiver(db.sessions, settings=settings, cipher=AccessCipher(settings).get)
        return scaip_server(receiver, host=settings.scaip_host, port=settings.scaip_port)

    return _serve_receiver("SCAIP receiver", server, settings)


def _serve_receiver(title: str, make_server: Callable[[Any], Any], settings: Settings) -> int:
    """A receiver (receivers/server.py) alone in this process, with its metrics and readiness."""
    import asyncio
    import contextlib

    from alarmcentre.health import HealthChecks, database_check
    from alarmcentre.runtime import Database, start_metrics_server

    db = Database.open(settings)
    start_metrics_server(settings, HealthChecks({"database": database_check(db.sessions)}))
    server = make_server(db)

    async def serve() -> None:
        try:
            await server.start()
        except OSError as exc:
            raise _UsageError(f"cannot listen on {server.host}:{server.port}: {exc}") from exc
        print(f"{title} on tcp and udp {server.host}:{server.port}", flush=True)
        try:
            await server.serve_forever()
        finally:
            await server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


def _cmd_scheduler(_args: argparse.Namespace, settings: Settings) -> int:
    from alarmcentre.health import HealthChecks, database_check
    from alarmcentre.runtime import Database, start_metrics_server
    from alarmcentre.scheduler import build_scheduler, readiness_check

    db = Database.open(settings)
    scheduler = build_scheduler(db.sessions, settings=settings)
    checks = HealthChecks({"database": database_check(db.sessions),
                           "scheduler": readiness_check(scheduler, max_age_s=settings.readiness_scheduler_lag_s)})
    start_metrics_server(settings, checks)
    scheduler.start()
    _wait_for_signal()
    scheduler.shutdown(wait=True)
    return 0


def _cmd_db(_args: argparse.Namespace, settings: Settings) -> int:
    from alarmcentre.runtime import Database

    Database.open(settings, upgrade=True)
    print("database is at the latest schema")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise _UsageError("the passwords differ")
        return password
    raise _UsageError("no terminal to ask the password on: use --password-stdin")


def _cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from alarmcentre.db import transaction
    from alarmcentre.runtime import Database
    from alarmcentre.users import service
    from alarmcentre.users.models import Role

    if args.users_command == "unlock":
        with transaction(Database.open(settings).sessions) as session:
            cleared = service.clear_throttles(session, username=args.username)
        print(f"{args.username}: {cleared} login throttle(s) cleared")
        return 0
    if args.users_command in ("disable", "enable", "set-password"):
        return _change_user(args, settings)
    password = _read_password(args)
    db = Database.open(settings)
    try:
        with transaction(db.sessions) as session:
            user = service.create_user(session, username=args.username, password=password, role=Role(args.role),
                                       full_name=args.full_name)
            print(f"created {user.role} {user.username}")
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    return 0


def _change_user(args: argparse.Namespace, settings: Settings) -> int:
    """`users disable|enable|set-password USERNAME`: effective at once in every process (sessions are rows)."""
    from alarmcentre.db import transaction
    from alarmcentre.incidents import service as incidents
    from alarmcentre.runtime import Database
    from alarmcentre.users import service

    password = _read_password(args) if args.users_command == "set-password" else None
    db = Database.open(settings)
    try:
        with transaction(db.sessions, writes=True) as session:
            user = service.find_user(session, args.username)
            if user is None:
                raise _UsageError(f"no user {args.username!r}")
            if password is not None:
                ended = service.set_password(session, user=user, password=password)
                print(f"{user.username}: password changed; {ended} open session(s) ended")
            else:
                ended = service.set_active(session, user=user, active=args.users_command == "enable")
                owned = incidents.count_owned_open(session, user_id=user.id)
                print(f"{user.username}: {'enabled' if user.active else f'disabled; {ended} open session(s) ended'}"
                      + (f"; owns {owned} open incident(s): hand them over on the dashboard" if owned and
                         not user.active else ""))
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    finally:
        db.engine.dispose()
    return 0


def _cmd_access_key(_args: argparse.Namespace, _settings: Settings) -> int:
    """A Fernet key for the access information; keep it apart from database backups."""
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())
    return 0


def _cmd_keys(_args: argparse.Namespace, settings: Settings) -> int:
    """`keys rotate`: every access record encrypted again with the new key, in one transaction."""
    import os
    from datetime import UTC, datetime

    from cryptography.fernet import Fernet

    from alarmcentre.clients import access
    from alarmcentre.db import transaction
    from alarmcentre.runtime import Database

    db = Database.open(settings)
    try:
        if settings.access_key:
            cipher = access.load_cipher(settings)
            if len([key for key in settings.access_key.split(",") if key.strip()]) < 2:
                raise _UsageError("ALARMCENTRE_ACCESS_KEY holds one key: set it to NEW,OLD (make NEW with "
                                  "`alarmcentre access-key`), restart the centre with it, then rotate")
            with transaction(db.sessions) as session:
                count = access.rotate_key(session, cipher)
            log.warning("access key rotated: %d access records encrypted again with the first key", count)
            print(f"{count} access records encrypted with the first key of ALARMCENTRE_ACCESS_KEY; remove the "
                  "older keys from it and restart. Keep them only with the backups made before now.")
            return 0
        path = access.key_file(settings)
        access.load_cipher(settings)  # checks the key file (and makes one when there is none)
        old = path.read_text().strip()
        new = Fernet.generate_key().decode()
        cipher = access._parse_keys(f"{new},{old}", str(path))
        with transaction(db.sessions) as session:
            count = access.rotate_key(session, cipher)
            # Committed only once the new key is on disk: a crash in between leaves records the kept key reads.
            retired = path.with_name(f"access.key.retired-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
            fd = os.open(retired, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(old + "\n")
            tmp = path.with_name("access.key.new")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f"{new}\n{old}\n")  # both until the commit; the old one goes below
            os.replace(tmp, path)
        path.write_text(new + "\n")
    except access.AccessKeyError as exc:
        raise _UsageError(str(exc)) from exc
    finally:
        db.engine.dispose()
    log.warning("access key rotated: %d access records encrypted again; old key kept in %s", count, retired.name)
    print(f"{count} access records encrypted with a new key in {path}; the old key is in {retired} "
          "(it reads only backups made before now: keep it with them, apart from the database)")
    return 0


def _cmd_integration(args: argparse.Namespace, settings: Settings) -> int:
    """`integration create-key NAME`: the key is printed once; only its digest is stored. `revoke-key NAME`."""
    from alarmcentre.db import transaction
    from alarmcentre.runtime import Database
    from alarmcentre.users import service

    db = Database.open(settings)
    try:
        with transaction(db.sessions) as session:
            if args.integration_command == "revoke-key":
                if not service.revoke_integration_key(session, name=args.name):
                    raise _UsageError(f"no live integration key {args.name!r}")
                print(f"integration key {args.name!r} revoked: refused from now on")
                return 0
            key = service.create_integration_key(session, name=args.name, municipality_id=args.municipality)
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    finally:
        db.engine.dispose()
    print(key)
    reach = f"municipality {args.municipality} only" if args.municipality else "every municipality"
    print(f"integration key {args.name!r} created for {reach}: send it as the X-Api-Key header; it is not shown "
          "again", file=sys.stderr)
    return 0


def _cmd_devices(args: argparse.Namespace, settings: Settings) -> int:
    """`devices provision`: the password is printed once and stored only hashed (except --embedded)."""
    if args.devices_command == "dc09":
        return _cmd_devices_dc09(args, settings)
    if args.devices_command == "scaip":
        return _cmd_devices_scaip(args, settings)
    if args.devices_command == "revoke":
        return _cmd_devices_revoke(args, settings)
    import json

    from alarmcentre.broker import provision
    from alarmcentre.db import transaction
    from alarmcentre.devices import service
    from alarmcentre.devices.schemas import DeviceIn
    from alarmcentre.runtime import BrokerCredentials, Database

    serial = args.serial
    try:
        provision.check_serial(serial)
    except provision.ProvisionError as exc:
        raise _UsageError(str(exc)) from exc
    db = Database.open(settings)
    with transaction(db.sessions) as session:
        registered = service.get_by_serial(session, serial) is None
        if registered:
            service.register_device(session, data=DeviceIn(serial=serial, model=args.model))
    password = provision.new_password()
    if args.rabbitmq_definitions:
        return _provision_on_rabbitmq(Path(args.rabbitmq_definitions), serial, password, registered=registered)
    added = provision.ensure_acl(Path(args.acl_file))
    new_login = provision.set_password(Path(args.password_file), serial, password)
    if args.embedded:
        creds = BrokerCredentials.load_or_create(settings.data_dir)
        creds.passwords[serial] = password
        path = settings.data_dir / "broker" / "credentials.json"
        path.write_text(json.dumps(creds.passwords))
        path.chmod(0o600)
    print(f"device {serial}: {'registered, ' if registered else ''}"
          f"{'new broker login' if new_login else 'broker password replaced'} in {args.password_file}"
          + (f"; ACL {args.acl_file}: added {len(added)} pattern lines" if added else ""))
    print(f"username: {serial}")
    print(f"password: {password}")
    print("The password is shown only this once. Reload Mosquitto (SIGHUP) to apply the files.")
    return 0


def _provision_on_rabbitmq(path: Path, serial: str, password: str, *, registered: bool) -> int:
    from alarmcentre.broker import rabbitmq

    definitions = rabbitmq.load(path)
    new_login = rabbitmq.set_login(definitions, serial, password)
    rabbitmq.save(path, definitions)
    print(f"device {serial}: {'registered, ' if registered else ''}"
          f"{'new broker login' if new_login else 'broker password replaced'} in {path}")
    print(f"username: {serial}")
    print(f"password: {password}")
    print(f"The password is shown only this once. Apply the file: rabbitmqctl import_definitions {path}")
    return 0


def _cmd_rabbitmq_definitions(args: argparse.Namespace, _settings: Settings) -> int:
    """`rabbitmq-definitions FILE`: the centre's topology always current; its password printed once."""

    from alarmcentre.broker import provision, rabbitmq
    from alarmcentre.broker.acl import CENTRE_USER

    path = Path(args.file)
    try:
        definitions = rabbitmq.load(path)
    except (OSError, ValueError) as exc:
        raise _UsageError(f"{path}: not a definitions file: {exc}") from exc
    has_login = any(user.get("name") == CENTRE_USER for user in definitions["users"])
    password = None
    if args.new_centre_password or not has_login:
        password = provision.new_password()
        rabbitmq.set_login(definitions, CENTRE_USER, password)
    rabbitmq.save(path, definitions)
    devices = sum(1 for user in definitions["users"] if user.get("name") != CENTRE_USER)
    print(f"{path}: queues {', '.join(rabbitmq.QUEUES)}, the device subscription policy, "
          f"{devices} device logins kept")
    if password is not None:
        print(f"centre login: {CENTRE_USER}")
        print(f"password: {password}")
        print("The password is shown only this once: put it in ALARMCENTRE_INGEST_URL and ALARMCENTRE_MQTT_URL.")
    print(f"Apply it: rabbitmqctl import_definitions {path} (or load_definitions in rabbitmq.conf)")
    return 0


def _cmd_devices_revoke(args: argparse.Namespace, settings: Settings) -> int:
    """`devices revoke`: no database needed (it must work while the centre is in trouble); the device's
    record and history stay, so its incidents keep their device."""
    import json

    from alarmcentre.broker import provision, rabbitmq
    from alarmcentre.broker.acl import CENTRE_USER
    from alarmcentre.runtime import BrokerCredentials

    serial = args.serial
    if serial == CENTRE_USER or serial.lower().startswith(provision.RESERVED_PREFIX):
        raise _UsageError(f"{serial!r} is one of the centre's own logins, not a device's")
    removed: list[str] = []
    if args.rabbitmq_definitions:
        path = Path(args.rabbitmq_definitions)
        try:
            definitions = rabbitmq.load(path)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"{path}: not a definitions file: {exc}") from exc
        if rabbitmq.remove_login(definitions, serial):
            rabbitmq.save(path, definitions)
            removed.append(str(path))
    elif provision.remove_password(Path(args.password_file), serial):
        removed.append(args.password_file)
    if args.embedded:
        path = BrokerCredentials.path(settings.data_dir)
        passwords = json.loads(path.read_text()) if path.exists() else {}
        if passwords.pop(serial, None) is not None:
            path.write_text(json.dumps(passwords))
            path.chmod(0o600)
            removed.append(str(path))
    if not removed:
        print(f"device {serial}: no broker login found; nothing changed", file=sys.stderr)
        return 1
    print(f"device {serial}: broker login removed from {', '.join(removed)}")
    if args.rabbitmq_definitions:
        print(f"Apply it on the cluster: rabbitmqctl delete_user {serial} (importing the file removes nothing).")
    if args.password_file in removed and not args.rabbitmq_definitions:
        print("Reload Mosquitto (SIGHUP): it disconnects the device at once and refuses it from then on.")
    print("Its messages still count until the device is retired: PATCH /api/v1/devices/"
          f"{serial} {{\"status\": \"retired\"}} (or on its page in the dashboard).")
    return 0


def _cmd_devices_dc09(args: argparse.Namespace, settings: Settings) -> int:
    """`devices dc09 SERIAL --account N [--key-file F]`: the key is stored encrypted with the access key."""
    from alarmcentre.clients.access import AccessKeyError, load_cipher
    from alarmcentre.receivers import dc09

    try:
        key = dc09.parse_key(Path(args.key_file).read_text(), args.key_format) if args.key_file else None
        cipher = load_cipher(settings)
    except (OSError, ValueError, AccessKeyError) as exc:
        raise _UsageError(str(exc)) from exc
    if key is None and not settings.dc09_unencrypted_allowed:
        raise _UsageError("an account without a key is refused here (its frames could be forged by anyone who knows "
                          "the account number): give --key-file, or set ALARMCENTRE_DC09_ALLOW_UNENCRYPTED=true "
                          "for panels that cannot encrypt")
    registered, interval = _register_or_update(
        args, settings, lambda session, device: dc09.set_account(session, device=device, account=args.account,
                                                                 key=key, cipher=cipher))
    print(f"device {args.serial}: {'registered, ' if registered else ''}DC-09 account {args.account.upper()}, "
          f"{f'AES-{len(key) * 8} key stored encrypted' if key else 'no key (unencrypted frames)'}; "
          f"link tests expected every {interval} s")
    return 0


def _cmd_devices_scaip(args: argparse.Namespace, settings: Settings) -> int:
    """`devices scaip SERIAL --cid C [--password-file F]`: the password is stored encrypted with the access key."""
    from alarmcentre.clients.access import AccessKeyError, load_cipher
    from alarmcentre.receivers import scaip

    try:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
        cipher = load_cipher(settings)
    except (OSError, AccessKeyError) as exc:
        raise _UsageError(str(exc)) from exc
    if password is None and not settings.scaip_unauthenticated_allowed:
        raise _UsageError("a SCAIP device without a password is refused here (its messages could be forged by "
                          "anyone who knows its cid): give --password-file, or set "
                          "ALARMCENTRE_SCAIP_ALLOW_UNAUTHENTICATED=true for devices that cannot authenticate")
    registered, interval = _register_or_update(
        args, settings, lambda session, device: scaip.set_identity(session, device=device, cid=args.cid,
                                                                   password=password, cipher=cipher))
    print(f"device {args.serial}: {'registered, ' if registered else ''}SCAIP cid {args.cid.strip()}, "
          f"{'SIP digest password stored encrypted' if password else 'no password (no authentication)'}; "
          f"heartbeats expected every {interval} s")
    return 0


def _register_or_update(args: argparse.Namespace, settings: Settings,
                        apply: Callable[[Any, Any], None]) -> tuple[bool, int]:
    """The device `args.serial` (registered as `args.model` when missing), changed by `apply` and given
    `args.supervision_s`: (whether it was registered, its heartbeat interval)."""
    from alarmcentre.db import transaction
    from alarmcentre.devices import service
    from alarmcentre.devices.schemas import DeviceIn
    from alarmcentre.runtime import Database

    db = Database.open(settings)
    try:
        with transaction(db.sessions, writes=True) as session:
            device = service.get_by_serial(session, args.serial)
            registered = device is None
            if device is None:
                device = service.register_device(session, data=DeviceIn(serial=args.serial, model=args.model))
            apply(session, device)
            if args.supervision_s:
                device.heartbeat_interval_s = args.supervision_s
            return registered, device.heartbeat_interval_s
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    finally:
        db.engine.dispose()


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    stop.wait()


if __name__ == "__main__":
    sys.exit(main())
