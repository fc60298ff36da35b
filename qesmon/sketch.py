"""Mergeable window aggregates: count, errors, sum, min, max, percentiles, distinct users.

:class:`Agg` is what one series holds for one window. Small windows keep their values and
user ids exactly (percentiles and distinct counts are then exact); past ``EXACT_LIMIT`` they
switch to datasketches' KLL (floats, percentiles) and HLL (distinct counts). Two aggregates
merge without loss of that accuracy, so a minute is the merge of its 10 s windows and a
``group_by`` the merge of its series — never an average of percentiles::

    agg = Agg(precision_for(60))
    agg.add(0.120, True, "user-1")
    agg.merge(other)
    p50, p95, p99 = agg.quantiles()
    row = agg.to_bytes()            # the ``sketch`` column, cut to the row's precision

Precision. In memory a sketch always has full precision (KLL k=200, HLL lg_k=12), so that
the hour windows the pipeline merges from its 10 s windows keep it. A stored row keeps what
its tier needs (:func:`precision_for`): hour and day rows :data:`FULL` (rank error 1.33 %,
distinct-count error 1.62 %), 10 s and 1 min rows :data:`COMPACT` (2.61 %, 3.24 %), a third
of the bytes. The rank errors are datasketches' bounds, for 99 % of sketches, on the largest
error over all ranks; the distinct-count errors are relative standard errors (68 % of counts
within, 99.7 % within three times). Measured: ``bench/sketches.py``.
Rows of different precision merge (the result has the coarser one), and a merge of full rows
is full: the day tier is merged from hour rows. Where no event had a user there is no HLL.
A KLL floats sketch holds float32: a percentile read from it is the shortest decimal with the
same float32 (0.1, not 0.10000000149), kept within the aggregate's exact min and max.

Serialisation (``to_bytes``; ``pickle`` keeps full precision), little-endian:

* version 2 (written now): ``<BHBqqdddII`` flags | version, the row's KLL k and HLL lg_k,
  count, errors, sum, min, max, the lengths of the values part and the users part; ``<I``
  the CRC-32 of that header and the parts; the parts. Values: a float64 array, or a KLL
  *floats* sketch (flag 0x10). Users: a sorted JSON list of ids (none: empty), or an HLL_4
  sketch (flag 0x20).
  A damaged blob is a ValueError, never handed to datasketches, which does not check its
  input (5.2.0 dies of SIGSEGV or an abort on a few flipped bytes in a KLL or HLL sketch).
* version 1 (written until the compact sketches, still read): ``<BqqdddII``, no checksum,
  the same parts with a KLL *doubles* sketch (k=200, read as the same sketch of floats) and
  HLL_8 (lg_k=12).

Percentiles use the nearest-rank definition: the smallest value whose rank is >= q·n.
"""

from __future__ import annotations

import math
import struct
import zlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from datasketches import hll_sketch, hll_union, kll_floats_sketch, tgt_hll_type

EXACT_LIMIT = 256
KLL_K = 200
HLL_LG_K = 12
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class Precision:
    """How much of its sketches a stored row keeps: KLL's k and HLL's lg_k."""

    kll_k: int
    hll_lg_k: int

    def __post_init__(self) -> None:
        if not 8 <= self.kll_k <= 65535:  # what datasketches accepts
            raise ValueError(f"KLL k must be in 8..65535, not {self.kll_k}")
        if not 4 <= self.hll_lg_k <= 21:
            raise ValueError(f"HLL lg_k must be in 4..21, not {self.hll_lg_k}")

    @property
    def rank_error(self) -> float:
        """Normalised rank error of a percentile, bound for 99 % of sketches."""
        return float(kll_floats_sketch.get_normalized_rank_error(self.kll_k, False))

    @property
    def distinct_error(self) -> float:
        """Relative standard error of a distinct count merged from rows (one sigma)."""
        return abs(float(hll_sketch.get_rel_err(True, True, self.hll_lg_k, 1)))


#: hour and day rows, and every sketch in memory
FULL = Precision(KLL_K, HLL_LG_K)
#: 10 s and 1 min rows
COMPACT = Precision(100, 10)


def precision_for(width: int) -> Precision:
    """The precision of a row ``width`` seconds wide: full from an hour up.

    Wider rows are few, are kept for months and are merged into long-range reports and the
    day tier, so they keep full precision; 10 s and 1 min rows are many and short-lived.
    """
    return FULL if width >= 3600 else COMPACT


_HEADER_V1 = struct.Struct("<BqqdddII")  # flags, count, errors, sum, min, max, two lengths
_HEADER = struct.Struct("<BHBqqdddII")  # flags, kll_k, hll_lg_k, then as version 1
_CRC = struct.Struct("<I")  # after the header: the CRC-32 of the header and the parts
_VERSION = 2
_FLAG_KLL = 0x10
_FLAG_HLL = 0x20
_FLOAT32 = struct.Struct("<f")


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-quantile of already sorted values (the definition tests rely on)."""
    n = len(sorted_values)
    index = max(0, min(n - 1, math.ceil(q * n) - 1))
    return sorted_values[index]


class Agg:
    """Aggregate of the events of one series in one window; mergeable and serialisable.

    ``precision`` is what :meth:`to_bytes` keeps of the sketches (see the module docstring).
    """

    __slots__ = (
        "count",
        "errors",
        "hll",
        "kll",
        "max",
        "min",
        "precision",
        "sum",
        "users",
        "values",
    )

    def __init__(self, precision: Precision = FULL) -> None:
        self.precision = precision
        self.count = 0
        self.errors = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.values: array[float] | None = array("d")  # 8 bytes a value, not 32
        self.kll: kll_floats_sketch | None = None
        self.users: set[str] | None = set()
        self.hll: hll_sketch | None = None

    def add(self, value: float, success: bool, user: str | None) -> None:
        """Count one event."""
        self.count += 1
        if not success:
            self.errors += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        values = self.values
        if values is not None:
            values.append(value)
            if len(values) > EXACT_LIMIT:
                self._to_kll()
        else:
            assert self.kll is not None
            self.kll.update(value)
        if user is not None:
            users = self.users
            if users is not None:
                users.add(user)
                if len(users) > EXACT_LIMIT:
                    self._to_hll()
            else:
                assert self.hll is not None
                self.hll.update(user)

    def add_values(self, values: Sequence[float], errors: int, users: Iterable[str] = ()) -> None:
        """Count many events at once: their values in order, how many failed, their users.

        The same result as :meth:`add` for each event in turn.
        """
        if not values:
            return
        self.count += len(values)
        self.errors += errors
        self.sum = sum(values, self.sum)  # left to right, exactly as repeated `+=`
        low = min(values)
        if low < self.min:
            self.min = low
        high = max(values)
        if high > self.max:
            self.max = high
        if self.values is not None:
            self.values.extend(values)
            if len(self.values) > EXACT_LIMIT:
                self._to_kll()
        else:
            assert self.kll is not None
            update = self.kll.update
            for value in values:
                update(value)
        if self.users is not None:
            self.users.update(users)
            if len(self.users) > EXACT_LIMIT:
                self._to_hll()
        else:
            assert self.hll is not None
            hll_update = self.hll.update
            for user in users:
                hll_update(user)

    def merge(self, other: Agg) -> None:
        """Fold ``other`` into this aggregate (``other`` is left unchanged).

        Sketches of different precision merge; the result has the coarser of the two.
        """
        if other.count == 0 and not other.users:
            return
        self.count += other.count
        self.errors += other.errors
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if self.values is not None and other.values is not None:
            self.values.extend(other.values)
            if len(self.values) > EXACT_LIMIT:
                self._to_kll()
        else:
            if self.values is not None:
                self._to_kll()
            assert self.kll is not None
            if other.kll is not None:
                self.kll.merge(other.kll)
            else:
                for value in other.values or ():
                    self.kll.update(value)
        if self.users is not None and other.users is not None:
            self.users |= other.users
            if len(self.users) > EXACT_LIMIT:
                self._to_hll()
        else:
            if self.users is not None:
                self._to_hll()
            assert self.hll is not None
            if other.hll is not None:
                union = hll_union(HLL_LG_K)
                union.update(self.hll)
                union.update(other.hll)
                self.hll = union.get_result(tgt_hll_type.HLL_8)
            else:
                for user in other.users or ():
                    self.hll.update(user)

    def copy(self) -> Agg:
        out = Agg(self.precision)
        out.merge(self)
        return out

    @property
    def exact(self) -> bool:
        """True when percentiles and distinct users are exact (no sketch involved)."""
        return self.values is not None and self.users is not None

    @property
    def avg(self) -> float | None:
        return self.sum / self.count if self.count else None

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> tuple[float | None, ...]:
        """Percentiles (nearest rank when exact, KLL otherwise); None for an empty window."""
        if self.count == 0:
            return tuple(None for _ in qs)
        if self.values is not None:
            ordered = sorted(self.values)
            return tuple(nearest_rank(ordered, q) for q in qs)
        assert self.kll is not None
        low, high = self.min, self.max
        return tuple(min(max(_decimal(float(self.kll.get_quantile(q))), low), high) for q in qs)

    def distinct_users(self) -> int:
        if self.users is not None:
            return len(self.users)
        assert self.hll is not None
        return int(self.hll.get_estimate() + 0.5)

    def _to_kll(self) -> None:
        sketch = kll_floats_sketch(KLL_K)
        for value in self.values or ():
            sketch.update(value)
        self.kll = sketch
        self.values = None

    def _to_hll(self) -> None:
        sketch = hll_sketch(HLL_LG_K, tgt_hll_type.HLL_8)
        for user in self.users or ():
            sketch.update(user)
        self.hll = sketch
        self.users = None

    def to_bytes(self) -> bytes:
        """The stored form (the ``sketch`` column): sketches cut to :attr:`precision`."""
        return self._pack(self.precision)

    def _pack(self, cut: Precision | None) -> bytes:
        """Serialise, the sketches cut to ``cut`` (None: kept as they are)."""
        flags = _VERSION
        if self.values is not None:
            values_blob = self.values.tobytes()
        else:
            assert self.kll is not None
            flags |= _FLAG_KLL
            kll = self.kll
            if cut is not None and kll.k > cut.kll_k:
                kll = kll_floats_sketch(cut.kll_k)
                kll.merge(self.kll)
            values_blob = kll.serialize()
        if self.users is not None:
            users_blob = orjson.dumps(sorted(self.users)) if self.users else b""
        else:
            assert self.hll is not None
            flags |= _FLAG_HLL
            hll = self.hll
            if cut is not None:
                union = hll_union(min(cut.hll_lg_k, hll.lg_config_k))
                union.update(hll)
                hll = union.get_result(tgt_hll_type.HLL_4)
            users_blob = hll.serialize_compact()
        header = _HEADER.pack(
            flags,
            self.precision.kll_k,
            self.precision.hll_lg_k,
            self.count,
            self.errors,
            self.sum,
            self.min,
            self.max,
            len(values_blob),
            len(users_blob),
        )
        crc = zlib.crc32(users_blob, zlib.crc32(values_blob, zlib.crc32(header)))
        return header + _CRC.pack(crc) + values_blob + users_blob

    @classmethod
    def from_bytes(cls, blob: bytes) -> Agg:
        """Read what :meth:`to_bytes` wrote, in any version; ValueError if it cannot."""
        try:
            return cls._unpack(blob)
        # datasketches turns its C++ exceptions into several Python ones
        except (
            ArithmeticError,
            IndexError,
            MemoryError,
            RuntimeError,
            TypeError,
            ValueError,
            struct.error,
        ) as exc:
            raise ValueError(f"unreadable aggregate serialisation: {exc}") from exc

    @classmethod
    def _unpack(cls, blob: bytes) -> Agg:
        if not blob:
            raise ValueError("empty")
        version = blob[0] & 0x0F
        crc: int | None = None
        if version == _VERSION:
            flags, kll_k, lg_k, count, errors, total, low, high, n_values, n_users = (
                _HEADER.unpack_from(blob)
            )
            (crc,) = _CRC.unpack_from(blob, _HEADER.size)
            agg = cls(Precision(kll_k, lg_k))
            offset = _HEADER.size + _CRC.size
        elif version == 1:
            flags, count, errors, total, low, high, n_values, n_users = _HEADER_V1.unpack_from(blob)
            agg = cls(FULL)
            offset = _HEADER_V1.size
        else:
            raise ValueError(f"unknown version {version}")
        if flags & ~(0x0F | _FLAG_KLL | _FLAG_HLL):
            raise ValueError(f"unknown flags {flags:#04x}")
        if len(blob) != offset + n_values + n_users:
            raise ValueError(
                f"{len(blob)} bytes, the header announces {offset + n_values + n_users}"
            )
        # datasketches trusts its input (a damaged sketch can crash the process): only the
        # bytes that were written reach it. Version 1 had no checksum.
        view = memoryview(blob)
        if crc is not None and zlib.crc32(view[offset:], zlib.crc32(view[: _HEADER.size])) != crc:
            raise ValueError("checksum mismatch: the sketch is damaged")
        agg.count, agg.errors, agg.sum, agg.min, agg.max = count, errors, total, low, high
        values_blob = blob[offset : offset + n_values]
        users_blob = blob[offset + n_values :]
        if flags & _FLAG_KLL:
            if version == 1:
                values_blob = _kll_floats_from_doubles(values_blob)
            agg.values = None
            agg.kll = kll_floats_sketch.deserialize(values_blob)
        else:
            agg.values = array("d", values_blob)
        if flags & _FLAG_HLL:
            agg.users = None
            agg.hll = hll_sketch.deserialize(users_blob)
        elif users_blob:
            users = orjson.loads(users_blob)
            if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
                raise ValueError("the users part is not a list of ids")
            agg.users = set(users)
        return agg

    def __getstate__(self) -> bytes:
        return self._pack(None)  # a snapshot keeps the sketches whole

    def __setstate__(self, state: bytes) -> None:
        other = Agg.from_bytes(state)
        for name in Agg.__slots__:
            setattr(self, name, getattr(other, name))

    def __repr__(self) -> str:
        return (
            f"Agg(count={self.count}, errors={self.errors}, sum={self.sum}, min={self.min}, "
            f"max={self.max}, exact={self.exact}, precision={self.precision})"
        )


def _decimal(value: float) -> float:
    """The shortest decimal with the same float32 as ``value`` (a float32 sketch's item)."""
    if not math.isfinite(value):
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == value:
                return candidate
        except OverflowError:  # rounded past float32's range
            continue
    return value


def _kll_floats_from_doubles(blob: bytes) -> bytes:
    """A serialised KLL doubles sketch as the same sketch of floats (version 1 rows).

    The two formats differ only in the width of the items (datasketches' KLL format: an
    8-byte preamble; unless empty or single-item, n, min_k and the level offsets; then min,
    max and the retained items), so levels and weights, hence ranks, stay the same.
    """
    if len(blob) < 8:
        raise ValueError("KLL sketch shorter than its preamble")
    flags = blob[3]
    if flags & 0x01:  # empty: the preamble alone
        return blob
    if flags & 0x04:  # a single item, no levels
        start = 8
    else:
        if len(blob) < 20:
            raise ValueError("KLL sketch shorter than its preamble")
        start = 20 + 4 * blob[18]  # the offsets of num_levels levels
    items = array("d", blob[start:])  # ValueError unless whole float64s
    return blob[:start] + array("f", items).tobytes()
