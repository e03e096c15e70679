"""Prometheus metrics of every part, in one registry (the default one)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter("alarmcentre_ingest_messages_received_total", "MQTT messages received by the ingest")
MESSAGES_ACCEPTED = Counter(
    "alarmcentre_ingest_messages_accepted_total", "Messages whose effect was committed", ["type"]
)
MESSAGES_REJECTED = Counter(
    "alarmcentre_ingest_messages_rejected_total", "Messages refused and dead-lettered", ["reason"]
)
MESSAGES_DUPLICATE = Counter(
    "alarmcentre_ingest_duplicates_total", "Redelivered messages dropped by (device, seq)"
)
MESSAGES_DEFERRED = Counter(
    "alarmcentre_ingest_deferred_total",
    "Messages of a device past its budget, set aside in deferred_messages (applied later, nothing lost)")
DEFERRED_APPLIED = Counter("alarmcentre_ingest_deferred_applied_total", "Set-aside messages applied since")
CLOCK_SKEWED_ALARMS = Counter(
    "alarmcentre_ingest_clock_skewed_alarms_total", "Alarms accepted despite a device clock running ahead"
)
INCIDENTS_RAISED = Counter("alarmcentre_incidents_raised_total", "Incidents opened", ["kind"])
INGEST_LAG = Histogram(
    "alarmcentre_ingest_lag_seconds",
    "From receipt by the ingest to commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INGEST_LAST_COMMIT = Gauge(
    "alarmcentre_ingest_last_commit_timestamp_seconds", "Unix time of the ingest's last committed batch"
)
INGEST_QUEUE = Gauge("alarmcentre_ingest_queue_depth", "Messages received, not yet committed")
# Every process exports every metric (one registry), so the ingest gauges below read 0 in an API or
# scheduler process too; alert rules join on this one to look only where an ingest runs.
INGEST_RUNNING = Gauge(
    "alarmcentre_ingest_running",
    "Ingest lanes running in this process, 2 per ingest (the other ingest gauges count only here)"
)
BROKER_CONNECTED = Gauge("alarmcentre_broker_connected", "1 while the ingest is connected to the broker")
BROKER_DISCONNECTS = Counter("alarmcentre_broker_disconnects_total", "Lost broker connections")
INGEST_SESSIONS_LOST = Counter(
    "alarmcentre_ingest_sessions_lost_total",
    "Reconnects where the broker no longer had the ingest's persistent session (what it queued may be lost)")
DATABASE_UP = Gauge("alarmcentre_ingest_database_up", "0 while the ingest cannot commit to the database")
DATABASE_ERRORS = Counter("alarmcentre_ingest_database_errors_total", "Failed batch commits (retried)")
OPEN_INCIDENTS = Gauge("alarmcentre_open_incidents", "Incidents not yet resolved", ["status"])
OLDEST_UNACKNOWLEDGED = Gauge(
    "alarmcentre_oldest_unacknowledged_incident_age_seconds",
    "Seconds the oldest alarm incident still unacknowledged has waited (technical incidents excluded); 0: none",
)
DEVICES_ONLINE = Gauge("alarmcentre_devices_online", "Devices whose last status is online")
SCHEDULER_LAST_RUN = Gauge(
    "alarmcentre_scheduler_last_run_timestamp_seconds", "Unix time a scheduler job last finished", ["job"]
)
SMS_SENT = Counter("alarmcentre_sms_sent_total", "Texts handed to the SMS provider", ["purpose"])
SMS_ERRORS = Counter("alarmcentre_sms_errors_total", "Failed attempts to send a text", ["kind"])
for _kind in ("transient", "permanent"):
    # Exported at 0 from the start: Prometheus's increase() misses the first error of a series that
    # appears with it, and the SMS alerts count errors.
    SMS_ERRORS.labels(_kind)
# Bounds on what texting costs (docs/dispatch.md "What texts cost: bounds").
SMS_REFUSED_COUNTRY = Counter(
    "alarmcentre_sms_refused_country_total",
    "Texts never handed to the provider: the number is outside ALARMCENTRE_SMS_ALLOWED_COUNTRIES", ["purpose"])
SMS_HELD = Counter(
    "alarmcentre_sms_held_total",
    "Times a text was held back (left queued, sent later) by the global or a country's hourly cap", ["cap"])
for _cap in ("global", "country"):
    SMS_HELD.labels(_cap)
SMS_AUTO_REPLIES_SUPPRESSED = Counter(
    "alarmcentre_sms_auto_replies_suppressed_total",
    "Automatic replies to inbound texts not sent: the text looked automatic, or the number had one already",
    ["reason"])
for _reason in ("auto_reply_marker", "echo", "burst", "replied_recently"):
    SMS_AUTO_REPLIES_SUPPRESSED.labels(_reason)
SUPERVISOR_ALERTS = Counter("alarmcentre_supervisor_alerts_total", "Alerts for incidents not acknowledged in time")
ESCALATIONS = Counter("alarmcentre_escalations_total", "Plan steps moved on by themselves", ["reason"])
TIMERS_FIRED = Counter("alarmcentre_timers_fired_total", "Escalation timers fired by the sweep", ["kind"])

# Device care and operator tasks.
TASKS_OPENED = Counter("alarmcentre_tasks_opened_total", "Operator tasks opened by the scheduler", ["kind"])
TASKS_ACTIVE = Gauge("alarmcentre_tasks_active", "Operator tasks open or claimed", ["kind"])
WORK_ORDERS_OPENED = Counter("alarmcentre_work_orders_opened_total", "Work orders opened", ["kind"])
WORK_ORDERS_ACTIVE = Gauge("alarmcentre_work_orders_active", "Work orders not done", ["kind"])
DEVICES_SILENT = Gauge("alarmcentre_devices_silent", "Installed devices with an active device_silent incident")
CONFIGS_UNPUBLISHED = Gauge(
    "alarmcentre_configs_unpublished", "Devices whose desired configuration the broker does not hold yet"
)
CONFIG_PUBLISH_ERRORS = Counter("alarmcentre_config_publish_errors_total", "Failed retained config publishes")

# The canary: a synthetic device that raises a test alarm end to end (device → broker → ingest →
# incident) and checks it arrives. Defined here so the alert rules can name them; set by the canary.
CANARY_LAST_SUCCESS = Gauge(
    "alarmcentre_canary_last_success_timestamp_seconds",
    "Unix time the canary's last test alarm made it through the whole pipeline; 0: not since start",
)
CANARY_OK = Gauge("alarmcentre_canary_ok", "1 while the canary's test alarms come through in time, 0 when not")
CANARY_FAILURES = Counter(
    "alarmcentre_canary_failures_total", "Canary test alarms that did not make it through the pipeline in time"
)

# The SIA DC-09 receiver (alarmcentre/receivers; docs/dc09.md).
DC09_FRAMES_RECEIVED = Counter("alarmcentre_dc09_frames_received_total", "DC-09 frames received", ["transport"])
DC09_ANSWERS = Counter(
    "alarmcentre_dc09_answers_total",
    "DC-09 frames by answer (ack, nak, duh, none) and reason (ok, or the dead letter's reason)", ["answer", "reason"])

# The SCAIP receiver (alarmcentre/receivers; docs/scaip.md).
SCAIP_MESSAGES_RECEIVED = Counter("alarmcentre_scaip_messages_received_total", "SIP requests received by the SCAIP "
                                  "receiver", ["transport"])
SCAIP_ANSWERS = Counter(
    "alarmcentre_scaip_answers_total",
    "SCAIP requests by answer (the <mrs> status number 0-7, or the SIP status 401/403/405, or none) and reason "
    "(ok, or the dead letter's reason)", ["answer", "reason"])

# Voice calls through Twilio (alarmcentre/voice; docs/voice.md).
VOICE_CALLS = Counter("alarmcentre_voice_calls_total",
                      "Calls: incoming by caller (client, device, unknown), placed for operators by purpose",
                      ["purpose", "caller"])
VOICE_OPERATOR_NOT_REACHED = Counter("alarmcentre_voice_operator_not_reached_total",
                                     "Calls to an operator's own phone that did not connect them")
VOICE_ANSWER_SECONDS = Histogram("alarmcentre_voice_answer_seconds",
                                 "From the incident opening to an operator speaking with the caller",
                                 buckets=(10, 30, 60, 90, 120, 180, 300, 600, 1800))
