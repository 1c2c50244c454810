"""The DICOM Application Entity: which services we offer and which handler serves each.

Handlers are bound to the archive at registration (pynetdicom's ``(event, handler, [args])``), never
through globals. The handlers themselves live in store.py, find.py and retrieve.py.
"""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from storage.archive import Archive
from storage.config import Settings

from .find import handle_find
from .retrieve import handle_get, handle_move
from .store import handle_store

#: Explicit VR LE first: pynetdicom picks the first of *our* syntaxes the peer proposes, so a peer
#: offering both (dcmtk's default) gets Explicit VR, which keeps the VRs (C-STORE and C-GET alike).
STORAGE_SYNTAXES = [ExplicitVRLittleEndian, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian)]

QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet,
)


def make_ae(settings: Settings) -> AE:
    """An AE offering Verification, Storage (every storage SOP class, every transfer syntax) and Q/R."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.network_timeout
    ae.maximum_pdu_size = 0  # unlimited: fewer, larger P-DATA PDUs
    if settings.allowed_calling_aets:
        ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        # scp_role/scu_role: accept storage from peers, and send on C-GET associations (role selection)
        ae.add_supported_context(cx.abstract_syntax, STORAGE_SYNTAXES, scu_role=False, scp_role=True)
    for model in QR_MODELS:
        ae.add_supported_context(model)
    return ae


def handlers(archive: Archive, settings: Settings) -> list:
    return [
        (evt.EVT_C_ECHO, lambda event: 0x0000),
        (evt.EVT_C_STORE, handle_store, [archive]),
        (evt.EVT_C_FIND, handle_find, [archive, settings]),
        (evt.EVT_C_MOVE, handle_move, [archive, settings]),
        (evt.EVT_C_GET, handle_get, [archive, settings]),
    ]
