"""The exception tree of qes-monitoring.

Every error we raise on purpose derives from :class:`QesmonError`, so callers can catch ours
without catching programming errors::

    QesmonError
     ├── ConfigError          a setting is missing or malformed (names the variable)
     ├── ContractError        a stream entry breaks the event contract (names the field)
     ├── MigrationError       a migration failed (names the file and the statement)
     ├── RuleError            a rule file is invalid (names file:line)
     ├── ChannelError         a notification channel is misconfigured or failed
     │    └── DeliveryError   one delivery attempt failed (carries status, retryability)
     └── ApiError             an API request is invalid; carries the HTTP status and a code
          ├── BadRequest        400
          ├── Unauthorized      401
          ├── Forbidden         403
          └── NotFound          404

Packages add subclasses next to their code; the API maps ``ApiError`` to HTTP answers in
one middleware.
"""

from __future__ import annotations


class QesmonError(Exception):
    """Base class of every error qes-monitoring raises on purpose."""


class ConfigError(QesmonError):
    """A configuration value is missing or malformed."""


class ContractError(QesmonError):
    """A stream entry or event breaks the event contract of DESIGN.md.

    ``field`` names the offending field (or ``None`` for the entry as a whole).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MigrationError(QesmonError):
    """A schema migration failed; the database was left as it was before that file."""

    def __init__(self, message: str, file: str, statement: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.statement = statement


class RuleError(QesmonError):
    """A rule file or rule is invalid. ``location`` is ``file:line`` when known."""

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location
        self.problem = message


class ChannelError(QesmonError):
    """A notification channel is misconfigured or cannot be used."""

    def __init__(self, message: str, channel: str | None = None) -> None:
        super().__init__(f"{channel}: {message}" if channel else message)
        self.channel = channel


class DeliveryError(ChannelError):
    """One delivery attempt failed.

    ``retryable`` tells whether trying again can help (5xx, 429, network errors) or not
    (other 4xx); ``retry_after`` is the delay the receiver asked for, in seconds.
    """

    def __init__(
        self,
        message: str,
        channel: str | None = None,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, channel)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class ApiError(QesmonError):
    """An API request cannot be served; maps to ``{"error": {"code", "message"}}``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"
