"""Mergeable window aggregates: count, errors, sum, min, max, percentiles, distinct users.

:class:`Agg` is what one series holds for one window. Small windows keep their values and
user ids exactly (percentiles and distinct counts are then exact); past ``EXACT_LIMIT`` they
switch to datasketches' KLL (percentiles, rank error about 1.3 % at k=200) and HLL (distinct
counts, about 1.6 % at lg_k=12). Two aggregates merge without loss of that accuracy, so a
minute is the merge of its 10 s windows and a ``group_by`` the merge of its series — never an
average of percentiles::

    agg = Agg()
    agg.add(0.120, True, "user-1")
    agg.merge(other)
    p50, p95, p99 = agg.quantiles()

Percentiles use the nearest-rank definition: the smallest value whose rank is >= q·n.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Iterable, Sequence

import orjson
from datasketches import hll_sketch, hll_union, kll_doubles_sketch, tgt_hll_type

EXACT_LIMIT = 256
KLL_K = 200
HLL_LG_K = 12
QUANTILES = (0.5, 0.95, 0.99)

_HEADER = struct.Struct(
    "<BqqdddII"
)  # version, count, errors, sum, min, max, len(values), len(users)
_VERSION = 1
_FLAG_KLL = 0x10
_FLAG_HLL = 0x20


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-quantile of already sorted values (the definition tests rely on)."""
    n = len(sorted_values)
    index = max(0, min(n - 1, math.ceil(q * n) - 1))
    return sorted_values[index]


class Agg:
    """Aggregate of the events of one series in one window; mergeable and serialisable."""

    __slots__ = ("count", "errors", "hll", "kll", "max", "min", "sum", "users", "values")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.values: array[float] | None = array("d")  # 8 bytes a value, not 32
        self.kll: kll_doubles_sketch | None = None
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
        """Fold ``other`` into this aggregate (``other`` is left unchanged)."""
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
        out = Agg()
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
        return tuple(float(self.kll.get_quantile(q)) for q in qs)

    def distinct_users(self) -> int:
        if self.users is not None:
            return len(self.users)
        assert self.hll is not None
        return int(self.hll.get_estimate() + 0.5)

    def _to_kll(self) -> None:
        sketch = kll_doubles_sketch(KLL_K)
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
        """A compact, versioned serialisation (the ``sketch`` column and snapshots)."""
        flags = _VERSION
        values_blob = b""
        users_blob = b""
        if self.values is not None:
            values_blob = self.values.tobytes()
        else:
            assert self.kll is not None
            flags |= _FLAG_KLL
            values_blob = self.kll.serialize()
        if self.users is not None:
            users_blob = orjson.dumps(sorted(self.users)) if self.users else b""
        else:
            assert self.hll is not None
            flags |= _FLAG_HLL
            users_blob = self.hll.serialize_compact()
        header = _HEADER.pack(
            flags,
            self.count,
            self.errors,
            self.sum,
            self.min,
            self.max,
            len(values_blob),
            len(users_blob),
        )
        return header + values_blob + users_blob

    @classmethod
    def from_bytes(cls, blob: bytes) -> Agg:
        flags, count, errors, total, low, high, n_values, n_users = _HEADER.unpack_from(blob)
        if flags & 0x0F != _VERSION:
            raise ValueError(f"unknown aggregate serialisation version {flags & 0x0F}")
        agg = cls()
        agg.count, agg.errors, agg.sum, agg.min, agg.max = count, errors, total, low, high
        offset = _HEADER.size
        values_blob = blob[offset : offset + n_values]
        users_blob = blob[offset + n_values : offset + n_values + n_users]
        if flags & _FLAG_KLL:
            agg.values = None
            agg.kll = kll_doubles_sketch.deserialize(values_blob)
        else:
            agg.values = array("d", values_blob)
        if flags & _FLAG_HLL:
            agg.users = None
            agg.hll = hll_sketch.deserialize(users_blob)
        else:
            agg.users = set(orjson.loads(users_blob)) if users_blob else set()
        return agg

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        other = Agg.from_bytes(state)
        for name in Agg.__slots__:
            setattr(self, name, getattr(other, name))

    def __repr__(self) -> str:
        return (
            f"Agg(count={self.count}, errors={self.errors}, sum={self.sum}, min={self.min}, "
            f"max={self.max}, exact={self.exact})"
        )
