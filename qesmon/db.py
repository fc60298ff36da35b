"""Connecting to TimescaleDB: the one place that knows how we open psycopg connections."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)


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


def connect_with_retry(
    database_url: str,
    *,
    autocommit: bool = False,
    max_wait: float = 30.0,
    stop: Callable[[], bool] = lambda: False,
) -> psycopg.Connection[tuple[object, ...]]:
    """Connect, retrying with exponential backoff (capped at ``max_wait`` seconds between tries)
    until the database answers or ``stop()`` says to give up (then the last error is raised)."""
    delay = 0.2
    while True:
        try:
            return connect(database_url, autocommit=autocommit)
        except psycopg.OperationalError as exc:
            if stop():
                raise
            log.warning("database unreachable (%s); retrying in %.1f s", str(exc).strip(), delay)
            time.sleep(delay)
            delay = min(delay * 2, max_wait)
