"""RollupWriter against the real TimescaleDB when the database refuses a row for a reason
psycopg files under OperationalError (class 54: an index row too big): refused, not retried."""

from __future__ import annotations

import random
import string
import threading

import psycopg

from pipeline.sinks import DeadLetter, RollupWriter
from qesmon.series import Series, WindowResult
from qesmon.settings import Settings
from qesmon.sketch import Agg


def _result(name: str, labels: tuple[tuple[str, str], ...]) -> WindowResult:
    agg = Agg()
    agg.add(1.0, True, None)
    return WindowResult(Series(name, "custom", "t", labels), 10, 1_700_000_000.0, agg)


def test_an_index_row_too_big_is_refused_at_once_and_the_rest_is_written(
    settings: Settings,
) -> None:
    rng = random.Random(7)
    huge = tuple(
        (f"k{i}", "".join(rng.choice(string.ascii_letters) for _ in range(1000))) for i in range(5)
    )
    refused: list[DeadLetter] = []
    writer = RollupWriter(settings.database_url, on_refused=refused.extend)
    done = threading.Event()

    def write() -> None:
        writer.write([_result("huge_labels", huge), _result("fine", (("a", "b"),))])
        done.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    # a retry loop would wait 0.2 s, 0.4 s, ... forever: the write must be done long before
    assert done.wait(10), "the writer kept retrying a row the database refuses"
    writer.close()
    assert [(d.kind, d.fields["name"]) for d in refused] == [("refused", "huge_labels")]
    assert "54000" in refused[0].error and "index row size" in refused[0].error
    with psycopg.connect(settings.database_url) as conn:
        names = conn.execute("SELECT name FROM series ORDER BY name").fetchall()
    assert names == [("fine",)]
