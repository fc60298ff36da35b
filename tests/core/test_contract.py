"""The event contract parser: valid entries parse, every bad one gets a reason, none raises."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qesmon.columns import parse_entries
from qesmon.contract import MAX_BATCH, Event, parse_entry
from qesmon.encode import encode_batch, encode_event, event_dict

ID = "1700000000000-0"
NOW = 1_700_000_000.0


def one(fields: dict[str, str]) -> Event:
    events, rejections = parse_entry(ID, fields)
    assert rejections == [], rejections
    assert len(events) == 1
    return events[0]


def reason(fields: dict[str, object], entry_id: str = ID) -> str:
    events, rejections = parse_entry(entry_id, fields)
    assert events == []
    assert len(rejections) == 1
    return rejections[0].error


def test_minimal_entry_takes_defaults_from_the_entry_id() -> None:
    event = one({"name": "signups", "value": "1"})
    assert event == Event("signups", 1.0, "custom", NOW, "", None, (), True)


def test_full_entry_with_bytes_fields_as_redis_returns_them() -> None:
    fields = {
        b"name": b"api_request",
        b"value": b"0.25",
        b"type": b"performance",
        b"ts": b"1699999990.5",
        b"tenant": b"t-1",
        b"user": b"u-9",
        b"labels": b'{"method":"GET","endpoint":"/sign"}',
        b"success": b"false",
        b"v": b"1",
    }
    events, rejections = parse_entry(ID.encode(), fields)
    assert rejections == []
    assert events == [
        Event(
            "api_request",
            0.25,
            "performance",
            1699999990.5,
            "t-1",
            "u-9",
            (("endpoint", "/sign"), ("method", "GET")),
            False,
        )
    ]


def test_rfc3339_timestamps_are_accepted_with_an_offset() -> None:
    assert one({"name": "x", "value": "1", "ts": "2023-11-14T22:13:10Z"}).ts == 1699999990.0
    assert one({"name": "x", "value": "1", "ts": "2023-11-14T23:13:10+01:00"}).ts == 1699999990.0
    assert "no UTC offset" in reason({"name": "x", "value": "1", "ts": "2023-11-14T22:13:10"})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"value": "1"}, "name: missing"),
        ({"name": "x"}, "value: missing"),
        ({"name": "1x", "value": "1"}, "name: '1x' must match"),
        ({"name": "x" * 201, "value": "1"}, "at most 200 chars"),
        ({"name": "x", "value": "nan"}, "value: 'nan' is not finite"),
        ({"name": "x", "value": "inf"}, "not finite"),
        ({"name": "x", "value": "abc"}, "value: 'abc' is not a number"),
        ({"name": "x", "value": "1", "type": "money"}, "type: 'money' is not one of"),
        ({"name": "x", "value": "1", "labels": "{"}, "labels: not valid JSON"),
        ({"name": "x", "value": "1", "labels": "[1]"}, "labels: expected a JSON object"),
        ({"name": "x", "value": "1", "labels": '{"a": 1}'}, "value of 'a' must be a string"),
        ({"name": "x", "value": "1", "labels": '{"a b": "1"}'}, "key 'a b' must match"),
        ({"name": "x", "value": "1", "success": "maybe"}, "success: 'maybe' is not true/false"),
        ({"name": "x", "value": "1", "ts": "1700000000000"}, "ahead of the entry's time"),
        ({"name": "x", "value": "1", "ts": "12345"}, "before 2000-01-01"),
        ({"name": "x", "value": "1", "v": "2"}, "schema version '2' is not supported"),
        ({"name": "x", "value": "1", "colour": "red"}, "unknown field 'colour'"),
        ({"name": "x", "value": "1", "tenant": "a\x00b"}, "tenant: contains control"),
        ({"name": "x", "value": "1", "user": "u" * 201}, "user: longer than 200"),
    ],
)
def test_bad_fields_are_rejected_with_the_field_and_the_problem(
    fields: dict[str, str], expected: str
) -> None:
    assert expected in reason(fields)


def test_too_many_labels_are_rejected() -> None:
    labels = orjson.dumps({f"k{i}": "v" for i in range(33)}).decode()
    assert "33 pairs, at most 32" in reason({"name": "x", "value": "1", "labels": labels})


def test_rejection_keeps_the_original_fields_for_the_dead_letter_stream() -> None:
    _, rejections = parse_entry(ID, {b"name": b"x", b"value": b"oops"})
    assert rejections[0].fields == {"name": "x", "value": "oops"}
    assert rejections[0].source_id == ID


def test_batch_entry_validates_each_element_on_its_own() -> None:
    fields = encode_batch(
        [
            event_dict("a", 1.0, tenant="t", labels={"plan": "pro"}),
            {"name": "b"},
            "not an object",
            event_dict("c", 2.5, type="revenue", success=False, user="u1", ts=NOW - 5),
        ]
    )
    events, rejections = parse_entry(ID, fields)
    assert [e.name for e in events] == ["a", "c"]
    assert events[1] == Event("c", 2.5, "revenue", NOW - 5, "", "u1", (), False)
    assert [(r.index, r.error) for r in rejections] == [
        (1, "events[1]: value: missing"),
        (2, "events[2]: expected a JSON object, got str"),
    ]
    assert orjson.loads(rejections[0].fields["event"]) == {"name": "b"}


def test_batch_entry_must_be_alone_a_json_array_and_not_too_long() -> None:
    assert "must be the only field" in reason({"events": "[]", "name": "x"})
    assert "not valid JSON" in reason({"events": "[{"})
    assert "expected a JSON array" in reason({"events": "{}"})
    too_many = encode_batch([{"name": "x", "value": 1}] * (MAX_BATCH + 1))
    assert f"at most {MAX_BATCH}" in reason(too_many)


def test_batch_elements_reject_wrong_json_types() -> None:
    fields = encode_batch(
        [
            {"name": "x", "value": True},
            {"name": "x", "value": [1]},
            {"name": 5, "value": 1},
            {"name": "x", "value": 1, "labels": ["a"]},
            {"name": "x", "value": 1, "ts": False},
        ]
    )
    _, rejections = parse_entry(ID, fields)
    assert [r.error.split(": ", 1)[1] for r in rejections] == [
        "value: expected a number, got bool",
        "value: expected a number, got list",
        "name: expected a string, got int",
        "labels: expected a JSON object, got list",
        "ts: expected Unix seconds or an RFC 3339 time, got a boolean",
    ]


def test_bad_entry_id_is_a_rejection_not_an_exception() -> None:
    assert "is not <ms>-<seq>" in reason({"name": "x", "value": "1"}, entry_id="garbage")


def test_encode_event_round_trips_through_the_parser() -> None:
    obj = event_dict(
        "revenue",
        49.9,
        type="revenue",
        tenant="t1",
        user="u1",
        labels={"plan": "pro", "currency": "EUR"},
        success=False,
        ts=NOW - 1,
    )
    event = one(encode_event(obj))
    assert event == Event(
        "revenue",
        49.9,
        "revenue",
        NOW - 1,
        "t1",
        "u1",
        (("currency", "EUR"), ("plan", "pro")),
        False,
    )


_text = st.text(max_size=300)
_field_values = st.one_of(
    _text,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "1e400", "", "0x10", "1_000", " 1 ", "true"]),
)
_keys = st.one_of(
    st.sampled_from(
        sorted(
            {"name", "value", "type", "ts", "tenant", "user", "labels", "success", "v", "events"}
        )
    ),
    _text,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _field_values, max_size=10))
def test_hostile_flat_entries_never_raise_and_valid_ones_are_finite(
    fields: dict[str, str],
) -> None:
    events, rejections = parse_entry(ID, fields)
    assert len(events) + len(rejections) >= 1
    for event in events:
        assert math.isfinite(event.value) and math.isfinite(event.ts)
        assert len(event.labels) <= 32
    for rejection in rejections:
        assert rejection.error and rejection.source_id == ID


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(_keys, _json, max_size=9) | _json, max_size=20))
def test_hostile_batches_never_raise_and_account_for_every_element(items: list[object]) -> None:
    try:
        fields = encode_batch(items)  # type: ignore[arg-type]
    except TypeError:  # orjson refuses e.g. integers beyond 64 bits; not an entry one can send
        return
    events, rejections = parse_entry(ID, fields)
    if len(rejections) == 1 and rejections[0].index is None:
        return
    assert len(events) + len(rejections) == len(items)


@settings(max_examples=200, deadline=None)
@given(
    name=st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,50}", fullmatch=True),
    value=st.floats(allow_nan=False, allow_infinity=False),
    labels=st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
        # label values: anything but control characters and surrogates (Cc, Cs)
        st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=40),
        max_size=32,
    ),
    tenant=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=50
    ),
)
def test_any_valid_event_round_trips(
    name: str, value: float, labels: dict[str, str], tenant: str
) -> None:
    tenant = "".join(ch for ch in tenant if ch.isprintable())
    event = one(encode_event(event_dict(name, value, labels=labels, tenant=tenant)))
    assert (event.name, event.value, event.tenant) == (name, value, tenant)
    assert event.labels == tuple(sorted(labels.items()))


# -- parse_entries: the bulk path must decide exactly as parse_entry does, entry by entry ----------

_good_field = {
    "name": st.sampled_from(["http_request", "revenue", "cpu:usage"]),
    "value": st.one_of(
        st.floats(-1e6, 1e6), st.integers(-(10**6), 10**6), st.sampled_from(["1.5", " 2 ", "3"])
    ),
    "type": st.sampled_from([None, "", "performance", "revenue", "custom"]),
    "ts": st.one_of(
        st.none(),
        st.floats(NOW - 3600, NOW + 200),
        st.integers(int(NOW) - 3600, int(NOW) + 200),
        st.sampled_from(["", "1699999999.5", "2023-11-14T22:13:20Z"]),
    ),
    "tenant": st.sampled_from([None, "", "t1", "t2"]),
    "user": st.sampled_from([None, "", "u1", "u2"]),
    "labels": st.sampled_from([None, {}, {"endpoint": "/a"}, {"endpoint": "/b", "method": "GET"}]),
    "success": st.sampled_from([None, True, False, "", "true", "false", "0", "yes"]),
    "v": st.sampled_from([None, "1", 1]),
}
# mostly valid events (so the column checks are taken), sometimes one broken field
_event = st.fixed_dictionaries({}, optional=_good_field).flatmap(
    lambda obj: st.one_of(
        st.just({"name": "http_request", "value": 1.0, **obj}),
        st.builds(
            lambda key, bad: {"name": "http_request", "value": 1.0, **obj, key: bad},
            st.sampled_from([*sorted(_good_field), "bogus"]),
            st.sampled_from(
                [
                    None,
                    "",
                    "x y",
                    True,
                    False,
                    0,
                    1,
                    0.0,
                    1.5,
                    float("nan"),
                    [],
                    [1],
                    {"a": 1},
                    "1e400",
                ]
            ),
        ),
    )
)


def _flat(obj: dict[str, object]) -> dict[str, str]:
    out = {}
    for key, value in obj.items():
        if value is None:
            continue
        if isinstance(value, dict | list):
            out[key] = orjson.dumps(value).decode()
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = value if isinstance(value, str) else repr(value)
    return out


def _entry(kind: str, events: list[dict[str, object]]) -> dict[str, str]:
    if kind == "flat":
        return _flat(events[0])
    if kind == "batch":
        return {"events": orjson.dumps(events).decode()}
    return {"events": "[not json"}


_entries = st.lists(
    st.tuples(st.sampled_from(["flat", "flat", "batch", "broken"]), st.lists(_event, min_size=1)),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_entries)
def test_parse_entries_equals_parse_entry_on_each(
    raw: list[tuple[str, list[dict[str, object]]]],
) -> None:
    entries = []
    for i, (kind, events) in enumerate(raw):
        try:
            fields = _entry(kind, events)
        except orjson.JSONEncodeError:
            continue
        entries.append((f"{int(NOW * 1000) + i}-{i % 3}", fields))
    expected_events, expected_rejections, expected_ids = [], [], []
    for entry_id, fields in entries:
        events, rejections = parse_entry(entry_id, fields)
        expected_events += events
        expected_ids += [entry_id] * len(events)
        expected_rejections += rejections
    for _ in range(2):  # the second time, everything valid is known and takes the column path
        columns, rejections = parse_entries(entries)
        assert columns.events() == expected_events
        assert columns.entry_ids == expected_ids
        assert columns.entry_ts == [int(i.partition("-")[0]) / 1000 for i in expected_ids]
        assert rejections == expected_rejections


def test_parse_entries_keeps_stream_order_around_a_bad_entry_in_a_long_read() -> None:
    good = {"name": "orders", "value": "1", "tenant": "t1"}
    entries = [(f"{int(NOW * 1000) + i}-0", dict(good, value=str(i))) for i in range(1000)]
    entries[617] = (entries[617][0], {"name": "orders", "value": "oops"})
    parse_entries(entries[:1])  # known values
    columns, rejections = parse_entries(entries)
    assert [r.source_id for r in rejections] == [entries[617][0]]
    assert "value: 'oops' is not a number" in rejections[0].error
    assert columns.values == [float(i) for i in range(1000) if i != 617]
    batch = [{"name": "orders", "value": i} for i in range(3000)]
    batch[2999]["ts"] = NOW + 301  # too far ahead of the entry
    columns, rejections = parse_entries([(ID, encode_batch(batch))])
    assert len(columns) == 2999 and [r.index for r in rejections] == [2999]


def test_parse_entries_takes_bytes_as_a_client_without_decoding_returns_them() -> None:
    flat = {b"name": b"orders", b"value": b"2", b"tenant": b"t1"}
    batch = {b"events": orjson.dumps([{"name": "orders", "value": 3}, {"name": "orders"}])}
    entries = [(ID.encode(), flat), (b"1700000000001-0", batch), (b"bad-id", flat)]
    columns, rejections = parse_entries(entries)
    assert columns.values == [2.0, 3.0]
    assert columns.entry_ids == [ID, "1700000000001-0"]
    assert [(r.source_id, r.index) for r in rejections] == [
        ("1700000000001-0", 1),
        ("bad-id", None),
    ]
    expected = [parse_entry(entry_id, fields) for entry_id, fields in entries]
    assert columns.events() == [e for events, _ in expected for e in events]
    assert rejections == [r for _, rejected in expected for r in rejected]
