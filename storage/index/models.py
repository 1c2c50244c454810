"""Index tables. Identifying values live only in the encrypted ``phi`` columns.

Clear columns hold what is not identifying and what SQL must filter or sort on: UIDs, dates and times
of studies and series, modality, counts, sizes. ``*_hash`` columns are keyed HMACs ("blind indexes")
for exact matching of identifiers (PatientID, AccessionNumber) without storing them.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    if TYPE_CHECKING:  # as SQLAlchemy declares its own (FromClause): for the type checker only
        # Every model here is one table (no custom FROM): say so, for Core statements on it.
        __table__: ClassVar[Table]


class SystemKey(Base):
    """Keys of the installation itself (blind-index key, key check), wrapped by the master key."""

    __tablename__ = "system_keys"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)


class PatientKey(Base):
    """A patient's data key, wrapped. Deleting this row is crypto-shredding."""

    __tablename__ = "patient_keys"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kek_version: Mapped[int] = mapped_column(Integer, index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid_hash: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)  # HMAC(issuer|PatientID)
    id_hash: Mapped[bytes] = mapped_column(LargeBinary(16), index=True)  # HMAC(PatientID) alone
    key_id: Mapped[str] = mapped_column(String(32), ForeignKey("patient_keys.key_id"))
    phi: Mapped[bytes] = mapped_column(LargeBinary)
    # The retention clock (storage/retention.py, migration 0005): both kept, never one for the other.
    last_study_date: Mapped[str] = mapped_column(String(8), default="")  # YYYYMMDD, latest StudyDate
    last_received_at: Mapped[datetime] = mapped_column(DateTime, index=True)  # UTC, last object received
    created_at: Mapped[datetime] = mapped_column(DateTime)
    num_studies: Mapped[int] = mapped_column(Integer, default=0)
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    provider_id: Mapped[int] = mapped_column(Integer, index=True,
                                             server_default="1")  # providers.id (migration 0011)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_hash: Mapped[bytes | None] = mapped_column(LargeBinary(16), index=True)
    modalities: Mapped[str] = mapped_column(String(128), default="")  # backslash separated
    sop_classes: Mapped[str] = mapped_column(Text, default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    phi: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    phi: Mapped[bytes] = mapped_column(LargeBinary)
    metadata_cache: Mapped[bytes | None] = mapped_column(LargeBinary)  # encrypted DICOM JSON
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(64), default="")  # original media type of artifacts
    blob_key: Mapped[str] = mapped_column(String(32), unique=True)
    blob_size: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)  # plaintext Part 10 size
    phi: Mapped[bytes] = mapped_column(LargeBinary)  # encrypted small header attributes
    frame_index: Mapped[bytes | None] = mapped_column(LargeBinary)  # JSON, computed on first frame read
    received_at: Mapped[datetime] = mapped_column(DateTime)


class InlineBlob(Base):
    """A small encrypted object kept in the index (storage/blobstore.py, DatabaseBlobStore)."""

    __tablename__ = "inline_blobs"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class BlobRepair(Base):
    """A dispersed blob below full redundancy (storage/dispersal/): its missing or corrupt shares."""

    __tablename__ = "blob_repairs"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)  # the blob's random key
    shares: Mapped[str] = mapped_column(String(800))  # share numbers, comma separated
    reason: Mapped[str] = mapped_column(String(16))  # write | missing | corrupt | scrub
    recorded_at: Mapped[datetime] = mapped_column(DateTime)


class ApiToken(Base):
    """Provider API tokens (DICOMweb bearer), stored as SHA-256 of the token."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    provider_id: Mapped[int | None] = mapped_column(Integer)  # providers.id; NULL: default (0014)
    cross_tenant: Mapped[bool] = mapped_column(Boolean, default=False,
                                               server_default=false())  # sees every provider


class AuditEvent(Base):
    """Append-only audit trail (PS3.15 A.5 in spirit). Patient referenced by row id, never by value."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    patient_ref: Mapped[int | None] = mapped_column(Integer, index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


Index("ix_instances_series_number", Instance.series_id, Instance.instance_number)
Index("ix_studies_patient_date", Study.patient_id, Study.study_date)


# -- patient letters (issue 6) ----------------------------------------------------------------------

class Letter(Base):
    """A patient letter: a random selector, HMAC of the access code, Argon2id hash of the passcode.

    The patient is referenced by row id only; nothing identifying is kept in clear.
    """

    __tablename__ = "letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    selector: Mapped[str] = mapped_column(String(64), unique=True)
    patient_ref: Mapped[int] = mapped_column(Integer, index=True)
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    passcode_hash: Mapped[str] = mapped_column(String(256))
    study_uids: Mapped[str] = mapped_column(Text, default="")  # backslash separated; "" = all
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive failed codes
    locked_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)


class AccessFailure(Base):
    """Failed access-code attempts per client address (shared by every worker through the index)."""

    __tablename__ = "access_failures"
    client: Mapped[str] = mapped_column(String(64), primary_key=True)  # HMAC of the address, hex
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class PatientSession(Base):
    """A server-side patient page session: the cookie holds a random id, we keep its SHA-256."""

    __tablename__ = "patient_sessions"
    id_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    letter_id: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


# -- read path (migration 0003) ---------------------------------------------------------------------

# QIDO's study list is ORDER BY study_date DESC, study_time DESC, id DESC LIMIT n: read in index order.
Index("ix_studies_listing", Study.study_date.desc(), Study.study_time.desc(), Study.id.desc())
# The metadata warmer's periodic question "which series have no cache yet?" reads only those rows.
Index("ix_series_metadata_pending", Series.updated_at,
      sqlite_where=Series.metadata_cache.is_(None), postgresql_where=Series.metadata_cache.is_(None))


# -- blind indexes (migration 0006, storage/blindindex.py) ------------------------------------------

class PatientToken(Base):
    """A patient's blind-index tokens: looked up by token, deleted with the patient."""

    __tablename__ = "patient_tokens"
    __table_args__ = {"sqlite_with_rowid": False}
    token: Mapped[bytes] = mapped_column(LargeBinary(4), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"),
                                            primary_key=True, index=True)


class StudyToken(Base):
    __tablename__ = "study_tokens"
    __table_args__ = {"sqlite_with_rowid": False}
    token: Mapped[bytes] = mapped_column(LargeBinary(4), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"),
                                          primary_key=True, index=True)


class SeriesToken(Base):
    __tablename__ = "series_tokens"
    __table_args__ = {"sqlite_with_rowid": False}
    token: Mapped[bytes] = mapped_column(LargeBinary(4), primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"),
                                           primary_key=True, index=True)


class ReindexState(Base):
    """How far ``pacs reindex`` got per level (rows with a higher id have no tokens yet)."""

    __tablename__ = "reindex_state"
    level: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[bool] = mapped_column(Boolean, default=False)


# -- backups (migration 0010) -----------------------------------------------------------------------

class ShredLogEntry(Base):
    """A shredded patient's key id (random, no PHI): ``pacs restore`` replays it on older backups."""

    __tablename__ = "shred_log"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    shredded_at: Mapped[datetime] = mapped_column(DateTime, index=True)  # index: migration 0015


class ClusterEpoch(Base):
    """A counter bumped by whoever changes what other nodes cache (storage/cluster.py, migration 0015)."""

    __tablename__ = "cluster_epochs"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


# -- providers (migration 0011, storage/providers.py) -----------------------------------------------

class Provider(Base):
    """A tenant: the provider whose credentials stored a patient, and alone may see them."""

    __tablename__ = "providers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)


# -- audit to a repository (migration 0014, storage/atna/queue.py) ----------------------------------

class AuditDelivery(Base):
    """How far audit_events went to one audit record repository (IHE ATNA), and who sends them.

    The audit table is the queue; this row is its delivered-up-to marker and the sender's lease
    (one sender per cluster: the process whose ``owner`` holds an unexpired ``lease_until``)."""

    __tablename__ = "audit_delivery"
    repository: Mapped[str] = mapped_column(String(255), primary_key=True)
    delivered_id: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str] = mapped_column(String(128), default="")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)
