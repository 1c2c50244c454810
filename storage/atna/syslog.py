"""Syslog framing of audit messages: RFC 5424 messages, RFC 5425 octet counting (TLS).

IHE ITI-20 (Record Audit Event) sends each DICOM audit message (PS3.15 A.5) as the MSG of one RFC 5424
syslog message: PRI 85 (facility 10 security/authorization, severity 5 notice), VERSION 1, the time
of the event, this host, APP-NAME, PROCID, MSGID ``IHE+RFC-3881``, no structured data, and the XML
as MSG-UTF8 (a byte order mark, then UTF-8). Over TLS (RFC 5425 4.3) each message is preceded by its
length in octets and a space; over UDP (RFC 5426) a message is one datagram as it is.

Hand-written: a few lines of formatting; the standard library's SysLogHandler writes RFC 3164, and no
well-kept library does RFC 5424 with octet counting over TLS.
"""

from __future__ import annotations

import re
from datetime import datetime

PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice)
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def header_field(value: str, limit: int) -> str:
    """A HOSTNAME / APP-NAME / PROCID value: printable US-ASCII without spaces, or "-" (NILVALUE)."""
    value = _NOT_PRINTUSASCII.sub("", value)[:limit]
    return value or "-"


def message(xml: bytes, *, at: datetime, hostname: str, app_name: str, procid: str) -> bytes:
    """One RFC 5424 SYSLOG-MSG holding ``xml``; ``at`` is UTC (naive or aware)."""
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    header = (f"<{PRI}>1 {stamp} {header_field(hostname, 255)} {header_field(app_name, 48)} "
              f"{header_field(procid, 128)} {MSGID} -")
    return header.encode("ascii") + b" " + BOM + xml


def octet_counted(msg: bytes) -> bytes:
    """RFC 5425 4.3 framing: MSG-LEN SP SYSLOG-MSG."""
    return b"%d " % len(msg) + msg
