"""The centre's RabbitMQ definitions file (alarmcentre/broker/rabbitmq.py), without a broker.

That RabbitMQ accepts the file and its password hashes is tested on a real cluster
(tests/test_rabbitmq_ingest.py); here: what the file holds, and what it keeps of other people's."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alarmcentre.broker import rabbitmq
from alarmcentre.broker.acl import CENTRE_USER
from alarmcentre.ingest.amqp import ALARMS_QUEUE, BULK_QUEUE, routing_key
from alarmcentre.ingest.protocol import alarms_topic, config_topic, events_topic, status_topic


def test_the_password_hash_is_rabbitmqs_salted_sha256() -> None:
    stored = base64.b64decode(rabbitmq.password_hash("s3cret", salt=b"\x01\x02\x03\x04"))
    assert stored[:4] == b"\x01\x02\x03\x04"
    assert stored[4:] == hashlib.sha256(b"\x01\x02\x03\x04s3cret").digest()
    assert rabbitmq.password_hash("s3cret") != rabbitmq.password_hash("s3cret"), "a fresh salt each time"


def test_alarms_and_the_bulk_are_bound_to_their_own_queues() -> None:
    bindings = {(b["destination"], b["routing_key"]) for b in rabbitmq.empty()["bindings"]}
    assert bindings == {(ALARMS_QUEUE, routing_key("alarmcentre/v1/devices/+/alarms")),
                        (BULK_QUEUE, routing_key("alarmcentre/v1/devices/+/events")),
                        (BULK_QUEUE, routing_key("alarmcentre/v1/devices/+/status"))}
    assert routing_key("alarmcentre/v1/devices/+/alarms") == "alarmcentre.v1.devices.*.alarms"
    assert all(q["arguments"] == {"x-queue-type": "quorum"} and q["durable"] for q in rabbitmq.empty()["queues"])


def test_a_device_may_write_only_its_own_topics_and_read_only_its_own_config() -> None:
    definitions = rabbitmq.empty()
    rabbitmq.set_login(definitions, "DEV-1", "pw")
    (topics,) = definitions["topic_permissions"]
    write, read = (re.compile(topics[k].replace("{username}", "DEV-1")) for k in ("write", "read"))

    def key(topic: str) -> str:
        return topic.replace("/", ".")

    assert all(write.match(key(t)) for t in (events_topic("DEV-1"), alarms_topic("DEV-1"), status_topic("DEV-1")))
    assert not write.match(key(alarms_topic("DEV-2"))) and not write.match(key(config_topic("DEV-1")))
    assert read.match(key(config_topic("DEV-1"))) and not read.match(key(config_topic("DEV-2")))
    (vhost,) = definitions["permissions"]
    assert re.fullmatch(vhost["configure"], "mqtt-subscription-DEV-1qos1")
    assert not re.fullmatch(vhost["configure"], "mqtt-subscription-DEV-2qos1")
    assert not re.fullmatch(vhost["read"], ALARMS_QUEUE), "a device cannot consume the centre's queues"


def test_loading_keeps_other_entries_and_brings_the_centres_own_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "definitions.json"
    stale = rabbitmq.empty()
    stale["queues"][0]["arguments"] = {}  # an old, wrong version of the centre's queue
    stale["queues"].append({"name": "billing", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}})
    stale["policies"].append({"vhost": "/", "name": "theirs", "pattern": "^billing$", "apply-to": "queues",
                              "priority": 1, "definition": {"max-length": 10}})
    rabbitmq.set_login(stale, CENTRE_USER, "old")
    rabbitmq.set_login(stale, "DEV-1", "pw")
    path.write_text(json.dumps(stale))
    loaded = rabbitmq.load(path)
    names = [q["name"] for q in loaded["queues"]]
    assert names.count(ALARMS_QUEUE) == 1 and "billing" in names
    assert all(q["arguments"] == {"x-queue-type": "quorum"} for q in loaded["queues"] if q["name"] != "billing")
    assert {p["name"] for p in loaded["policies"]} == {"theirs", rabbitmq.DEVICE_SUBSCRIPTIONS_POLICY["name"]}
    assert [u["name"] for u in loaded["users"]] == [CENTRE_USER, "DEV-1"]
    assert not rabbitmq.set_login(loaded, "DEV-1", "new") and rabbitmq.set_login(loaded, "DEV-2", "pw")
    assert sum(1 for p in loaded["permissions"] if p["user"] == "DEV-1") == 1, "replaced, not added"
    rabbitmq.save(path, loaded)
    assert path.stat().st_mode & 0o777 == 0o600


def test_revoking_a_device_removes_its_login_and_permissions_and_nothing_else(tmp_path: Path) -> None:
    definitions = rabbitmq.empty()
    rabbitmq.set_login(definitions, CENTRE_USER, "centre-pw")
    for serial in ("LOST-1", "KEPT-1"):
        rabbitmq.set_login(definitions, serial, f"pw-{serial}")
    assert rabbitmq.remove_login(definitions, "LOST-1") is True
    for key, field in (("users", "name"), ("permissions", "user"), ("topic_permissions", "user")):
        names = {entry[field] for entry in definitions[key]}
        assert "LOST-1" not in names and "KEPT-1" in names, key
    assert {user["name"] for user in definitions["users"]} == {CENTRE_USER, "KEPT-1"}
    assert rabbitmq.remove_login(definitions, "LOST-1") is False
    with pytest.raises(ValueError):
        rabbitmq.remove_login(definitions, CENTRE_USER)

    path = tmp_path / "definitions.json"
    rabbitmq.save(path, definitions)
    run = subprocess.run([sys.executable, "-m", "alarmcentre.cli", "devices", "revoke", "KEPT-1",
                          "--rabbitmq-definitions", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "rabbitmqctl delete_user KEPT-1" in run.stdout
    assert {user["name"] for user in json.loads(path.read_text())["users"]} == {CENTRE_USER}
