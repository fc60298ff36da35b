"""Test settings with a few fields changed, groups included, without nested replaces."""

from __future__ import annotations

import dataclasses
from typing import Any

from qesmon.addresses import AllowList
from qesmon.settings import Settings

#: OUTBOUND_ALLOW of the tests: their receivers listen on loopback. The outbound guard's own
#: tests (tests/notifier/test_outbound.py, tests/api/test_ssrf.py) put the default back.
LOOPBACK = AllowList.parse("127.0.0.0/8,::1")


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
