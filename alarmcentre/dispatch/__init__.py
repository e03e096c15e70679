"""Dispatch: response plans, operator actions, escalation timers and SMS (Twilio / outbox).

Not built yet: incidents are raised by the ingest (alarmcentre.incidents.service) and read
through the API; acting on them comes with the dispatch work.
"""
