"""Column types shared by the models."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import BigInteger, Enum, Integer

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids for the
# append-only logs that grow without end.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def str_enum(enum_cls: type[StrEnum]) -> Enum:
    """An enum stored as its string value (VARCHAR), checked in Python, easy to extend later."""
    return Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda cls: [member.value for member in cls],
        validate_strings=True,
    )
