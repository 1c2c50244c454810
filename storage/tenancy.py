"""Tenancy (issue 19 part 1): which provider a store acts for, and the patient identity it keys.

Kept apart from :mod:`storage.providers` (the table's verbs, which need the archive) so that the
archive itself can use it. A provider's patients are told apart from another's by their identity
string, which the archive turns into the keyed hash ``patients.pid_hash`` (the blind index
``pid``): ``issuer|PatientID`` for the provider ``default`` (unchanged since the first schema, so
every existing patient keeps its key and row) and ``p<provider id>:issuer|PatientID`` for any
other. So provider A's "12345" and provider B's "12345" are two patients with two data keys, even
when both objects name the same Issuer of Patient ID. Objects that name no issuer get the
provider's name as issuer in the index (what C-FIND and QIDO-RS answer); the stored bytes stay as
received (docs: README "Providers").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_ID = 1
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class ProviderRef:
    """The provider a credential acts for: its row id and name (storage/providers.py)."""

    id: int
    name: str

    @property
    def is_default(self) -> bool:
        return self.id == DEFAULT_ID


DEFAULT = ProviderRef(DEFAULT_ID, DEFAULT_NAME)


def provider_is(column: Any, provider_id: Any) -> Any:
    """``column = provider_id`` as a filter that never picks the index on ``provider_id``.

    A provider holds a large share of the archive: walking ``ix_patients_provider_id`` would read
    all its patients (and sort all their studies) where the other filters (a Patient ID's hash, a
    UID, the study list's ``ix_studies_listing``) find the few rows at once. Measured (SQLite, 3,000
    patients in two providers): the plain condition made SQLite scan the provider index for a
    Patient ID search and sort every study of the provider for the list. ``+ 0`` keeps the plans
    of an unscoped query and filters the rows they find."""
    return (column + 0) == provider_id


def issuer_for(provider: ProviderRef, issuer: str) -> str:
    """The Issuer of Patient ID the index keeps: the object's own, else the provider's name
    (``default`` keeps an empty one, as before providers existed)."""
    if issuer or provider.is_default:
        return issuer
    return provider.name


def patient_identity(provider: ProviderRef, issuer: str, patient_id: str) -> str:
    """The string whose keyed hash is ``patients.pid_hash``: one patient per provider and ID."""
    issuer = issuer_for(provider, issuer)
    if provider.is_default:
        return f"{issuer}|{patient_id}"
    return f"p{provider.id}:{issuer}|{patient_id}"


#: The refusal when a UID is stored under another patient (of this or another provider): the
#: same words either way, so it says nothing of whose it is.
FOREIGN_STUDY = "StudyInstanceUID is already stored under a different patient"
FOREIGN_UID = "SOP Instance UID is already stored under a different patient"
