"""Channel secrets: stored as given, resolved only when sending, masked everywhere else.

A secret field may hold the secret itself or a ``${ENV_NAME}`` reference; the reference is
what the database and the API keep, and :func:`resolve` replaces it with the variable's value
just before a send. :func:`mask_config` is what every response and log line shows, and
:func:`scrub` removes resolved secret values from error texts (an aiohttp error can carry a
webhook URL).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from qesmon.errors import ChannelError
from qesmon.settings import mask_secret

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve(value: Any, field: str, channel: str, env: Mapping[str, str] | None = None) -> Any:
    """Replace ``${NAME}`` references in a string (or nested list/dict) by their values."""
    environ = os.environ if env is None else env
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ChannelError(f"{field} refers to ${{{name}}}, which is not set", channel)
            return environ[name]

        return ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [resolve(v, field, channel, env) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, f"{field}.{k}", channel, env) for k, v in value.items()}
    return value


def mask_value(value: Any) -> Any:
    """Mask one secret value; URLs keep their scheme and host, references stay visible."""
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if not isinstance(value, str) or value == "":
        return value
    if ENV_REF.fullmatch(value):
        return value
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}/***"
    return mask_secret(value)


def mask_config(config: Mapping[str, Any], secret_fields: Iterable[str]) -> dict[str, Any]:
    """A copy of ``config`` with every secret field masked."""
    secrets = set(secret_fields)
    return {k: mask_value(v) if k in secrets else v for k, v in config.items()}


def secret_values(resolved: Mapping[str, Any], secret_fields: Iterable[str]) -> list[str]:
    """The resolved secret strings of a config (for :func:`scrub`)."""
    out: list[str] = []
    for name in secret_fields:
        value = resolved.get(name)
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            if isinstance(v, str) and len(v) >= 4:
                out.append(v)
                parts = urlsplit(v)
                if parts.path and len(parts.path) > 4:
                    out.append(parts.path)
    return sorted(out, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
