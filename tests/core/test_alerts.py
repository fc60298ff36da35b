"""AlertTransition.from_fields reads any entry: a transition, or a ContractError naming the
field, never another exception (pure, no servers)."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qesmon.alerts import AlertState, AlertTransition, Severity
from qesmon.errors import ContractError

GOOD = AlertTransition(
    fingerprint="0123456789abcdef",
    rule_id="high_error_rate",
    rule_name="High error rate",
    severity=Severity.CRITICAL,
    from_state=AlertState.PENDING,
    to_state=AlertState.FIRING,
    at=1_700_000_000.5,
    value=0.25,
    tenant="acme",
    labels={"endpoint": "/sign", "service": "signing"},
    annotations={"summary": "25 % fail\nsee the runbook"},
    channels=("webhook", "slack"),
    escalation="oncall",
    repeat_interval=600.0,
    template="custom",
)


def raw(t: AlertTransition = GOOD, **changes: bytes | None) -> dict[bytes, bytes]:
    """``t``'s entry as bytes, as a client without decode_responses reads it; a change of
    None removes the field."""
    fields = {k.encode(): v.encode() for k, v in t.to_fields().items()}
    for key, value in changes.items():
        if value is None:
            fields.pop(key.encode())
        else:
            fields[key.encode()] = value
    return fields


def test_a_transition_reads_back_from_bytes_and_from_text_as_written() -> None:
    assert AlertTransition.from_fields(raw()) == GOOD
    assert AlertTransition.from_fields(GOOD.to_fields()) == GOOD


def test_a_value_that_is_not_finite_is_written_as_no_value_so_it_always_reads_back() -> None:
    for value in (math.nan, math.inf, -math.inf):
        t = AlertTransition.from_fields(
            AlertTransition(**{**_kwargs(GOOD), "value": value}).to_fields()
        )
        assert t.value is None


def _kwargs(t: AlertTransition) -> dict[str, Any]:
    return {name: getattr(t, name) for name in AlertTransition.__slots__}


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (raw(fingerprint=None), "fingerprint", "missing"),
        (raw(fingerprint=b""), "fingerprint", "empty"),
        (raw(rule_id=b"\xff\xfe"), "rule_id", "not UTF-8"),
        (raw(tenant=b"ac\x00me"), "tenant", "control"),
        (raw(tenant=b"a" * 201), "tenant", "at most 200"),
        (raw(severity=b"fatal"), "severity", "not one of"),
        (raw(to_state=b"exploded"), "to_state", "not one of"),
        (raw(at=b"nan"), "at", "not a finite number"),
        (raw(at=b"inf"), "at", "not a finite number"),
        (raw(at=b"1e300"), "at", "outside"),
        (raw(at=b"-5"), "at", "outside"),
        (raw(at=b"soon"), "at", "not a number"),
        (raw(value=b"-inf"), "value", "not a finite number"),
        (raw(repeat_interval=b"-1"), "repeat_interval", "outside"),
        (raw(labels=b"[1,2]"), "labels", "expected a JSON object, got list"),
        (raw(labels=b'{"a": 1}'), "labels", "must be a string, got int"),
        (raw(labels=b'{"a": "x\\u0000y"}'), "labels.a", "NUL"),
        (raw(labels=b'{"a": "\\ud800"}'), "labels", "not valid JSON"),
        (raw(labels=b"{"), "labels", "not valid JSON"),
        (raw(labels=b'{"a": "' + b"x" * 1001 + b'"}'), "labels.a", "at most 1000"),
        (raw(labels=b'{"' + b"k" * 201 + b'": "v"}'), "labels", "printable"),
        (raw(labels=orjson.dumps({f"k{i}": "v" for i in range(65)})), "labels", "65 pairs"),
        (raw(annotations=b'"text"'), "annotations", "expected a JSON object, got str"),
        (raw(annotations=b"x" * (1 << 20)), "annotations", "at most 262144"),
        (raw(rule_name=b"High\x00rate"), "rule_name", "NUL"),
        (raw(channels=b"web\nhook"), "channels", "control"),
    ],
)
def test_a_malformed_entry_is_a_contract_error_naming_the_field(
    fields: dict[bytes, bytes], field: str, words: str
) -> None:
    with pytest.raises(ContractError) as caught:
        AlertTransition.from_fields(fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(field + ":")
    assert words in str(caught.value)


def test_keys_that_are_not_utf8_text_of_the_wrong_type_or_too_many_fields_are_refused() -> None:
    with pytest.raises(ContractError, match="a field name: not UTF-8"):
        AlertTransition.from_fields({**raw(), b"\xc3(": b"1"})
    with pytest.raises(ContractError, match="at: expected a string, got int"):
        AlertTransition.from_fields({**GOOD.to_fields(), "at": 5})
    with pytest.raises(ContractError, match="not UTF-8"):
        AlertTransition.from_fields({**GOOD.to_fields(), "tenant": "\udcff"})
    with pytest.raises(ContractError, match="at most 64"):
        AlertTransition.from_fields({**raw(), **{f"x{i}".encode(): b"" for i in range(60)}})


def test_unknown_fields_are_ignored() -> None:
    assert AlertTransition.from_fields({**raw(), b"future": b"\x01"}) == GOOD


_names = st.sampled_from(sorted(GOOD.to_fields())).map(str.encode)
_keys = st.one_of(_names, st.binary(max_size=20))
_values = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"nan", b"1e999", b"-0", b"[1,2]", b'{"a":1}', b'{"a":"\\u0000"}']),
    st.sampled_from([v.encode() for v in GOOD.to_fields().values()]),
    st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5)).map(orjson.dumps),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=20), st.booleans())
def test_any_bytes_give_a_transition_or_a_contract_error(
    changes: dict[bytes, bytes], start_good: bool
) -> None:
    fields = {**raw(), **changes} if start_good else changes
    try:
        t = AlertTransition.from_fields(fields)
    except ContractError as exc:
        assert str(exc)
        return
    # what is accepted is storable: no NUL anywhere, finite numbers, and it writes back
    assert AlertTransition.from_fields(t.to_fields()) == t
    texts = [t.fingerprint, t.rule_id, t.rule_name, t.tenant, *t.channels]
    texts += [*t.labels, *t.labels.values(), *t.annotations, *t.annotations.values()]
    assert not any("\x00" in text for text in texts)
    assert math.isfinite(t.at) and (t.value is None or math.isfinite(t.value))
