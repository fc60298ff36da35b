"""The rollup tiers on disk: one hypertable per window width, and how long each must keep rows.

Pure: names and arithmetic only. ``migrations/0500_rollup_tiers.sql`` creates the tables (and
their chunk intervals); the pipeline's writer routes each window to its tier's table,
``qesmon maintain`` drops each tier's old chunks and merges the day tier, and the settings refuse
a retention that would drop a window late events may still update::

    tier_for(60).table                    # 'metric_rollups_1m'
    min_horizon(tier_for(10), 30.0)       # 3690.0: 60 s + the allowed lateness + MARGIN

The view ``metric_rollups`` (UNION ALL of the tier tables) is what readers query.
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE = 60
HOUR = 3600
DAY = 86400

#: how long beyond a window's end plus the allowed lateness a tier keeps it: the pipeline only
#: writes a window once its watermark passes, so a pipeline that is behind (a restart, a
#: backlog) still writes or updates windows of event time that old
MARGIN = HOUR

#: the pipeline's writer looks a series up again (refreshing ``series.resolved_at``) when its
#: cached id is older than this, so a series row untouched for longer is not being written
SERIES_RECHECK_SECONDS = HOUR


@dataclass(frozen=True, slots=True)
class Tier:
    """One rollup width on disk: its name in settings and logs, its table, its widths.

    ``width`` is the widest window the tier holds (the base tier holds any width under a
    minute: ``WINDOW_SECONDS``); ``feeds`` the widest window computed from its rows (the hour
    rows are merged into day rows), which the tier must keep until that window is final too.
    """

    name: str
    table: str
    width: int
    feeds: int

    def holds(self, width_s: int) -> bool:
        return width_s < MINUTE if self.width < MINUTE else width_s == self.width


BASE = Tier("10s", "metric_rollups_10s", 10, 10)
TIERS = (
    BASE,
    Tier("1m", "metric_rollups_1m", MINUTE, MINUTE),
    Tier("1h", "metric_rollups_1h", HOUR, DAY),
    Tier("1d", "metric_rollups_1d", DAY, DAY),
)


def tier_for(width_s: int) -> Tier:
    """The tier whose table holds windows of ``width_s`` seconds (ValueError if none)."""
    for tier in TIERS:
        if tier.holds(width_s):
            return tier
    raise ValueError(f"no rollup tier holds {width_s} s windows")


def min_horizon(tier: Tier, lateness: float) -> float:
    """The shortest retention (seconds) that never drops a window of ``tier`` while late
    events may still update it or a window computed from it: its end, the allowed lateness
    and :data:`MARGIN` (the base tier counts as a minute, the widest base window)."""
    widest = max(tier.feeds, MINUTE if tier is BASE else tier.width)
    return widest + lateness + MARGIN


def day_final_at(day_start: float, lateness: float) -> float:
    """When the day starting at ``day_start`` (UTC midnight) has final hour rows to merge."""
    return day_start + DAY + lateness + MARGIN
