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
