"""Voice calls through Twilio: the client's call queued on the incident, operators answering and calling from it."""
