"""Receivers: configured channel instances, owned by the platform or by one tenant.

A receiver is known everywhere (outbox rows, told channels, delivery workers, ``deliveries``)
by its id. The platform's receivers are one per channel type and their id is the type
(``slack``, ``webhook``: what the rule files' routing names); a tenant's receiver is
``<name>@<tenant>``, its name chosen by the tenant (``ops@acme``). Names have no ``@``, so
the owner is what follows the first one::

    receiver_id("acme", "ops")  -> "ops@acme"      owner("ops@acme") -> "acme"
    receiver_id("", "slack")    -> "slack"         owner("slack")    -> ""

:class:`Available` is what the notifier's decisions may send to: receiver id -> channel type.
A tenant's receivers are told about every notice of that tenant's alerts and of nothing else
(:mod:`notifier.decide`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

#: a receiver's name: what the API accepts and the ``receivers`` table checks
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def receiver_id(tenant: str, name: str) -> str:
    """The id of ``tenant``'s receiver ``name`` (``tenant`` "" is the platform)."""
    return f"{name}@{tenant}" if tenant else name


def owner(rid: str) -> str:
    """The tenant that owns receiver ``rid`` ("" for the platform)."""
    _, at, tenant = rid.partition("@")
    return tenant if at else ""


@dataclass(frozen=True, slots=True)
class Available:
    """The receivers that can be sent to now (configured and enabled): id -> channel type."""

    channels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def platform(cls, names: Iterable[str]) -> Available:
        """Platform receivers named after their channel type (as from the environment)."""
        return cls({name: name for name in names})

    def __contains__(self, rid: object) -> bool:
        return rid in self.channels

    def __iter__(self) -> Iterator[str]:
        return iter(self.channels)

    def __len__(self) -> int:
        return len(self.channels)

    def channel(self, rid: str) -> str:
        """The channel type of receiver ``rid``."""
        return self.channels[rid]

    def of_tenant(self, tenant: str) -> list[str]:
        """The receivers ``tenant`` owns, in a stable order (none for the platform's "")."""
        if not tenant:
            return []
        return sorted(rid for rid in self.channels if owner(rid) == tenant)
