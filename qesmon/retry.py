"""Blocking retry with exponential backoff, for the synchronous writers.

The pipeline's sinks and the alert store run inside Bytewax steps: when Redis or the database is
down they must wait — which also stops the source reading further (backpressure) — and never
drop what they hold::

    retry_forever("database", lambda: write(batch), reset_connection, doing=" writing rollups")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
import redis

from qesmon.db import is_refusal

log = logging.getLogger(__name__)

#: errors that a server coming back can cure
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
)


def retry_forever(
    what: str,
    action: Callable[[], None],
    on_error: Callable[[], None],
    *,
    doing: str = "",
    errors: tuple[type[BaseException], ...] = TRANSIENT,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
    give_up: Callable[[], bool] = lambda: False,
) -> None:
    """Run ``action`` until it succeeds; after each error in ``errors`` call ``on_error`` (drop
    the broken connection), log ``<what> unavailable<doing>`` and sleep, doubling the delay up
    to ``max_delay``. ``give_up()`` true re-raises the error instead (the owner is closing), and
    so does a refusal of the data (:func:`qesmon.db.is_refusal`), which waiting cannot cure."""
    delay = first_delay
    while True:
        try:
            action()
            return
        except errors as exc:
            # psycopg files some refusals of the data under OperationalError (class 54, e.g.
            # an index row too big): no server coming back cures those, the caller isolates them
            if give_up() or is_refusal(exc):
                raise
            text = str(exc).strip()
            log.warning(
                "%s unavailable%s: %s; retrying in %.1f s",
                what,
                doing,
                text.splitlines()[0] if text else type(exc).__name__,
                delay,
            )
            on_error()
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
