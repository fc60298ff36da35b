"""What the pipeline produces and the rules and API read: series identities and window results."""

from __future__ import annotations

from dataclasses import dataclass

from qesmon.sketch import Agg

#: window widths the pipeline writes, in seconds: base window, minute, hour
ROLLUP_WIDTHS = (10, 60, 3600)


@dataclass(frozen=True, slots=True)
class Series:
    """Identity of a series: metric name, type, tenant ('' when none) and sorted labels."""

    name: str
    type: str
    tenant: str
    labels: tuple[tuple[str, str], ...]

    def label(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return default

    @property
    def labels_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(slots=True)
class WindowResult:
    """The aggregate of one series over one closed window ``[start, start + width_s)``.

    ``final`` is False when the window may still change (events inside the allowed lateness
    re-emit it with its full new value); ``revision`` counts those re-emissions (0 = first).
    """

    series: Series
    width_s: int
    start: float
    agg: Agg
    revision: int = 0

    @property
    def end(self) -> float:
        return self.start + self.width_s
