"""Where alert transitions go: the ``qes:alerts`` stream (for the notifier), then the
``alerts`` / ``alert_events`` tables (for the API and Grafana).

Synchronous on purpose: it runs inside a Bytewax sink, and blocking while Redis or the
database is down is the backpressure we want — transitions are never dropped. Idempotent on
replay: ``alert_events`` is unique on ``(fingerprint, to_state, at)`` and a transition whose
event row already exists changes nothing; the stream may carry a replayed transition twice,
and the notifier dedupes on :attr:`~qesmon.alerts.AlertTransition.key`::

    store = AlertStore(settings)
    store.record(evaluator.advance(watermark))
    store.close()

Episodes in ``alerts``: pending or firing opens one (at most one open per fingerprint);
``pending -> inactive`` closes it as ``resolved`` with ``fired_at`` NULL (it never fired),
``firing -> resolved`` closes it with ``resolved_at``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import psycopg
import redis
from psycopg.types.json import Jsonb

from qesmon import deadletter
from qesmon.alerts import AlertState, AlertTransition
from qesmon.db import connect, is_refusal
from qesmon.errors import RuleError
from qesmon.retry import TRANSIENT, retry_forever
from qesmon.settings import Settings

log = logging.getLogger(__name__)

#: approximate length cap of the alerts stream
STREAM_MAXLEN = 100_000
T = TypeVar("T")

_INSERT_EVENT = """
INSERT INTO alert_events (fingerprint, from_state, to_state, at, value, details)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (fingerprint, to_state, at) DO NOTHING
RETURNING id
"""
_OPEN = """
INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, tenant_id, labels,
                    annotations, value, started_at, fired_at)
VALUES (%(fp)s, %(rule_id)s, %(rule_name)s, %(severity)s, %(state)s, %(tenant)s, %(labels)s,
        %(annotations)s, %(value)s, %(at)s, %(fired_at)s)
ON CONFLICT (fingerprint) WHERE state <> 'resolved' DO UPDATE
SET state = EXCLUDED.state, value = EXCLUDED.value, severity = EXCLUDED.severity,
    rule_name = EXCLUDED.rule_name, annotations = EXCLUDED.annotations,
    fired_at = COALESCE(alerts.fired_at, EXCLUDED.fired_at), updated_at = now()
RETURNING id
"""
_CLOSE = """
UPDATE alerts SET state = 'resolved', resolved_at = %(at)s, value = COALESCE(%(value)s, value),
                  annotations = annotations || %(annotations)s, updated_at = now()
WHERE fingerprint = %(fp)s AND state <> 'resolved'
RETURNING id
"""


class AlertStore:
    """Writes alert transitions to the stream and the tables (see the module docstring).

    ``max_backoff`` caps the wait between retries while a server is down.
    """

    def __init__(self, settings: Settings, *, max_backoff: float = 10.0) -> None:
        self._settings = settings
        self._stream = settings.streams.alerts
        self._max_backoff = max_backoff
        self._redis: redis.Redis | None = None
        self._db: psycopg.Connection[Any] | None = None
        self._closed = False
        #: transitions the database refused (parked in the alerts dead-letter stream)
        self.refused = 0

    def record(self, transitions: Sequence[AlertTransition]) -> None:
        """Append ``transitions`` to the stream, then apply them to the tables in one
        transaction; block with backoff while Redis or the database is unreachable."""
        if not transitions:
            return
        self._retry("redis", self._xadd, transitions)
        self._apply_isolating(transitions)

    def _apply_isolating(self, transitions: Sequence[AlertTransition]) -> None:
        """Apply ``transitions`` to the tables; what the database refuses (not: cannot be
        reached) is found by halving and parked in ``<prefix>:alerts:dead`` with the database's
        message, so one bad transition cannot stop the pipeline. It is in the alerts stream
        already: the notifier still hears about it."""
        try:
            self._retry("database", self._apply, transitions)
            return
        except psycopg.Error as exc:
            if not is_refusal(exc):
                raise
            if len(transitions) == 1:
                self._refused(transitions[0], exc)
                return
        mid = len(transitions) // 2
        self._apply_isolating(transitions[:mid])
        self._apply_isolating(transitions[mid:])

    def _refused(self, transition: AlertTransition, exc: psycopg.Error) -> None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error = f"database refused it ({exc.sqlstate}): {message}"
        log.error("alert transition %s not stored: %s", transition.key, error)
        self.refused += 1
        letter = deadletter.letter(
            transition.to_fields(), error=error, source_id=transition.key, kind="refused"
        )
        self._retry_redis_letter(letter)

    def _retry_redis_letter(self, letter: dict[str, str]) -> None:
        dead = self._settings.streams.key("alerts", "dead")
        retry_forever(
            "redis",
            lambda: self._client().xadd(dead, letter, maxlen=10_000, approximate=True),  # type: ignore[arg-type]
            lambda: self._reset("redis"),
            doing=" parking a refused alert transition",
            give_up=lambda: self._closed,
        )

    def publish_rule_status(self, rules: int, errors: Sequence[RuleError]) -> None:
        """Best effort: put the rule count and current rule-file problems under
        ``<prefix>:rules:status`` (JSON) for the health endpoint and the exporter."""
        status = {"rules": rules, "errors": [str(e) for e in errors], "updated_at": time.time()}
        try:
            self._client().set(self._settings.streams.key("rules", "status"), orjson.dumps(status))
        except redis.RedisError as exc:
            log.warning("could not publish rule status: %s", exc)

    def close(self) -> None:
        self._closed = True
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- internals -------------------------------------------------------------------------
    def _client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self._settings.redis_url, socket_timeout=10, socket_connect_timeout=5
            )
        return self._redis

    def _xadd(self, transitions: Sequence[AlertTransition]) -> None:
        pipe = self._client().pipeline(transaction=False)
        for t in transitions:
            pipe.xadd(
                self._stream,
                t.to_fields(),  # type: ignore[arg-type]
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        pipe.execute()

    def _apply(self, transitions: Sequence[AlertTransition]) -> None:
        if self._db is None or self._db.closed:
            self._db = connect(self._settings.database_url)
        db = self._db
        with db.transaction(), db.cursor() as cur:
            for t in transitions:
                at = datetime.fromtimestamp(t.at, UTC)
                details = Jsonb(
                    {
                        "rule_id": t.rule_id,
                        "severity": t.severity.value,
                        "key": t.key,
                        **(
                            {"reason": t.annotations["reason"]} if "reason" in t.annotations else {}
                        ),
                    }
                )
                cur.execute(
                    _INSERT_EVENT,
                    (t.fingerprint, t.from_state.value, t.to_state.value, at, t.value, details),
                )
                event = cur.fetchone()
                if event is None:
                    continue  # replayed: already applied
                params = {
                    "fp": t.fingerprint,
                    "rule_id": t.rule_id,
                    "rule_name": t.rule_name,
                    "severity": t.severity.value,
                    "state": t.to_state.value,
                    "tenant": t.tenant,
                    "labels": Jsonb(dict(t.labels)),
                    "annotations": Jsonb(dict(t.annotations)),
                    "value": t.value,
                    "at": at,
                    "fired_at": at if t.to_state is AlertState.FIRING else None,
                }
                if t.to_state in (AlertState.PENDING, AlertState.FIRING):
                    cur.execute(_OPEN, params)
                else:
                    cur.execute(_CLOSE, params)
                alert = cur.fetchone()
                if alert is not None:
                    cur.execute(
                        "UPDATE alert_events SET alert_id = %s WHERE id = %s", (alert[0], event[0])
                    )

    def _retry(
        self,
        what: str,
        step: Callable[[Sequence[AlertTransition]], None],
        transitions: Sequence[AlertTransition],
    ) -> None:
        retry_forever(
            what,
            lambda: step(transitions),
            lambda: self._reset(what),
            doing=f" while recording {len(transitions)} alert transition(s)",
            # a WRONGTYPE or similar is retried too: transitions are never dropped
            errors=(*TRANSIENT, redis.ResponseError),
            first_delay=0.1,
            max_delay=self._max_backoff,
            give_up=lambda: self._closed,
        )

    def _reset(self, what: str) -> None:
        if what == "redis" and self._redis is not None:
            self._redis.close()
            self._redis = None
        elif what == "database" and self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None
