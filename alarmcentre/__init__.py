"""alarmcentre: backend of a 24/7 safety-button alarm monitoring centre."""

__version__ = "0.1.0"
