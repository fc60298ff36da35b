"""Connecting to TimescaleDB: the one place that knows how we open psycopg connections."""

from __future__ import annotations

import psycopg


def connect(
    database_url: str, *, autocommit: bool = False
) -> psycopg.Connection[tuple[object, ...]]:
    """Open a synchronous connection with the project's session settings."""
    return psycopg.connect(
        database_url,
        autocommit=autocommit,
        connect_timeout=5,
        application_name="qesmon",
        options="-c timezone=UTC",
    )


#: SQLSTATE classes of errors caused by the data itself, which retrying cannot cure:
#: 22 data exception (e.g. a NUL in text, a value out of range), 23 integrity constraint
#: violation (CHECK, NOT NULL, unique), 54 program limit exceeded (e.g. an index row too big)
REFUSAL_CLASSES = frozenset(("22", "23", "54"))


def is_refusal(exc: BaseException) -> bool:
    """Whether the database refused the data (not: lost the connection, or our own bug).

    Also true for psycopg's own ``DataError``/``IntegrityError`` without a SQLSTATE: psycopg
    refuses some values (a NUL in a text parameter) before sending anything.
    """
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    return state is not None and state[:2] in REFUSAL_CLASSES


def describe(exc: BaseException) -> str:
    """The database's message for ``exc`` with its SQLSTATE, on one line."""
    state = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    text = (getattr(diag, "message_primary", None) if diag is not None else None) or str(exc)
    text = " ".join(text.split())
    return f"{text} (SQLSTATE {state})" if state else f"{type(exc).__name__}: {text}"
