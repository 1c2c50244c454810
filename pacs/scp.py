"""The DICOM Application Entity: which services we offer and which handler serves each.

Handlers are bound to the archive at registration (pynetdicom's ``(event, handler, [args])``), never
through globals. The handlers themselves live in store.py, find.py, retrieve.py and commit.py.
"""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes its SOP classes at import time
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from storage import metrics
from storage.archive import Archive
from storage.artifact_classes import VIDEO_CLASSES, VL_PHOTO_CLASSES
from storage.config import Settings
from storage.transfer_syntaxes import is_video

from . import dimse, tenancy, tls
from .commit import handle_action
from .dimse.fastpath import FastStoreBinding
from .find import handle_find
from .retrieve import handle_get, handle_move
from .store import handle_store, store_as_tenant

#: pynetdicom accepts, per presentation context, the first of *our* syntaxes that the peer proposes
#: (PS3.8 9.3.2.2 leaves the choice to the acceptor). Default: Explicit VR LE first, so a peer that
#: offers several syntaxes in one context never has to lossy-compress for us, and VRs are kept.
STORAGE_SYNTAXES = [ExplicitVRLittleEndian, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian)]

_VIDEO_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if is_video(ts)]


def storage_syntaxes(sop_class: str) -> list[str]:
    """Our preference for one storage SOP class.

    Video objects exist only as MPEG/HEVC bitstreams (nothing decodes them back), so those come
    first; visible-light photographs arrive from cameras as JPEG, so JPEG Baseline comes first and a
    C-GET hands the provider's original bitstream back unchanged. Everything else: the default.
    """
    if sop_class in VIDEO_CLASSES:
        return [*_VIDEO_SYNTAXES, *(ts for ts in STORAGE_SYNTAXES if ts not in _VIDEO_SYNTAXES)]
    if sop_class in VL_PHOTO_CLASSES:
        return [JPEGBaseline8Bit, *(ts for ts in STORAGE_SYNTAXES if ts != JPEGBaseline8Bit)]
    return STORAGE_SYNTAXES


QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet,
)


def make_ae(settings: Settings) -> AE:
    """An AE offering Verification, Storage (every storage SOP class, every transfer syntax), Q/R and
    Storage Commitment (Push Model)."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.connection_timeout = settings.connect_timeout  # a C-MOVE destination that is switched off
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.network_timeout
    if settings.dimse_fast_store and dimse.active():
        # The fast path parses PDV items straight out of each PDU, so fewer, larger PDUs cost it less
        # (ct-1 with dcmtk, no fsync: 454 vs 240 CT slices/s, 0.95 vs 1.95 ms CPU each). pynetdicom's
        # own path keeps its 16 KiB default: its DUL copies each PDU several times (4.0 vs 4.9 ms).
        ae.maximum_pdu_size = settings.dimse_max_pdu
    if settings.allowed_calling_aets:  # a provider's AE titles (pacs/tenancy.py) are allowed too
        ae.require_calling_aet = allowed_aets(settings)
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom's list names each one
        # scp_role/scu_role: accept storage from peers, and send on C-GET associations (role selection)
        ae.add_supported_context(cx.abstract_syntax, storage_syntaxes(cx.abstract_syntax),
                                 scu_role=False, scp_role=True)
    for model in QR_MODELS:
        ae.add_supported_context(model)
    ae.add_supported_context(StorageCommitmentPushModel)
    return ae


def handle_rejected(event: evt.Event, archive: Archive, settings: Settings) -> None:
    """EVT_REJECTED (we refused an association): one ``login`` failure in the audit trail, as a
    refused DICOMweb token is (PS3.15 A.5.3.11 Security Alert: a node not allowed to connect)."""
    requestor = event.assoc.requestor
    calling = (requestor.ae_title or "").strip()
    if settings.allowed_calling_aets and calling not in allowed_aets(settings):
        why = "calling AE title not allowed"
    else:
        why = "too many associations, or nothing we support proposed"
    archive.audit.record("login", actor=calling[:16], source=f"{requestor.address}:{requestor.port}",
                         outcome="failure", detail=f"DICOM association rejected: {why}")
    metrics.association("rejected")


def allowed_aets(settings: Settings) -> list[str]:
    """``allowed_calling_aets`` and the AE titles configured for providers (or cross-tenant)."""
    return list(dict.fromkeys([*settings.allowed_calling_aets, *settings.provider_aets,
                               *settings.cross_tenant_aets]))


def handlers(archive: Archive, settings: Settings) -> list[evt.EventHandlerType]:
    """Every event handler, bound to the archive (and the settings) as pynetdicom binds them.

    Each association's provider is decided at EVT_REQUESTED (pacs/tenancy.py); the service
    handlers get it from the bound :class:`~pacs.tenancy.Tenants`."""
    t = tenancy.tenants(archive, settings)
    return [
        *t.handlers(),
        (evt.EVT_REJECTED, handle_rejected, [archive, settings]),
        (evt.EVT_ACCEPTED, lambda event: metrics.association("accepted")),
        (evt.EVT_RELEASED, lambda event: metrics.association_ended()),
        (evt.EVT_ABORTED, lambda event: metrics.association_ended()),
        (evt.EVT_C_ECHO, lambda event: 0x0000),
        (evt.EVT_C_STORE, handle_store, [archive, t]),
        (evt.EVT_C_FIND, handle_find, [archive, settings, t]),
        (evt.EVT_C_MOVE, tls.move_over_tls(handle_move), [archive, settings, t]),  # tls = true: TLS
        (evt.EVT_C_GET, handle_get, [archive, settings, t]),
        (evt.EVT_N_ACTION, handle_action, [archive, settings, t]),
    ]


def fast_store(archive: Archive, settings: Settings) -> FastStoreBinding | None:
    """What the fast C-STORE path calls (pacs.dimse.server.make_server): the function the C-STORE
    handler calls too, bound to the same archive; None when ``dimse_fast_store`` is off."""
    return (store_as_tenant, [archive, tenancy.tenants(archive, settings)]) \
        if settings.dimse_fast_store else None
