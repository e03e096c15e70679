"""Translations of the dashboard (Latvian and English) and the Jinja2 environments that use them.

The messages are written in English in the templates and in `labels.py`; Latvian lives in
translations/lv/LC_MESSAGES/messages.po (a Babel/gettext catalogue). The .po is compiled in
memory at start-up, so there is no build step and no binary file in the repository.
`scripts/i18n` re-extracts the messages and updates the catalogue after a template change.
"""

from __future__ import annotations

import gettext
from functools import cache
from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import Environment, FileSystemLoader, select_autoescape

WEB_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = WEB_DIR / "templates"
TRANSLATIONS_DIR = WEB_DIR / "translations"
UI_LANGUAGES = ("lv", "en")
DEFAULT_LANGUAGE = "lv"


def ui_language(preferred: str | None) -> str:
    """The user's language if the dashboard speaks it, else Latvian (the service's language)."""
    return preferred if preferred in UI_LANGUAGES else DEFAULT_LANGUAGE


def catalogue_path(language: str) -> Path:
    return TRANSLATIONS_DIR / language / "LC_MESSAGES" / "messages.po"


@cache
def translations(language: str) -> gettext.NullTranslations:
    if language == "en":
        return gettext.NullTranslations()  # the messages are English already
    with catalogue_path(language).open("rb") as po:
        catalogue = read_po(po, locale=language)
    compiled = BytesIO()
    write_mo(compiled, catalogue)
    compiled.seek(0)
    return Translations(fp=compiled)


@cache
def environment(language: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.globals["lang"] = language
    return env


def gettext_for(language: str) -> gettext.NullTranslations:
    return translations(ui_language(language))
