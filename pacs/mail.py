"""Patient letters by email: the letter's address sent over SMTP with STARTTLS (RFC 3207).

The standard library does it well (``smtplib``, ``email.message``, ``ssl``): no dependency. The
server's certificate is always checked (``ssl.create_default_context``, optionally with the site's
CA file), and a server that does not offer STARTTLS is refused before anything is sent.

Two channels by default (security.md "Patient letters"): the mail carries the URL and the expiry
only; the access code and the export passcode stay on the paper or PDF letter. ``mail_codes =
true`` puts them in the mail too, for sites that accept one channel. The mail names no patient
(no name, no ID): a misdirected mail says only that someone has a record at this address.
"""

from __future__ import annotations

import smtplib
import ssl
import uuid
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, localtime, parseaddr
from typing import Any

from storage.config import Settings

SUBJECT = "Your medical images"


class MailError(Exception):
    """The mail was not sent (not configured, refused, unreachable); the message says why."""


def check_address(address: str) -> str:
    """A single plain mailbox (user@domain), or MailError: no names, lists or header tricks."""
    address = (address or "").strip()
    _name, parsed = parseaddr(address)
    if (not parsed or parsed != address or any(c in address for c in "\r\n,;<> ")
            or address.count("@") != 1):
        raise MailError(f"not a single email address: {address[:80]!r}")
    local, domain = address.split("@")
    if not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        raise MailError(f"not a single email address: {address[:80]!r}")
    return address


def check_configured(settings: Settings) -> None:
    """MailError unless the settings can send a mail (before a letter is issued for nothing)."""
    if not settings.smtp_host:
        raise MailError("no mail server is configured (smtp_host in conf/pacs.toml)")


def _password(settings: Settings) -> str:
    if settings.smtp_password_file is not None:
        try:
            return settings.smtp_password_file.read_text().strip()
        except OSError as exc:
            raise MailError(f"smtp_password_file cannot be read ({exc.strerror})") from None
    return settings.smtp_password


def letter_message(issued: Any, to: str, settings: Settings) -> EmailMessage:
    """The mail for an :class:`storage.letters.IssuedLetter` (text/plain, UTF-8)."""
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = Address(addr_spec=check_address(to))
    msg["Subject"] = SUBJECT
    msg["Date"] = format_datetime(localtime())
    domain = settings.smtp_from.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    lines = [
        "Hello,",
        "",
        "You can see and download your medical images and reports from any web browser:",
        "",
        f"    {issued.url}",
        "",
    ]
    if settings.mail_codes:
        lines += [
            "Type this access code (keep it secret, like a bank PIN):",
            f"    {issued.access_code}",
            "",
            "To download everything, the file is locked with this passcode:",
            f"    {issued.passcode}",
            "",
        ]
    else:
        lines += [
            "To open it you need the access code from the letter your provider gives you",
            "(on paper or as a PDF). For your safety it is never sent by email.",
            "",
        ]
    if issued.expires_at:
        lines.append(f"This address works until {issued.expires_at:%Y-%m-%d}.")
    lines += ["If you did not expect this mail, you can ignore it.", ""]
    msg.set_content("\n".join(lines))
    return msg


def send(msg: EmailMessage, settings: Settings) -> None:
    """Deliver ``msg`` to the configured server: EHLO, STARTTLS (required), AUTH if set, send."""
    check_configured(settings)
    context = ssl.create_default_context(
        cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port,
                          timeout=settings.smtp_timeout) as smtp:
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise MailError("the mail server does not offer STARTTLS; nothing was sent")
            smtp.starttls(context=context)
            smtp.ehlo()
            if settings.smtp_user:
                smtp.login(settings.smtp_user, _password(settings))
            refused = smtp.send_message(msg)
            if refused:
                raise MailError("the mail server refused the recipient")
    except MailError:
        raise
    except smtplib.SMTPAuthenticationError:
        raise MailError("the mail server refused the SMTP user name or password") from None
    except smtplib.SMTPRecipientsRefused:
        raise MailError("the mail server refused the recipient") from None
    except smtplib.SMTPResponseException as exc:
        raise MailError(f"the mail server answered {exc.smtp_code}") from None
    except ssl.SSLError as exc:
        raise MailError(f"TLS with the mail server failed ({exc.reason or exc})") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"the mail server cannot be reached ({exc})") from None


def deliver_letter(issued: Any, to: str, settings: Settings, audit: Any, *, actor: str,
                   origin: str) -> None:
    """Mail the letter; audit the outcome (``letter-mail``, success or failure) either way.

    Raises MailError on failure. The letter itself is untouched: it stays valid."""
    domain = to.rpartition("@")[2][:64]
    try:
        send(letter_message(issued, to, settings), settings)
    except MailError as exc:
        audit.record("letter-mail", actor=actor, source=origin, outcome="failure",
                     patient_ref=issued.patient_ref,
                     detail=f"letter {issued.letter_id} to a mailbox at {domain}: {exc}")
        raise
    audit.record("letter-mail", actor=actor, source=origin, patient_ref=issued.patient_ref,
                 detail=f"letter {issued.letter_id} to a mailbox at {domain}"
                        + (" with codes" if settings.mail_codes else ""))
