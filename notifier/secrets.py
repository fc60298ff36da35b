"""Channel secrets: stored as given, resolved only when sending, masked everywhere else.

A field that may hold a secret (a token, a password, a header value; never a URL) holds the
secret itself or a reference ``${NAME}`` to an environment variable, and a reference is only
ever that: the WHOLE value of the field, naming a variable that starts with the configured
prefix (``SECRET_ENV_PREFIX``, default ``QESMON_SECRET_``). Everything else is taken
literally and never resolved, so ``https://evil.example/?p=${PGPASSWORD}`` is sent as
written and a config cannot choose which of the process's variables it reads. A reference
that is not allowed, or not set when sending, is refused with the same message as any bad
value of that field (:func:`invalid`), so no answer tells which variables exist.

:func:`resolve` replaces a reference with its value just before a send; the database and the
API only ever hold the reference. :func:`mask_config` is what every response and log line
shows, and :func:`scrub` removes resolved secret values from error texts (an aiohttp error
can carry a webhook URL)::

    resolve("${QESMON_SECRET_TW}", "QESMON_SECRET_", {"QESMON_SECRET_TW": "tok"})  # "tok"
    resolve("${PGPASSWORD}", "QESMON_SECRET_", os.environ)                         # None
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from qesmon.settings import DEFAULTS, mask_secret

#: the prefix a referenced variable must have unless ``SECRET_ENV_PREFIX`` says otherwise
DEFAULT_PREFIX: str = DEFAULTS["channels.reference_env_prefix"]

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def is_reference(value: str) -> bool:
    """Whether ``value`` is meant as a reference, well-formed or not: it starts with ``${``
    (a typo such as a missing brace is refused rather than sent as a literal secret)."""
    return value.startswith("${")


def allowed(value: str, prefix: str) -> bool:
    """Whether ``value`` is a well-formed reference to a variable that may be read."""
    match = REFERENCE.fullmatch(value)
    return match is not None and match.group(1).startswith(prefix) and match.group(1) != prefix


def invalid(expect: str, prefix: str) -> str:
    """The one complaint about a secret field, whatever is wrong with it: a bad literal, a
    malformed reference, a name without the prefix, a variable that is not set."""
    return f"must be {expect} or a ${{{prefix}NAME}} reference to a variable that is set"


def resolve(value: str, prefix: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value to send for a secret field: a literal as given, a reference's variable, or
    None when the reference is not allowed or its variable is not set."""
    if not is_reference(value):
        return value
    if not allowed(value, prefix):
        return None
    environ = os.environ if env is None else env
    return environ.get(value[2:-1])


def mask_value(value: Any) -> Any:
    """Mask one secret value; URLs keep their scheme and host, references stay visible."""
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if not isinstance(value, str) or value == "":
        return value
    if REFERENCE.fullmatch(value):
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
