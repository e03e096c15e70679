"""Imports every domain's models so that Base.metadata knows all tables (Alembic, tests)."""

from alarmcentre.clients.models import Client
from alarmcentre.contacts.models import Contact
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.dispatch.models import IncidentStep, PlanStep, SharedResource, SmsMessage, Timer
from alarmcentre.incidents.models import Incident, TimelineEntry
from alarmcentre.municipalities.models import Municipality
from alarmcentre.users.models import ApiToken, User

__all__ = [
    "ApiToken", "Client", "Contact", "DeadLetter", "Device", "DeviceEvent",
    "Incident", "IncidentStep", "Municipality", "PlanStep", "SharedResource", "SmsMessage",
    "TimelineEntry", "Timer", "User",
]
