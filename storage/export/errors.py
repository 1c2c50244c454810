"""Exceptions raised by the export package."""

from __future__ import annotations


class ExportError(Exception):
    """An export could not be produced (bad item, bad option, layout overflow)."""


class EncryptionStateError(ExportError):
    """An encrypting writer was used after it was closed or aborted."""
