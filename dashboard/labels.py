"""Human words for the codes stored in the database (translated through the catalogue)."""

from __future__ import annotations


def N_(message: str) -> str:  # noqa: N802 - the gettext convention: marks a message for extraction
    return message


LABELS: dict[str, str] = {
    # incident kinds
    "button_press": N_("Button press"),
    "pull_cord": N_("Pull cord"),
    "fall_detected": N_("Fall detected"),
    "device_silent": N_("Device silent"),
    "voice_call": N_("Call to the centre"),
    # incident states
    "open": N_("Waiting"),
    "acknowledged": N_("Being handled"),
    "resolved": N_("Resolved"),
    # timeline entries
    "opened": N_("Alarm received"),
    "signal": N_("Another signal"),
    "cancel": N_("Cancelled on the device"),
    "supervisor_alert": N_("Supervisor alerted: not answered in time"),
    "call": N_("Call to the client"),
    "notified": N_("Contact informed by SMS"),
    "step_started": N_("Plan step started"),
    "step_answer": N_("Answer"),
    "step_timeout": N_("No answer in time"),
    "step_failed": N_("SMS not delivered"),
    "sms_reply": N_("SMS reply"),
    # how a texted answer was bound to its dispatch (the code the dispatch text asks for)
    "code_missing": N_("not applied: the code from the text is missing"),
    "code_wrong": N_("not applied: wrong code"),
    "code_locked": N_("not applied: too many wrong codes, decide by phone"),
    "code_plain": N_("taken without the code"),
    "code_not_fitting": N_("not applied: does not fit the step's state"),
    "emergency_called": N_("Emergency services called"),
    "handover": N_("Handed over"),
    "note": N_("Note"),
    "reopened": N_("Reopened"),
    "restored": N_("Device heard again"),
    "access_revealed": N_("Access information revealed"),
    "call_incoming": N_("Incoming call"),
    "call_connected": N_("Operator speaking with the caller"),
    "call_placed": N_("Operator calling"),
    "call_ended": N_("Call ended"),
    "call_failed": N_("Operator's phone not connected"),
    # voice calls: purposes, callers, Twilio's call states and how a call ended
    "incoming": N_("Incoming call"),
    "answer": N_("Answering"),
    "call_person": N_("Outgoing call"),
    "client": N_("Client"),
    "device": N_("Device SIM"),
    "unknown": N_("Unknown caller"),
    "requested": N_("Requested"),
    "initiated": N_("Dialling"),
    "ringing": N_("Ringing"),
    "in-progress": N_("On the line"),
    "answered": N_("Answered"),
    "completed": N_("Finished"),
    "busy": N_("Busy"),
    "no-answer": N_("No answer"),
    "canceled": N_("Cancelled"),
    "hung_up_waiting": N_("Caller hung up while waiting"),
    "caller_gone": N_("The caller was no longer waiting"),
    # plan step states
    "pending": N_("Not started"),
    "waiting": N_("Waiting for answer"),
    "task": N_("Operator task"),
    "accepted": N_("Accepted"),
    "arrived": N_("Arrived"),
    "done": N_("Done"),
    "declined": N_("Declined"),
    "no_answer": N_("No answer"),
    "failed": N_("Failed"),
    "cancelled": N_("Cancelled"),
    # channels
    "sms": N_("SMS"),
    "operator_task": N_("Phone / task"),
    "voice": N_("Automatic call"),
    "no_key": N_("Answered, no key pressed"),
    # contact and resource kinds
    "relative": N_("Relative"),
    "neighbour": N_("Neighbour"),
    "emergency": N_("Emergency contact"),
    "home_care_worker": N_("Home-care worker"),
    "keys_service": N_("Keys service"),
    "home_care_on_duty": N_("Home care on duty"),
    "emergency_services": N_("Emergency services"),
    "family_doctor": N_("Family doctor"),
    "other": N_("Other"),
    # outcomes
    "accidental_press": N_("Accidental press"),
    "assistance_at_home": N_("Helped by talking"),
    "carer_visit": N_("Home-care worker visited"),
    "relative_attended": N_("Relative attended"),
    "neighbour_attended": N_("Neighbour attended"),
    "ambulance": N_("Ambulance"),
    "hospitalised": N_("Hospitalised"),
    "fall_without_injury": N_("Fall without injury"),
    "police_or_rescue": N_("Police or rescue"),
    "test": N_("Test"),
    "technical_fault": N_("Technical fault"),
    "deceased": N_("Deceased"),
    "no_response": N_("The client did not respond"),
    "unresolved": N_("Not resolved yet"),
    # what the client said on a call
    "needs_help": N_("Needs help"),
    "wants_to_talk": N_("Wants to talk"),
    "all_well": N_("All well"),
    # SMS
    "queued": N_("Queued"),
    "sent": N_("Sent"),
    "delivered": N_("Delivered"),
    "received": N_("Received"),
    "in": N_("In"),
    "out": N_("Out"),
    # client states and languages
    "active": N_("Active"),
    "paused": N_("Paused"),
    "ended": N_("Ended"),
    "lv": N_("Latvian"),
    "en": N_("English"),
    "ru": N_("Russian"),
    # roles
    "operator": N_("Operator"),
    "supervisor": N_("Supervisor"),
    "technician": N_("Technician"),
    "admin": N_("Administrator"),
    # step answers an operator records
    "accept": N_("Accepted"),
    "decline": N_("Declined"),
    # device inventory states
    "in_stock": N_("In stock"),
    "installed": N_("Installed"),
    "faulty": N_("Faulty"),
    "in_repair": N_("In repair"),
    "retired": N_("Retired"),
    # programming states (prefixed: "pending" above is a plan step's)
    "programming_in_sync": N_("In sync"),
    "programming_pending": N_("Waiting for the device"),
    "programming_failed": N_("Refused by the device"),
    # device settings (devices/catalogue.py)
    "alarm_numbers": N_("Alarm numbers"),
    "heartbeat_interval": N_("Heartbeat interval, s"),
    "volume": N_("Volume"),
    "language": N_("Language"),
    "fall_sensitivity": N_("Fall sensitivity"),
    # work order kinds and states (states prefixed: "open" above is an incident's)
    "battery_replacement": N_("Battery replacement"),
    "config_pending": N_("Configuration not applied"),
    "repair": N_("Repair"),
    "order_open": N_("Waiting for a technician"),
    "order_assigned": N_("Assigned"),
    "order_done": N_("Done"),
    # the work order list's filters
    "order_filter_active": N_("Not done"),
    "order_filter_open": N_("Waiting for a technician"),
    "order_filter_assigned": N_("Assigned"),
    "order_filter_done": N_("Done"),
    "order_filter_all": N_("All"),
}


def label(code: object) -> str:
    """The English label of a code (translated by the caller); an unknown code shows as itself."""
    text = str(getattr(code, "value", code))
    return LABELS.get(text, text)
