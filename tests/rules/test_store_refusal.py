"""AlertStore when the database refuses one transition: the others are stored, the refused
one is parked in the alerts dead-letter stream with the database's message."""

from __future__ import annotations

import psycopg
import redis

from qesmon import deadletter
from qesmon.alerts import AlertTransition
from qesmon.settings import Settings
from rules.store import AlertStore
from tests.rules.test_store import _t

REFUSE = """
CREATE OR REPLACE FUNCTION qesmon_test_refuse_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.fingerprint = 'fp-poison' THEN
    RAISE EXCEPTION 'test refuses %', NEW.fingerprint USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER qesmon_test_refuse_alert BEFORE INSERT ON alert_events
  FOR EACH ROW EXECUTE FUNCTION qesmon_test_refuse_alert();
"""
UNREFUSE = """
DROP TRIGGER IF EXISTS qesmon_test_refuse_alert ON alert_events;
DROP FUNCTION IF EXISTS qesmon_test_refuse_alert();
"""


def test_a_refused_transition_is_parked_and_the_rest_are_stored(
    settings: Settings, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    db.execute(REFUSE)
    store = AlertStore(settings)
    try:
        good = [_t("inactive", "firing", 1_800_000_010.0 + i, fp=f"fp-{i}") for i in range(5)]
        poison = _t("inactive", "firing", 1_800_000_020.0, fp="fp-poison")
        store.record([*good[:3], poison, *good[3:]])
        stored = db.execute("SELECT fingerprint FROM alerts ORDER BY fingerprint").fetchall()
        assert [row[0] for row in stored] == [f"fp-{i}" for i in range(5)]
        assert store.refused == 1
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        (entry,) = client.xrange(settings.streams.key("alerts", "dead"))  # type: ignore[misc]
        client.close()
        letter = entry[1]
        assert letter["kind"] == "refused" and "test refuses fp-poison" in letter["error"]
        assert letter["source_id"] == poison.key
        fields = {k: deadletter.original(v).decode() for k, v in letter.items()}
        assert AlertTransition.from_fields(fields) == poison
    finally:
        store.close()
        db.execute(UNREFUSE)
