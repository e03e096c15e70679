"""SMS texts in the recipient's language, and the replies we understand.

Rules: one or two SMS segments at most (basic phones, cost, delivery); who, where, what
happened and how to answer; never a door code, key-safe code or medical detail.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from enum import StrEnum

from alarmcentre.clients.models import Language

# GSM 03.38 basic character set (+ the extension table, whose characters cost two septets).
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = set("^{}\\[~]|€\f")
MAX_SEGMENTS = 2


def sms_segments(text: str) -> int:
    """How many SMS segments a text takes (GSM-7 when it can, else UCS-2, as phones do)."""
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in text):
        units, single, multi = sum(2 if ch in _GSM_EXTENDED else 1 for ch in text), 160, 153
    else:
        units, single, multi = sum(2 if ord(ch) > 0xFFFF else 1 for ch in text), 70, 67
    if units <= single:
        return 1
    return -(-units // multi)


ALARM_WHAT = {
    Language.LV: {"button_press": "nospieda drošības pogu", "pull_cord": "pavilka trauksmes auklu",
                  "fall_detected": "iespējams kritiens", "voice_call": "zvanīja trauksmes centram"},
    Language.EN: {"button_press": "pressed the safety button", "pull_cord": "pulled the alarm cord",
                  "fall_detected": "possible fall", "voice_call": "called the alarm centre"},
}


def _lang(language: Language | str) -> Language:
    # Texts exist in Latvian and English; anyone else gets English.
    return Language.LV if language == Language.LV else Language.EN


def new_reply_code(taken: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """Three digits (100-999) for a dispatch text's answers, none of `taken` (the number's other open
    dispatches). Digits only: the quickest to type on a basic phone's keypad."""
    while True:
        code = str(100 + secrets.randbelow(900))
        if code not in taken:
            return code


def dispatch_text(language: Language | str, *, client_name: str, address: str, alarm: str, code: str) -> str:
    """Asks the contact to go to the client; answered with 1 or 2 and the code."""
    lang = _lang(language)
    what = ALARM_WHAT[lang].get(alarm, ALARM_WHAT[lang]["button_press"])
    if lang == Language.LV:
        template = "Trauksme: {name}, {address} - {what}. Atbildiet 1 {code} - pieņemu, 2 {code} - nevaru."
    else:
        # Plain ASCII punctuation: one non-GSM character (an en dash) would halve the space.
        template = "Alarm: {name}, {address} - {what}. Please help. Reply 1 {code} = accept, 2 {code} = can't."
    return _fit(template.replace("{code}", code), name=client_name, address=address, what=what)


def inform_text(language: Language | str, *, client_name: str, alarm: str) -> str:
    """Tells a relative what happened; no answer expected."""
    lang = _lang(language)
    what = ALARM_WHAT[lang].get(alarm, ALARM_WHAT[lang]["button_press"])
    if lang == Language.LV:
        template = "Drošības poga: {name} - {what}. Operators rīkojas un sazināsies ar jums, ja vajadzēs."
    else:
        template = "Safety alarm: {name} - {what}. The operator is handling it and will contact you if needed."
    return _fit(template, name=client_name, address="", what=what)


def supervisor_alert_text(language: Language | str, *, incident_id: int, waited_s: int) -> str:
    minutes = max(1, round(waited_s / 60))
    if _lang(language) == Language.LV:
        return f"Trauksme #{incident_id} gaida bez atbildes {minutes} min. Lūdzu, pārbaudiet centrāli."
    return f"Alarm #{incident_id} unanswered for {minutes} min. Please check the centre."


class Reply(StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    ARRIVED = "arrived"
    DONE = "done"


_REPLIES = {
    Reply.ACCEPT: {"1", "JA", "YES", "Y", "OK", "PIENEMU", "ACCEPT"},
    Reply.DECLINE: {"2", "NE", "NO", "N", "NEVARU", "DECLINE"},
    Reply.ARRIVED: {"IERADOS", "ESMU KLAT", "ARRIVED", "HERE", "3"},
    Reply.DONE: {"PABEIGTS", "DONE", "FINISHED", "4"},
}


_CODE = re.compile(r"^(?:(?P<word>[A-Z]+|[1-4])?(?P<code>[1-9][0-9]{2}))$")


def parse_reply(body: str) -> tuple[Reply | None, str | None]:
    """A reply word and the dispatch code given with it, either of them None when absent.

    '1 482', '482 1', '1482', 'Jā 482', 'ierados482' → (the reply, '482'); '1', 'Jā!' → (the reply, None);
    anything else → (None, the code if one was given)."""
    folded = unicodedata.normalize("NFKD", body).encode("ascii", "ignore").decode().upper()
    words = "".join(ch if ch.isalnum() else " " for ch in folded).split()
    code = None
    for index, word in enumerate(words):
        match = _CODE.match(word)
        glued = match["word"] if match else None  # "1482", "jā482": the word typed without the space
        if match and (glued is None or len(words) == 1 or (index == len(words) - 1 and not glued.isdigit())):
            code = match["code"]
            words[index:index + 1] = [match["word"]] if match["word"] else []
            break
    phrase = " ".join(words)
    for reply, spellings in _REPLIES.items():
        if phrase in spellings:
            return reply, code
    return None, code


def interpret_reply(body: str) -> Reply | None:
    """'1', 'Jā', 'jā!', ' YES ', 'Ierados', '1 482' → the reply; anything else → None."""
    return parse_reply(body)[0]


def reply_confirmation(language: Language | str, reply: Reply, code: str = "") -> str:
    """The answer to an applied reply; the next answers it asks for carry the same code."""
    lv = _lang(language) == Language.LV
    tail = f" {code}" if code else ""
    return {
        Reply.ACCEPT: f"Paldies! Kad esat klāt, atbildiet IERADOS{tail}, pēc tam PABEIGTS{tail}." if lv
        else f"Thank you! Reply ARRIVED{tail} when you are there, then DONE{tail}.",
        Reply.DECLINE: "Paldies, sazināsimies ar nākamo." if lv else "Thank you, we will contact the next person.",
        Reply.ARRIVED: "Paldies, atzīmēts: esat klāt." if lv else "Thank you, noted: you are there.",
        Reply.DONE: "Paldies, vizīte pabeigta." if lv else "Thank you, visit done.",
    }[reply]


def stand_down_text(language: Language | str) -> str:
    """To someone asked to help who has not answered yet, when the incident is resolved."""
    if _lang(language) == Language.LV:
        return "Paldies. Trauksme ir atrisināta, palīdzība vairs nav vajadzīga."
    return "Thank you. The alarm has been dealt with; help is no longer needed."


def late_reply_text(language: Language | str) -> str:
    """To a reply that comes after the incident was resolved: understood, and thanked."""
    if _lang(language) == Language.LV:
        return "Paldies par atsaucību! Trauksme jau ir atrisināta, palīdzība vairs nav vajadzīga."
    return "Thank you for answering! The alarm has already been dealt with; help is no longer needed."


def code_missing_text(language: Language | str, reply: Reply, code: str) -> str:
    """To a reply word sent without the dispatch's code (or with another): how to send it so it counts."""
    word = {Reply.ACCEPT: "1", Reply.DECLINE: "2", Reply.ARRIVED: "ARRIVED", Reply.DONE: "DONE"}[reply]
    if _lang(language) == Language.LV:
        word = {Reply.ARRIVED: "IERADOS", Reply.DONE: "PABEIGTS"}.get(reply, word)
        return f"Atbilde vēl nav pieņemta. Lūdzu, atbildiet ar kodu: {word} {code}"
    return f"Your answer is not yet taken. Please reply with the code: {word} {code}"


def help_text(language: Language | str) -> str:
    if _lang(language) == Language.LV:
        return "Neizpratām. Atbildiet ar kodu no trauksmes īsziņas: 1 - pieņemu, 2 - nevaru, IERADOS, PABEIGTS."
    return "Not understood. Reply with the code from the alarm text: 1 accept, 2 can't, ARRIVED, DONE."


def _fit(template: str, *, name: str, address: str, what: str) -> str:
    """Fill the template within MAX_SEGMENTS. The address matters most to someone going there, so
    the name is shortened first ("Skaidrīte Vītola" → "Skaidrīte V."), then the address, then the name again."""
    text = template.format(name=name, address=address, what=what)
    if sms_segments(text) <= MAX_SEGMENTS:
        return text
    # The mark of a cut stays in GSM-7 when the text is: one "…" would halve the room (160 → 70 a segment).
    mark = "..." if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in text) else "…"

    def cut(value: str, keep: int) -> str:
        return value if keep >= len(value) else value[:keep].rstrip() + mark

    if not address:  # nothing to keep but the name: shorten it from the end
        candidates = [(cut(name, keep), 0) for keep in range(len(name) - 1, 7, -1)]
        for shown_name, _ in candidates:
            text = template.format(name=shown_name, address="", what=what)
            if sms_segments(text) <= MAX_SEGMENTS:
                return text
        return text
    words = name.split()
    short_name = f"{words[0]} {words[-1][0]}." if len(words) > 1 else name
    candidates = [(short_name, len(address))]
    candidates += [(short_name, keep) for keep in range(len(address) - 1, min(len(address), 8) - 1, -1)]
    candidates += [(cut(short_name, keep), 8) for keep in range(len(short_name) - 1, 7, -1)]
    for shown_name, keep_address in candidates:
        text = template.format(name=shown_name, address=cut(address, keep_address), what=what)
        if sms_segments(text) <= MAX_SEGMENTS:
            return text
    return text
