"""Imports every domain's models so that Base.metadata knows all tables (Alembic, tests)."""

from alarmcentre.canary import CanaryBeat
from alarmcentre.clients.access import AccessReveal, ClientAccess
from alarmcentre.clients.models import Client
from alarmcentre.contacts.models import Contact
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import (
    BatteryReading,
    Device,
    DeviceAssignment,
    DeviceConfigVersion,
    DeviceEvent,
    SignalReading,
)
from alarmcentre.dispatch.models import IncidentStep, PlanStep, SharedResource, SmsMessage, Timer
from alarmcentre.incidents.models import Incident, TimelineEntry
from alarmcentre.ingest.deferral import DeferredMessage
from alarmcentre.ingest.sessions import IngestSession
from alarmcentre.municipalities.models import Municipality
from alarmcentre.tasks.models import OperatorTask
from alarmcentre.users.models import ApiToken, IntegrationKey, User
from alarmcentre.users.throttle import LoginThrottle
from alarmcentre.visits.models import HomeCareWorker, Visit
from alarmcentre.voice.models import VoiceCall
from alarmcentre.workorders.models import WorkOrder, WorkOrderNote

__all__ = [
    "AccessReveal", "ApiToken", "BatteryReading", "CanaryBeat", "Client", "ClientAccess", "Contact", "DeadLetter",
    "DeferredMessage", "Device", "DeviceAssignment", "DeviceConfigVersion", "DeviceEvent", "HomeCareWorker",
    "Incident", "IncidentStep", "IngestSession", "IntegrationKey", "LoginThrottle", "Municipality", "OperatorTask",
    "PlanStep", "SharedResource", "SignalReading", "SmsMessage", "TimelineEntry", "Timer", "User", "Visit",
    "VoiceCall", "WorkOrder", "WorkOrderNote",
]
