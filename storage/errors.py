"""Domain errors raised by the archive core.

Each front door maps them once: ``dicomweb/`` to an HTTP status, ``pacs/`` to a DIMSE status.
Messages never contain PHI: they name attributes and UIDs, never patient values.
"""

import errno


class ArchiveError(Exception):
    """Base class for every error the archive raises on purpose.

    When the refused object's UIDs could be read, ``store`` sets them here, so a front door can name
    the object it refuses (STOW-RS FailedSOPSequence) without parsing it a second time.
    """

    sop_class_uid: str = ""
    sop_instance_uid: str = ""


class NotFound(ArchiveError):
    """The study, series, instance, frame or patient does not exist (or is out of scope)."""


class BadInput(ArchiveError):
    """The object or query is malformed: a missing UID, an unreadable dataset, a bad matching key."""


class Duplicate(ArchiveError):
    """An instance with this SOP Instance UID is stored already and the policy refuses the new one."""


class StorageFull(ArchiveError):
    """The blob store or the database has no room left."""


class BlobStoreUnavailable(StorageFull):
    """The object store (or too many dispersal locations) cannot be reached or did not confirm a
    write: that object is refused with Out of Resources, like a full disk; storing resumes by itself
    once the store answers again."""


class BlobStoreMisconfigured(ArchiveError):
    """The blob store refuses us for good: a wrong bucket, bad credentials, an impossible k-of-n.
    The message names the setting to fix (``pacs serve`` refuses to start with it)."""


class KeyUnavailable(ArchiveError):
    """The master key is missing or wrong, or a patient key cannot be unwrapped."""


class Conflict(ArchiveError):
    """The request contradicts what is stored (e.g. a STOW part outside the study named in the URL)."""


class StudyMismatch(Conflict):
    """A stored object's StudyInstanceUID is not the study it was sent to (STOW-RS to /studies/{uid})."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the disk is full: ENOSPC from a file, SQLite's
    SQLITE_FULL ("database or disk is full"), PostgreSQL's disk_full (SQLSTATE 53100)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return True
        if getattr(cur, "sqlite_errorcode", None) == _SQLITE_FULL or getattr(cur, "sqlstate", None) == "53100":
            return True
        cur = getattr(cur, "orig", None) or cur.__cause__ or cur.__context__
    return False


_SQLITE_FULL = 13
