"""The providers table (migration 0011): the default provider, names, removal."""

import io
import uuid

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.errors import BadInput, Conflict, NotFound
from storage.index.models import Patient
from storage.providers import (
    DEFAULT_PROVIDER_ID,
    add_provider,
    get_provider,
    list_providers,
    provider_names,
    remove_provider,
)
from tests.dicomgen import make_image


def test_default_provider_exists_and_new_ones_get_their_own_id(archive):
    assert provider_names(archive)[DEFAULT_PROVIDER_ID] == "default"
    name = f"Clinic {uuid.uuid4().hex[:8]}"
    made = add_provider(archive, name)
    assert made.id != DEFAULT_PROVIDER_ID
    assert get_provider(archive, name).id == made.id
    assert name in [p.name for p in list_providers(archive)]
    with pytest.raises(Conflict):
        add_provider(archive, name)


def test_bad_names_and_removal(archive):
    for bad in ("", " lead", "x" * 65, "a/b", "é"):
        with pytest.raises(BadInput):
            add_provider(archive, bad)
    name = f"gone-{uuid.uuid4().hex[:8]}"
    add_provider(archive, name)
    remove_provider(archive, name)
    with pytest.raises(NotFound):
        get_provider(archive, name)
    assert name not in [p.name for p in list_providers(archive)]
    assert name in [p.name for p in list_providers(archive, include_deleted=True)]
    with pytest.raises(NotFound):
        remove_provider(archive, name)
    with pytest.raises(BadInput):
        remove_provider(archive, "default")


def test_stored_patients_belong_to_the_default_provider(archive):
    buf = io.BytesIO()
    make_image(patient_id=f"P-{uuid.uuid4().hex[:8]}", study_uid=generate_uid()).save_as(
        buf, enforce_file_format=True)
    assert archive.store(buf.getvalue()).status == "stored"
    with archive.sessions() as s:
        assert set(s.scalars(select(Patient.provider_id))) == {DEFAULT_PROVIDER_ID}
