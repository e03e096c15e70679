"""All settings in one place, read from the environment (prefix ALARMCENTRE_) or CLI options."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")
# Passwords that ship in examples (docker-compose's fallback among them): never in production.
DEFAULT_PASSWORDS = frozenset({"alarmcentre", "postgres", "password", "changeme", "secret"})
EMBEDDED_BROKER_PORT = 18830  # not 1883: a system Mosquitto often listens there already
DC09_PORT = 12128  # the SIA DC-09 receiver's default (panels are told it by the installer)
SCAIP_PORT = 5060  # SIP's own port: SCAIP devices are SIP user agents


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALARMCENTRE_", extra="ignore")

    env: Literal["development", "production"] = Field(
        "development", description="production: refuse to start with settings that are only safe for a demo")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="SQLite file, embedded broker state")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in data_dir")
    mqtt_url: str | None = Field(
        None, description="External broker: the centre's login on its centre listener, "
        "mqtt://alarmcentre:password@host:1884; default: embedded broker"
    )
    mqtt_client_id: str = "alarmcentre-ingest"
    ingest_url: str | None = Field(
        None, description="where the ingest reads device messages: the nodes of a RabbitMQ cluster, "
        "amqp://alarmcentre:password@node1:5672/,amqp://alarmcentre:password@node2:5672/ (its replicated "
        "queues; docs/brokers.md); default: subscribe on mqtt_url")
    ingest_worker: str | None = Field(
        None, description="this ingest worker's name on a RabbitMQ cluster, unique among the workers "
        "(default: the host name)")
    broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    broker_port: int = EMBEDDED_BROKER_PORT
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    metrics_port: int = Field(9101, description="/metrics, /healthz, /readyz of a standalone ingest or scheduler")
    admin_user: str | None = None
    admin_password: str | None = None
    token_ttl_hours: int = 12
    ingest_batch_max: int = Field(500, ge=1, description="messages committed per transaction at most")
    # Readiness (/readyz; alarmcentre/health.py).
    readiness_ingest_lag_s: float = Field(
        30, gt=0, description="not ready when a message received by the ingest has waited this long uncommitted")
    readiness_scheduler_lag_s: float = Field(
        60, gt=0, description="not ready when the scheduler's escalation sweep has not finished for this long")
    # Dispatch and escalation.
    ack_alert_after_s: int = Field(60, ge=5, description="alert supervisors when an incident waits this long")
    ack_alert_repeat_s: int = Field(120, ge=10, description="repeat the alert while still unacknowledged")
    reopen_window_minutes: int = Field(30, ge=0, description="a resolved incident can be reopened this long")
    sweep_interval_s: float = Field(1.0, gt=0, description="how often due timers and queued SMS are handled")
    # SMS. Twilio when all three are set, else the outbox (messages stored, shown, never sent).
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from_number: str | None = None
    twilio_api_base: str | None = Field(None, description="another base URL for Twilio's REST API (tests)")
    public_url: str | None = Field(
        None, description="the centre's public base URL, as Twilio calls it (webhook signatures, status callbacks)"
    )
    sms_min_interval_s: int = Field(5, ge=0, description="per number: least time between two texts")
    sms_max_per_hour: int = Field(30, ge=1, description="per number: most texts in an hour (carrier spam limits)")
    sms_max_attempts: int = Field(4, ge=1, description="tries for a text on transient provider errors")
    # Bounds on what texting can cost (alarmcentre/dispatch/sms.py; docs/dispatch.md "What texts cost: bounds").
    sms_allowed_countries: str = Field(
        "371", pattern=r"^\s*\+?[1-9]\d{0,5}(\s*,\s*\+?[1-9]\d{0,5})*\s*$",
        description="comma-separated calling codes (371, 370, 44) or longer number prefixes (1204) a text may "
        "go to; the centre's automatic replies to any other number fail unsent (texts of an alarm are not "
        "refused by country)")
    sms_global_max_per_hour: int = Field(
        600, ge=1, description="all numbers: most texts in an hour; over it replies wait (dispatch texts never)")
    sms_country_max_per_hour: int = Field(
        200, ge=1, description="each allowed country but Latvia: most texts to it in an hour; over it replies "
        "wait (dispatch texts never)")
    # Device care and operator tasks (alarmcentre/care.py; docs/device-care.md).
    welfare_check_days: int = Field(14, ge=1, description="no contact for this long opens a welfare-check task")
    local_timezone: str = Field("Europe/Riga", description="zone in which due dates are shown to staff")
    supervision_tolerance: float = Field(
        3.0, gt=0, description="supervision window = heartbeat interval x this, for models without a preset"
    )
    supervision_interval_s: float = Field(10.0, gt=0, description="how often silent devices are looked for")
    care_interval_s: float = Field(60.0, gt=0, description="how often welfare, battery, power, config jobs run")
    dead_letter_retention_days: int = Field(90, ge=1, description="refused device messages are kept this long")
    device_event_retention_days: int = Field(
        400, ge=30, description="raw device events are kept this long (incidents and their timelines stay)")
    battery_low_percent: int = Field(20, ge=1, le=100, description="a battery under this is low")
    battery_ok_percent: int = Field(80, ge=1, le=100, description="a battery at or over this counts as replaced")
    power_loss_grace_s: int = Field(300, ge=0, description="mains lost longer than this: phone the client")
    config_pending_hours: float = Field(24, gt=0, description="a configuration not applied within this: work order")
    monthly_test_days: int = Field(30, ge=1, description="no test call for this long: remind the client")
    config_publish_timeout_s: float = Field(5.0, gt=0, description="wait this long for the broker's PUBACK")
    # Home-care visits (alarmcentre/visits; docs/visits.md).
    missed_visit_after_minutes: int = Field(
        30, ge=1, description="a planned visit with no arrival this long after its window opened: operator task")
    # The end-to-end canary (alarmcentre/canary.py).
    canary_interval_s: float = Field(60, gt=0, description="a test alarm through the real broker this often")
    canary_bound_s: float = Field(10, gt=0, description="a test alarm must reach the dashboards' feed within this")
    canary_serial: str = Field("canary", description="the canary device's serial and broker username")
    canary_mqtt_url: str | None = Field(
        None, description="broker login of the canary device on the device listener "
        "(mqtt://canary:PASSWORD@host:1883); default with the embedded broker: made automatically; "
        "unset with an external broker: no canary")
    # Operator dashboard.
    access_key: str | None = Field(
        None, description="key for door/key-safe codes (Fernet; several, newest first, "
        "while rotating); default: generated into data_dir/access.key")
    session_ttl_hours: float = Field(13, gt=0, description="a dashboard login lasts this long (a 12-hour shift)")
    secure_cookies: bool = Field(False, description="mark the session cookie Secure (set it behind HTTPS)")
    trusted_proxies: str = Field(
        "", description="comma-separated addresses of reverse proxies whose X-Forwarded-For is believed; "
        "for anyone else the connection's own address counts (login throttling)")
    answer_target_s: int = Field(60, ge=1, description="an alarm should be answered within this (green)")
    answer_limit_s: int = Field(180, ge=1, description="an alarm waiting longer than this is late (red)")
    live_poll_s: float = Field(0.25, gt=0, description="how often the live feed looks for changes")
    # The SIA DC-09 receiver (alarmcentre/receivers; docs/dc09.md): TCP and UDP on one port.
    dc09_host: str = Field("127.0.0.1", description="address the DC-09 receiver listens on (0.0.0.0: every one)")
    dc09_port: int = Field(DC09_PORT, ge=0, le=65535,
                           description="DC-09 receiver port, TCP and UDP (0: a free one); `up` takes a free one "
                           "when this one is taken")
    dc09_allow_unencrypted: bool | None = Field(
        None, description="take frames of DC-09 accounts that have no AES key (anyone who knows the account number "
        "can forge them); unset: yes, except under ALARMCENTRE_ENV=production")
    # The SCAIP receiver (alarmcentre/receivers; docs/scaip.md): SIP over TCP and UDP on one port.
    scaip_host: str = Field("127.0.0.1", description="address the SCAIP receiver listens on (0.0.0.0: every one)")
    scaip_port: int = Field(SCAIP_PORT, ge=0, le=65535,
                            description="SCAIP receiver port, TCP and UDP (0: a free one); `up` takes a free one "
                            "when this one is taken")
    scaip_realm: str = Field("alarmcentre", min_length=1, max_length=64, pattern=r'^[^"\\]+$',
                             description="the SIP digest realm SCAIP devices answer the challenge for")
    scaip_allow_unauthenticated: bool | None = Field(
        None, description="take messages of SCAIP devices that have no password (anyone who knows the cid can "
        "forge them); unset: yes, except under ALARMCENTRE_ENV=production")
    log_json: bool = False
    log_level: str = "INFO"

    @property
    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from_number)

    def production_problems(self, *, command: str) -> list[str]:
        """What makes these settings unsafe for production (empty outside ALARMCENTRE_ENV=production)."""
        if self.env != "production":
            return []
        problems = []
        if command == "demo":
            problems.append("`alarmcentre demo` seeds known passwords: never in production")
        if not self.database_url or self.resolved_database_url().startswith("sqlite"):
            problems.append("no ALARMCENTRE_DATABASE_URL: production runs on PostgreSQL, not the demo's SQLite")
        else:
            from sqlalchemy.engine import make_url

            if (make_url(self.resolved_database_url()).password or "") in DEFAULT_PASSWORDS:
                problems.append("the database password is a default one (see docker-compose.yml: POSTGRES_PASSWORD)")
        if command in ("up", "demo") and not self.mqtt_url:
            problems.append("no ALARMCENTRE_MQTT_URL: the embedded broker is for the demo; run Mosquitto with "
                            "config/mosquitto/")
        if not self.access_key:
            problems.append("no ALARMCENTRE_ACCESS_KEY: a key generated into the data directory is lost with it "
                            "(make one with `alarmcentre access-key`, keep it apart from the backups)")
        if not self.secure_cookies:
            problems.append("ALARMCENTRE_SECURE_COOKIES is off: dashboard sessions would travel without TLS")
        return problems

    @property
    def dc09_unencrypted_allowed(self) -> bool:
        if self.dc09_allow_unencrypted is not None:
            return self.dc09_allow_unencrypted
        return self.env != "production"

    @property
    def scaip_unauthenticated_allowed(self) -> bool:
        if self.scaip_allow_unauthenticated is not None:
            return self.scaip_allow_unauthenticated
        return self.env != "production"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'alarmcentre.sqlite3').resolve()}"


def normalise_database_url(url: str) -> str:
    """Accept the plain postgresql:// URLs people paste, and use psycopg 3 for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
