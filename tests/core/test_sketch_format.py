"""The stored form of Agg: every version still reads and merges, rows keep their tier's
precision and size, the pipeline's hour rows are full, and no blob makes anything but a
ValueError."""

from __future__ import annotations

import bisect
import math
import pickle
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from datasketches import hll_sketch, kll_doubles_sketch, kll_floats_sketch, tgt_hll_type

from pipeline.windows import ShardWindows
from qesmon.columns import EventColumns
from qesmon.contract import Event
from qesmon.sketch import (
    COMPACT,
    FULL,
    Agg,
    Precision,
    _kll_floats_from_doubles,
    precision_for,
)

FIXTURES = orjson.loads((Path(__file__).parents[1] / "fixtures" / "sketch_v1.json").read_bytes())
V1_CASES = {c["name"]: c for c in FIXTURES["cases"]}
V2_HEADER = struct.Struct("<BHBqqdddII")  # then the CRC-32 of the header and the parts
V2_PARTS = V2_HEADER.size + 4


def rank_error(values: list[float], q: float, got: float) -> float:
    """How far q lies from the ranks ``got`` holds among ``values`` (0 if it holds rank q)."""
    ordered = sorted(values)
    low = bisect.bisect_left(ordered, got) / len(ordered)
    high = bisect.bisect_right(ordered, got) / len(ordered)
    return 0.0 if low <= q <= high else min(abs(low - q), abs(high - q))


def busy(
    seed: int, n: int, users: int, precision: Precision = FULL
) -> tuple[Agg, list[float], set[str]]:
    """An aggregate of n events (values in eighths) with ids drawn from ``users`` ids."""
    rng = random.Random(seed)
    values = [rng.randint(1, 40_000) / 8 for _ in range(n)]
    ids = [f"new-{seed}-{rng.randrange(users)}" for _ in range(n)] if users else []
    agg = Agg(precision)
    agg.add_values(values, 0, ids)
    return agg, values, set(ids)


def parts(blob: bytes) -> tuple[Any, ...]:
    """The header fields and the two parts of a version 2 blob."""
    fields = V2_HEADER.unpack_from(blob)
    n_values, n_users = fields[-2:]
    values = blob[V2_PARTS : V2_PARTS + n_values]
    users = blob[V2_PARTS + n_values :]
    assert len(users) == n_users
    return fields, values, users


def v2_blob(fields: tuple[Any, ...], values: bytes, users: bytes) -> bytes:
    """A version 2 blob with these contents and a right checksum: what a writer that knows
    the format could store."""
    header = V2_HEADER.pack(*fields[:-2], len(values), len(users))
    return header + struct.pack("<I", zlib.crc32(header + values + users)) + values + users


@pytest.mark.parametrize("name", sorted(V1_CASES))
def test_version_1_rows_read_as_the_code_that_wrote_them_read_them(name: str) -> None:
    case = V1_CASES[name]
    agg = Agg.from_bytes(bytes.fromhex(case["hex"]))
    assert (agg.count, agg.errors) == (case["count"], case["errors"])
    if case["values"]:
        assert math.isclose(agg.sum, math.fsum(case["values"]), rel_tol=1e-12)
        assert (agg.min, agg.max) == (min(case["values"]), max(case["values"]))
    assert agg.exact == case["exact"]
    assert (agg.kll is not None, agg.hll is not None) == (case["kll"], case["hll"])
    # the KLL doubles sketch became the same sketch of floats: eighths are exact in float32,
    # so the very same percentiles come out
    assert list(agg.quantiles()) == case["old_quantiles"]
    assert agg.distinct_users() == case["old_distinct"]
    assert agg.precision == FULL


@pytest.mark.parametrize("name", sorted(V1_CASES))
@pytest.mark.parametrize("precision", [FULL, COMPACT], ids=["full", "compact"])
@pytest.mark.parametrize("size", [30, 3000], ids=["exact", "sketched"])
def test_version_1_rows_merge_with_new_rows_both_ways(
    name: str, precision: Precision, size: int
) -> None:
    case = V1_CASES[name]
    old_blob = bytes.fromhex(case["hex"])
    new, new_values, new_users = busy(11, size, size // 2, precision)
    values = case["values"] + new_values
    users = set(case["users"]) | new_users
    for first, second in ((old_blob, new.to_bytes()), (new.to_bytes(), old_blob)):
        merged = Agg.from_bytes(first)
        merged.merge(Agg.from_bytes(second))
        stored = Agg.from_bytes(merged.to_bytes())  # the merge is stored as version 2
        assert merged.to_bytes()[0] & 0x0F == 2
        for agg in (merged, stored):
            assert (agg.count, agg.min, agg.max) == (len(values), min(values), max(values))
            assert agg.exact == (len(values) <= 256)
            for q, got in zip((0.5, 0.95, 0.99), agg.quantiles(), strict=True):
                assert got is not None
                error = rank_error(values, q, got)
                assert error == 0.0 if agg.exact else error <= COMPACT.rank_error
            if agg.users is not None:
                assert agg.distinct_users() == len(users)
            else:  # within four standard errors of the coarser precision
                error = abs(agg.distinct_users() - len(users))
                assert error <= 4 * COMPACT.distinct_error * len(users)


@pytest.mark.parametrize("n", [0, 1, 2, 150, 300, 5000])
def test_a_kll_doubles_sketch_converts_to_the_same_sketch_of_floats(n: int) -> None:
    rng = random.Random(n)
    doubles = kll_doubles_sketch(200)
    for _ in range(n):
        doubles.update(rng.randint(-80_000, 80_000) / 16)
    floats = kll_floats_sketch.deserialize(_kll_floats_from_doubles(doubles.serialize()))
    assert (floats.n, floats.k, floats.num_retained) == (n, 200, doubles.num_retained)
    assert floats.normalized_rank_error(False) == doubles.normalized_rank_error(False)
    if n:
        for x in [rng.randint(-80_000, 80_000) / 16 for _ in range(50)]:
            assert floats.get_rank(x, True) == doubles.get_rank(x, True)
        for q in (0.0, 0.01, 0.5, 0.95, 0.99, 1.0):
            assert floats.get_quantile(q) == doubles.get_quantile(q)


@pytest.mark.parametrize(
    ("width", "kll_k", "lg_k", "bound"),
    # a busy row: 10,000 values and 10,000 users (version 1 wrote about 7 KB for this)
    [(10, 100, 10, 1_600), (60, 100, 10, 1_600), (3600, 200, 12, 4_500), (86400, 200, 12, 4_500)],
)
def test_rows_keep_their_tiers_precision_in_their_size(
    width: int, kll_k: int, lg_k: int, bound: int
) -> None:
    agg, _, _ = busy(3, 10_000, 100_000, precision_for(width))
    blob = agg.to_bytes()
    fields, values, users = parts(blob)
    assert fields[1:3] == (kll_k, lg_k)
    kll = kll_floats_sketch.deserialize(values)
    hll = hll_sketch.deserialize(users)
    assert (kll.k, kll.n) == (kll_k, 10_000)
    assert (hll.lg_config_k, hll.tgt_type) == (lg_k, tgt_hll_type.HLL_4)
    assert len(blob) <= bound
    # the aggregate itself keeps full precision in memory, and so does a snapshot of it
    assert agg.kll is not None and agg.kll.k == 200
    copy = pickle.loads(pickle.dumps(agg))
    assert copy.precision == agg.precision
    assert copy.kll is not None and copy.kll.k == 200
    assert copy.hll is not None and copy.hll.lg_config_k == 12


def test_no_hll_is_stored_where_no_event_had_a_user() -> None:
    agg, _, _ = busy(4, 10_000, 0, COMPACT)
    blob = agg.to_bytes()
    fields, _, users = parts(blob)
    assert fields[0] & 0x20 == 0 and users == b""
    assert len(blob) <= 1_100
    row = Agg.from_bytes(blob)
    assert row.hll is None and row.distinct_users() == 0
    with_users, _, _ = busy(5, 1000, 800, COMPACT)
    row.merge(Agg.from_bytes(with_users.to_bytes()))
    assert row.hll is not None and row.count == 11_000


def test_a_day_merged_from_full_hour_rows_is_full() -> None:
    hours = [busy(100 + h, 2000, 1500, precision_for(3600)) for h in range(24)]
    day = Agg(precision_for(86400))
    for agg, _, _ in hours:
        day.merge(Agg.from_bytes(agg.to_bytes()))
    row = Agg.from_bytes(day.to_bytes())
    _, values, users = parts(day.to_bytes())
    assert kll_floats_sketch.deserialize(values).normalized_rank_error(False) == FULL.rank_error
    assert hll_sketch.deserialize(users).lg_config_k == FULL.hll_lg_k
    everything = [v for _, vs, _ in hours for v in vs]
    for q, got in zip((0.5, 0.95, 0.99), row.quantiles(), strict=True):
        assert got is not None and rank_error(everything, q, got) <= FULL.rank_error
    # a day that merges a compact row in has the compact precision: no false claim
    minute, _, _ = busy(7, 2000, 1500, COMPACT)
    day.merge(Agg.from_bytes(minute.to_bytes()))
    _, values, users = parts(day.to_bytes())
    assert kll_floats_sketch.deserialize(values).normalized_rank_error(False) == (
        COMPACT.rank_error
    )
    assert hll_sketch.deserialize(users).lg_config_k == COMPACT.hll_lg_k


def test_the_pipelines_hour_rows_are_full_and_its_shorter_rows_compact() -> None:
    windows = ShardWindows(10, (60, 3600), wait=0, lateness=0)
    start = 1_700_000_000 - 1_700_000_000 % 3600
    rng = random.Random(6)
    emitted = []
    for second in range(0, 3600, 5):
        columns = EventColumns()
        for _ in range(200):  # 400 events per 10 s window: every window is sketched
            ts = start + second + rng.random() * 5
            user = f"u{rng.randrange(9000)}"
            event = Event("busy", rng.random(), "custom", ts, "t", user, (), True)
            columns.append(event, ts, f"{int(ts * 1000)}-0")
        windows.add(columns)
        emitted += windows.advance(0)
    windows.add(EventColumns())
    last = Event("busy", 1.0, "custom", start + 3601.0, "t", None, (), True)
    final = EventColumns()
    final.append(last, last.ts, "0-1")
    windows.add(final)
    emitted += windows.advance(0)
    by_width: dict[int, list[bytes]] = {}
    for result in emitted:
        by_width.setdefault(result.width_s, []).append(result.agg.to_bytes())
    assert sorted(by_width) == [10, 60, 3600] and len(by_width[3600]) == 1
    for width, blobs in by_width.items():
        expected = FULL if width == 3600 else COMPACT
        for blob in blobs:
            _, values, users = parts(blob)
            kll = kll_floats_sketch.deserialize(values)
            hll = hll_sketch.deserialize(users)
            # the hour is merged from full in-memory 10 s windows, not from compact rows
            assert kll.normalized_rank_error(False) == expected.rank_error
            assert hll.lg_config_k == expected.hll_lg_k


def test_percentiles_from_floats_are_the_decimals_sent_and_within_min_and_max() -> None:
    agg = Agg(COMPACT)
    sent = [0.1, 0.123, 2.5e-5, 12345.67, 0.3]
    rng = random.Random(8)
    agg.add_values([rng.choice(sent) for _ in range(2000)], 0)
    assert agg.kll is not None
    for got in agg.quantiles((0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)):
        assert got in sent
    # beyond float32's range a value is infinite in the sketch: the exact min and max bound it
    huge = Agg()
    huge.add_values([1.0] * 300 + [1e300] * 10 + [-1e300], 0)
    assert huge.quantiles((0.0, 0.5, 1.0)) == (-1e300, 1.0, 1e300)


def _valid_blobs() -> dict[str, bytes]:
    sketched, _, _ = busy(9, 3000, 2000, COMPACT)
    exact, _, _ = busy(10, 50, 20, COMPACT)
    return {
        "v2 sketched": sketched.to_bytes(),
        "v2 exact": exact.to_bytes(),
        "v1 sketched": bytes.fromhex(V1_CASES["kll_hll"]["hex"]),
        "v1 exact": bytes.fromhex(V1_CASES["exact"]["hex"]),
    }


@pytest.mark.parametrize("name", ["v2 sketched", "v2 exact", "v1 sketched", "v1 exact"])
def test_every_truncated_or_extended_blob_is_a_value_error(name: str) -> None:
    blob = _valid_blobs()[name]
    for size in range(len(blob)):
        with pytest.raises(ValueError):
            Agg.from_bytes(blob[:size])
    with pytest.raises(ValueError, match="announces"):
        Agg.from_bytes(blob + b"\0")


def test_unknown_versions_flags_users_and_precisions_are_value_errors() -> None:
    blob = _valid_blobs()["v2 exact"]
    fields, values, users = parts(blob)
    assert Agg.from_bytes(v2_blob(fields, values, users)).count == 50
    for first in (0x03, 0x0F, blob[0] | 0x40, blob[0] | 0x80):
        with pytest.raises(ValueError):
            Agg.from_bytes(v2_blob((first, *fields[1:]), values, users))
    for bad_users in (b'{"a": 1}', b"[1, 2]", b"not json", b'"one"'):
        with pytest.raises(ValueError):
            Agg.from_bytes(v2_blob(fields, values, bad_users))
    for kll_k, lg_k in ((0, 10), (100, 30)):
        with pytest.raises(ValueError, match="must be in"):
            Agg.from_bytes(v2_blob((fields[0], kll_k, lg_k, *fields[3:]), values, users))


def test_a_damaged_version_2_blob_is_a_value_error_before_datasketches_sees_it() -> None:
    rng = random.Random(13)
    for name, blob in _valid_blobs().items():
        if not name.startswith("v2"):
            continue  # version 1 had no checksum (flipped bytes in its sketches crash them)
        for _ in range(500):
            broken = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                broken[rng.randrange(len(broken))] ^= rng.randrange(1, 256)
            with pytest.raises(ValueError):
                Agg.from_bytes(bytes(broken))
