"""Phone numbers: normalised to E.164 (+37120000000) at the edge, so SMS and look-ups agree."""

from __future__ import annotations

import re

DEFAULT_COUNTRY_CODE = "371"  # Latvia
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def normalise_phone(raw: str) -> str:
    """'+371 2000 0000', '20000000', '00371 20000000' → '+37120000000'; anything else is an error."""
    digits = re.sub(r"[\s\-().]", "", raw)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif not digits.startswith("+") and len(digits) == 8:
        digits = f"+{DEFAULT_COUNTRY_CODE}{digits}"  # a local Latvian number
    if not _E164.match(digits):
        raise ValueError(f"not a phone number in international form: {raw!r}")
    return digits


def masked(number: str) -> str:
    """A number as logs may show it: its calling code and a digit or so ('+4477…'), never the whole."""
    return number[:5] + "…" if len(number) > 5 else "…"
