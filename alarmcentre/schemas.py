"""Validation pieces every API schema shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, field_validator

from alarmcentre.phone import normalise_phone

Phone = Annotated[str, Field(max_length=32), AfterValidator(normalise_phone)]
# Ids are 32-bit INTEGER columns on PostgreSQL: a larger number names nothing and must not reach the database.
MAX_ID = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
NO_NUL = r"^[^\x00]*$"  # for query strings: PostgreSQL text cannot hold NUL characters


class InputModel(BaseModel):
    """Request bodies: text with a NUL character is refused here (PostgreSQL cannot store it)."""

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value
