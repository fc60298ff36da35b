"""Dead letters: what was refused, kept as it was sent (within a bound), with the reason.

Pure module. Every dead-letter stream of qes-monitoring (``qes:metrics:dead``,
``qes:alerts:dead``) stores entries built by :func:`letter`: the original fields plus the
meta fields ``error`` (why), ``source_id`` (the refused entry's ID) and ``kind``.

Original bytes are kept losslessly where they fit:

* a key or value that is valid UTF-8 is stored as it is;
* anything else (bytes that are not UTF-8, strings carrying the ``surrogateescape`` escapes
  that readers use for such bytes, NUL included as it is valid UTF-8) is stored as
  ``b64:`` + base64 of the original bytes; a value that itself starts with ``b64:`` is encoded
  too, so the marker is never ambiguous; :func:`original` reverses it;
* an original key that equals a meta field (or starts with ``orig:``) is stored as
  ``orig:<key>``.

A letter never holds more than ``max_bytes`` (keys and values, meta fields included): a value
that does not fit keeps an excerpt, and the ``truncated`` meta field (JSON) gives, per cut
field, its full length in bytes and SHA-256, plus how many fields were left out entirely. So
the sender can still be found, and a replay is possible whenever nothing was cut::

    fields = letter({b"name": b"\\xff\\xfe", b"value": b"1"}, error="name: not UTF-8",
                    source_id="1700000000000-0", kind="invalid")
    fields["name"]              # 'b64://4='
    original(fields["name"])    # b'\\xff\\xfe'
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

import orjson

MARKER = "b64:"
META = frozenset(("error", "source_id", "kind", "truncated"))
#: default bound of one dead letter, keys and values together
MAX_LETTER_BYTES = 8192
#: a cut value keeps at most this many bytes of its beginning
EXCERPT_BYTES = 512
#: the error message is cut to this many characters
MAX_ERROR_CHARS = 1000


def to_bytes(item: str | bytes) -> bytes:
    """The bytes a field was sent as (undoing a reader's ``surrogateescape`` decoding)."""
    if isinstance(item, bytes):
        return item
    try:
        return item.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from surrogateescape
        return item.encode("utf-8", "surrogatepass")


def as_text(raw: bytes) -> str:
    """``raw`` as storable text: itself when it is UTF-8 without the marker, else base64."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return MARKER + base64.b64encode(raw).decode("ascii")
    if text.startswith(MARKER):
        return MARKER + base64.b64encode(raw).decode("ascii")
    return text


def original(stored: str) -> bytes:
    """The original bytes of a stored key or value (the inverse of :func:`as_text`)."""
    if stored.startswith(MARKER):
        return base64.b64decode(stored[len(MARKER) :])
    return stored.encode("utf-8")


def _key(raw: bytes) -> str:
    text = as_text(raw)
    return "orig:" + text if text in META or text.startswith("orig:") else text


def _excerpt(raw: bytes, limit: int) -> str:
    """At most ``limit`` stored bytes of the beginning of ``raw``."""
    cut = raw[: max(0, limit)]
    text = as_text(cut)
    while len(text.encode()) > limit and cut:
        cut = cut[: len(cut) * 3 // 4]
        text = as_text(cut)
    return text if cut else ""


def letter(
    fields: Mapping[str, str] | Mapping[bytes, bytes] | Mapping[str | bytes, str | bytes],
    *,
    error: str,
    source_id: str,
    kind: str,
    max_bytes: int = MAX_LETTER_BYTES,
) -> dict[str, str]:
    """The stream fields of one dead letter; see the module docstring."""
    meta = {
        "error": error[:MAX_ERROR_CHARS],
        "source_id": source_id[:200],
        "kind": kind,
    }
    budget = max_bytes - sum(len(k) + len(v.encode()) for k, v in meta.items()) - 200
    out: dict[str, str] = {}
    cut: dict[str, dict[str, object]] = {}
    dropped = 0
    for raw_key, raw_value in fields.items():
        key = _key(to_bytes(raw_key)[:200])
        value = to_bytes(raw_value)
        stored = as_text(value)
        need = len(key.encode()) + len(stored.encode())
        if need <= budget:
            out[key] = stored
            budget -= need
            continue
        room = min(EXCERPT_BYTES, budget - len(key.encode()) - 120)
        if room < 16 or len(cut) >= 8:
            dropped += 1
            continue
        out[key] = _excerpt(value, room)
        cut[key] = {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        budget -= len(key.encode()) + len(out[key].encode()) + 100
    if cut or dropped:
        meta["truncated"] = orjson.dumps({"fields": cut, "dropped_fields": dropped}).decode()
    out.update(meta)
    return out
