"""Email over SMTP submission: STARTTLS (or implicit TLS on 465), AUTH, text + HTML.

Uses :mod:`aiosmtplib`. The message is ``multipart/alternative`` with a plain-text part
(``templates/email/<event>.txt.j2``) and an HTML part (``<event>.html.j2``, autoescaped); the
subject comes from ``<event>.subject.j2``. SMTP 4xx replies and connection or TLS failures
are retried; 5xx replies (bad credentials, refused recipients, size) are not.
``starttls: true`` (the default) refuses to send if the server does not offer STARTTLS.
The connection goes to an address of ``smtp_host`` that the outbound guard checked
(:meth:`notifier.outbound.OutboundGuard.connect`); TLS verifies the server as ``smtp_host``.
Errors give the SMTP code with its standard meaning, not the server's text.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, ClassVar

import aiosmtplib

from notifier import outbound
from notifier.channels.base import Channel, Message, SendEnv, SendResult, register
from notifier.secrets import DEFAULT_PREFIX
from qesmon.settings import ChannelSettings

#: what an SMTP reply code means (RFC 5321, 4954, 3207), said instead of the server's text
SMTP_REPLIES = {
    421: "service not available",
    450: "mailbox unavailable",
    451: "local error in processing",
    452: "insufficient system storage",
    454: "temporary authentication failure",
    500: "command not recognised",
    501: "syntax error in parameters",
    502: "command not implemented",
    503: "bad sequence of commands",
    504: "parameter not implemented",
    530: "authentication required",
    534: "authentication mechanism too weak",
    535: "authentication credentials invalid",
    538: "encryption required",
    550: "mailbox unavailable",
    551: "user not local",
    552: "exceeded storage allocation",
    553: "mailbox name not allowed",
    554: "transaction failed",
    555: "parameters not recognised",
}


def smtp_summary(code: int) -> str:
    """``SMTP 535 (authentication credentials invalid)``: the code and its standard meaning."""
    meaning = SMTP_REPLIES.get(code)
    return f"SMTP {code}" + (f" ({meaning})" if meaning else "")


@register
class Email(Channel):
    name = "email"
    secret_fields = frozenset({"password"})
    references: ClassVar[Mapping[str, str]] = {"password": "the SMTP password"}
    kinds = frozenset({"firing", "repeat", "escalated", "acknowledged", "resolved", "test"})

    @classmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        f = cls.fields(config, secret_prefix)
        f.text("smtp_host", required=True)
        port = f.number("smtp_port", 587, lo=1, hi=65535)
        user = f.text("username")
        password = f.secret("password")
        if bool(user) != bool(password):
            raise f.fail(
                "password" if user else "username",
                "username and password go together (both or neither)",
            )
        sender = f.text("from", required=True)
        if sender and "@" not in sender:
            raise f.fail("from", f"{sender!r} is not an email address")
        for addr in f.str_list("to", required=True):
            if "@" not in addr:
                raise f.fail("to", f"{addr!r} is not an email address")
        tls = f.flag("tls", port == 465)
        starttls = f.flag("starttls", not tls)
        if tls and starttls:
            raise f.fail("starttls", "cannot be combined with tls (implicit TLS)")
        f.text("ca_file")
        f.flag("validate_certs", True)
        f.number("timeout", 10.0, lo=0.1, hi=120)
        return f.done()

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        if not (channels.email_smtp_host and channels.email_from and channels.email_to):
            return None
        config: dict[str, Any] = {
            "smtp_host": channels.email_smtp_host,
            "smtp_port": channels.email_smtp_port,
            "from": channels.email_from,
            "to": channels.email_to,
        }
        if channels.email_smtp_user:
            config["username"] = channels.email_smtp_user
            config["password"] = channels.email_smtp_password
        return config

    def build(self, message: Message, env: SendEnv) -> EmailMessage:
        """The MIME message: Subject/From/To/Date/Message-ID, text then HTML alternative."""
        context = message.context()
        render = env.renderer.render
        subject = render(self.name, message.kind, "subject", context, message.template_set)
        text = render(self.name, message.kind, "txt", context, message.template_set)
        html = render(self.name, message.kind, "html", context, message.template_set)
        msg = EmailMessage()
        msg["Subject"] = " ".join(subject.split())[:250]
        msg["From"] = self.config["from"]
        msg["To"] = ", ".join(self.config["to"])
        msg["Date"] = formatdate(env.clock.now(), usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.config["from"].rsplit("@", 1)[-1])
        msg["X-Qesmon-Event"] = message.kind
        msg.set_content(text + "\n", cte="quoted-printable")
        msg.add_alternative(html + "\n", subtype="html", cte="quoted-printable")
        return msg

    async def send(self, message: Message, env: SendEnv) -> SendResult:
        config = self.resolved(env.environ)
        msg = self.build(message, env)
        context = ssl.create_default_context(cafile=config.get("ca_file"))
        if not config.get("validate_certs", True):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        timeout = config.get("timeout", 10.0)
        guard = outbound.guard_of(env.session)
        try:
            async with asyncio.timeout(timeout):
                sock = await guard.connect(config["smtp_host"], int(config.get("smtp_port", 587)))
            errors, reply = await aiosmtplib.send(
                msg,
                hostname=config["smtp_host"],  # what TLS verifies the server's certificate for
                sock=sock,  # from here on aiosmtplib's transport owns (and closes) it
                username=config.get("username"),
                password=config.get("password"),
                use_tls=config.get("tls", False),
                start_tls=bool(config.get("starttls", True)),
                tls_context=context,
                timeout=timeout,
            )
        except outbound.OutboundRefused as exc:
            raise self.error(str(exc), retryable=False) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            raise self.error(
                "recipients refused: "
                + "; ".join(f"{e.recipient}: {e.code}" for e in exc.recipients),
                status=max(codes),
                retryable=all(400 <= c < 500 for c in codes),
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise self.error(
                smtp_summary(exc.code), status=exc.code, retryable=400 <= exc.code < 500
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise self.error(f"SMTP failed: {type(exc).__name__}: {exc}", retryable=True) from None
        if errors:
            refused = "; ".join(f"{r}: {c}" for r, (c, _) in errors.items())
            raise self.error(f"some recipients refused: {refused}", status=550, retryable=False)
        return SendResult(250, reply.split("\n")[0][:200])
