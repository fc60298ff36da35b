"""Test settings with a few fields changed, groups included, without nested replaces."""

from __future__ import annotations

import dataclasses
from typing import Any

from qesmon.settings import Settings


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    """``dataclasses.replace`` where a group (``api``, ``pipeline``, ``notifier``, ``channels``)
    given as a dict changes only the fields it names::

        replace_settings(settings, rules_dir=rules, pipeline=dict(snapshot_interval=1))
    """
    for name, value in changes.items():
        group = getattr(settings, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(group):
            assert not isinstance(group, type)
            changes[name] = dataclasses.replace(group, **value)
    return dataclasses.replace(settings, **changes)
