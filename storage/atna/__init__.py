"""Audit to an audit record repository (IHE ATNA, DICOM PS3.15 A.5) - the parts without network code.

* :mod:`.messages`: an ``audit_events`` row as a PS3.15 A.5 AuditMessage (which action is which
  message; how patients are named).
* :mod:`.syslog`: RFC 5424 syslog framing, RFC 5425 octet counting.
* :mod:`.queue`: the audit table as the durable queue, its delivered-up-to marker and the sender's
  lease (one sender per cluster).
* :mod:`.target`: the ``audit_repository`` setting.

The sender (TLS / UDP sockets, retry and back-off) is ``pacs/atna.py``.
"""
