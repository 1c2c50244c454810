"""DICOM audit messages (PS3.15 A.5) built from the archive's audit events.

One ``audit_events`` row becomes one ``AuditMessage`` (the schema of PS3.15 A.5.1, in order:
EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*;
coded values as ``csd-code`` / ``codeSystemName`` / ``originalText``, codes from PS3.16 (DCM) and
RFC 3881). :data:`KINDS` maps each action the archive records to its message (PS3.15 A.5.3):

==============================  =========================================================
action                          message (EventID; EventActionCode; EventTypeCode)
==============================  =========================================================
store                           DICOM Instances Transferred (110104; C) - received
retrieve                        DICOM Instances Transferred (110104; R) - sent (C-MOVE,
                                C-GET, WADO-RS, WADO-URI, rendered)
retrieve-begin                  Begin Transferring DICOM Instances (110102; E)
read-metadata                   DICOM Instances Accessed (110103; R)
delete                          DICOM Instances Accessed (110103; D)
shred                           Patient Record (110110; D)
query                           Query (110112; E) - C-FIND and QIDO-RS
export                          Export (110106; R), Destination Media participant
login, letter-use, letter-add,  User Authentication (110114; E; 110122 Login)
share-use
start, stop                     Application Activity (110100; E; 110120 / 110121)
letter-access, share-access    Security Alert (110113; E; 110132 Use of Restricted
                                Function) - a refused letter or share
alarm, retention                Security Alert (110132 Use of Restricted Function)
token-*, letter-issue/-revoke,  Security Alert (110137 User Security Attributes Changed)
letter-mail, share-create/-rev.
provider-*                      Security Alert (110136 Security Roles Changed)
key-rotate, key-retire          Security Alert (110129 Security Configuration)
==============================  =========================================================

An action not in the table is sent as a Security Alert (110131 Software Configuration) naming the
action, so nothing recorded is dropped; a test checks every action the code records is listed.

Patients. PS3.15 A.5.3 has the patient as a participant object whose ParticipantObjectID is the
Patient ID (with its issuer, HL7 CX) and whose ParticipantObjectName may carry the Patient's Name.
Our rule is that nothing identifying a patient leaves the archive in clear, and the audit table
holds no such value to begin with, so the patient object's ParticipantObjectID is the archive's
own patient row reference (``patient_ref``, type code RFC 3881 "2", Patient Number, issuer
``<audit source id>-internal``): it ties every message about one patient together at the
repository, and maps back to the person only through the archive itself (``pacs audit
--patient``). There is no ParticipantObjectName. Studies are named by Study Instance UID (110180),
as the standard does. Query messages carry no query values (they are PHI): ParticipantObjectQuery
holds the level, the key names and the match count that the audit row keeps, in base64 as the
schema wants. Network addresses of the participants are sent as recorded (the repository's job is
to know who connected from where).
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

DCM = "DCM"
RFC3881 = "RFC-3881"
#: PS3.4 B.5: QIDO-RS is the Study Root C-FIND model over HTTP (PS3.18 10.6).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_UID = re.compile(r"\b1\.2\.840\.10008\.5\.1\.4\.1\.2\.[\d.]+\b")


class EventRow(Protocol):
    """What a message is built from: an ``audit_events`` row (storage.index.models.AuditEvent)."""

    id: int
    at: datetime
    actor: str
    action: str
    outcome: str
    patient_ref: int | None
    study_uid: str
    source: str
    detail: str


@dataclass(frozen=True)
class Code:
    code: str
    system: str
    text: str


@dataclass(frozen=True)
class Kind:
    """How one action is told: its event id and type, action code, and who played which role."""

    event: Code
    action_code: str  # C create, R read, U update, D delete, E execute
    type_code: Code | None = None
    requestor_role: Code | None = None  # the actor's RoleIDCode
    archive_role: Code | None = None  # this archive's RoleIDCode
    objects: str = "data"  # data: patient and study | query | alert | none
    lifecycle: str = ""  # ParticipantObjectDataLifeCycle of the data objects


# PS3.16 CID 400 (Audit Event ID)
APPLICATION_ACTIVITY = Code("110100", DCM, "Application Activity")
BEGIN_TRANSFERRING = Code("110102", DCM, "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = Code("110103", DCM, "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", DCM, "DICOM Instances Transferred")
EXPORT = Code("110106", DCM, "Export")
PATIENT_RECORD = Code("110110", DCM, "Patient Record")
QUERY = Code("110112", DCM, "Query")
SECURITY_ALERT = Code("110113", DCM, "Security Alert")
USER_AUTHENTICATION = Code("110114", DCM, "User Authentication")
# CID 401, 403 (event type codes)
APPLICATION_START = Code("110120", DCM, "Application Start")
APPLICATION_STOP = Code("110121", DCM, "Application Stop")
LOGIN = Code("110122", DCM, "Login")
SECURITY_CONFIGURATION = Code("110129", DCM, "Security Configuration")
SOFTWARE_CONFIGURATION = Code("110131", DCM, "Software Configuration")
RESTRICTED_FUNCTION = Code("110132", DCM, "Use of Restricted Function")
SECURITY_ROLES_CHANGED = Code("110136", DCM, "Security Roles Changed")
USER_SECURITY_ATTRIBUTES = Code("110137", DCM, "User Security Attributes Changed")
# CID 402 (active participant roles)
APPLICATION = Code("110150", DCM, "Application")
APPLICATION_LAUNCHER = Code("110151", DCM, "Application Launcher")
DESTINATION = Code("110152", DCM, "Destination Role ID")
SOURCE = Code("110153", DCM, "Source Role ID")
DESTINATION_MEDIA = Code("110154", DCM, "Destination Media")
# participant object id types
PATIENT_NUMBER = Code("2", RFC3881, "Patient Number")
URI = Code("12", RFC3881, "URI")
STUDY_UID = Code("110180", DCM, "Study Instance UID")
SOP_CLASS_UID = Code("110181", DCM, "SOP Class UID")
APPLICATION_SERVER = Code("4", DCM, "Application Server Process Tier in a Multi-tier System")

_ALERT_ATTRIBUTES = Kind(SECURITY_ALERT, "E", USER_SECURITY_ATTRIBUTES, objects="alert")
KINDS: dict[str, Kind] = {
    "store": Kind(INSTANCES_TRANSFERRED, "C", requestor_role=SOURCE, archive_role=DESTINATION),
    "retrieve": Kind(INSTANCES_TRANSFERRED, "R", requestor_role=DESTINATION, archive_role=SOURCE),
    "retrieve-begin": Kind(BEGIN_TRANSFERRING, "E", requestor_role=DESTINATION, archive_role=SOURCE),
    "read-metadata": Kind(INSTANCES_ACCESSED, "R"),
    "delete": Kind(INSTANCES_ACCESSED, "D", lifecycle="14"),  # 14: destruction / deletion
    "shred": Kind(PATIENT_RECORD, "D", lifecycle="14"),
    "query": Kind(QUERY, "E", objects="query"),
    "export": Kind(EXPORT, "R", archive_role=SOURCE),
    "login": Kind(USER_AUTHENTICATION, "E", LOGIN, objects="none"),
    "letter-use": Kind(USER_AUTHENTICATION, "E", LOGIN),
    "start": Kind(APPLICATION_ACTIVITY, "E", APPLICATION_START, APPLICATION_LAUNCHER, APPLICATION,
                  objects="none"),
    "stop": Kind(APPLICATION_ACTIVITY, "E", APPLICATION_STOP, APPLICATION_LAUNCHER, APPLICATION,
                 objects="none"),
    "letter-access": Kind(SECURITY_ALERT, "E", RESTRICTED_FUNCTION, objects="alert"),
    "alarm": Kind(SECURITY_ALERT, "E", RESTRICTED_FUNCTION, objects="alert"),
    "retention": Kind(SECURITY_ALERT, "E", RESTRICTED_FUNCTION, objects="alert"),
    "token-create": _ALERT_ATTRIBUTES,
    "token-revoke": _ALERT_ATTRIBUTES,
    "letter-issue": _ALERT_ATTRIBUTES,
    "letter-revoke": _ALERT_ATTRIBUTES,
    "letter-mail": _ALERT_ATTRIBUTES,
    "letter-add": Kind(USER_AUTHENTICATION, "E", LOGIN),  # a second letter opened on the patient page
    "share-create": _ALERT_ATTRIBUTES,
    "share-revoke": _ALERT_ATTRIBUTES,
    "share-use": Kind(USER_AUTHENTICATION, "E", LOGIN),
    "share-access": Kind(SECURITY_ALERT, "E", RESTRICTED_FUNCTION, objects="alert"),
    "provider-add": Kind(SECURITY_ALERT, "E", SECURITY_ROLES_CHANGED, objects="alert"),
    "provider-remove": Kind(SECURITY_ALERT, "E", SECURITY_ROLES_CHANGED, objects="alert"),
    "key-rotate": Kind(SECURITY_ALERT, "E", SECURITY_CONFIGURATION, objects="alert"),
    "key-retire": Kind(SECURITY_ALERT, "E", SECURITY_CONFIGURATION, objects="alert"),
}
UNKNOWN = Kind(SECURITY_ALERT, "E", SOFTWARE_CONFIGURATION, objects="alert")


@dataclass(frozen=True)
class AuditSource:
    """This archive as the messages name it: AuditSourceID, its AE title and host."""

    source_id: str
    ae_title: str
    hostname: str
    enterprise_site: str = ""


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                       "originalText": code.text})


def _address(source: str) -> tuple[str, str]:
    """(NetworkAccessPointID, its type code: 1 machine name, 2 IP address) of ``host:port``."""
    host = source.strip()
    if host.startswith("["):  # [v6]:port
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        head, _, port = host.rpartition(":")
        host = head if port.isdigit() else host
    if not host:
        return "", ""
    is_ip = bool(re.fullmatch(r"[\d.]+", host)) or ":" in host
    return host, "2" if is_ip else "1"


def _outcome(outcome: str) -> str:
    """EventOutcomeIndicator: 0 success, 4 minor failure (refused, cancelled, an alarm raised)."""
    return "0" if outcome in ("success", "") else "4"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    """Text XML 1.0 can hold (control characters other than tab and line ends removed)."""
    return _CONTROL.sub("", text or "")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _participant(root: ET.Element, user_id: str, requestor: bool, role: Code | None,
                 address: tuple[str, str] = ("", ""), alternative: str = "") -> None:
    attrs = {"UserID": user_id or "-", "UserIsRequestor": "true" if requestor else "false"}
    if alternative:
        attrs["AlternativeUserID"] = alternative
    if address[0]:
        attrs["NetworkAccessPointID"], attrs["NetworkAccessPointTypeCode"] = address
    ap = ET.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _coded(ap, "RoleIDCode", role)


def _object(root: ET.Element, object_id: str, type_code: str, role: str, id_type: Code,
            lifecycle: str = "") -> ET.Element:
    attrs = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code,
             "ParticipantObjectTypeCodeRole": role}
    if lifecycle:
        attrs["ParticipantObjectDataLifeCycle"] = lifecycle
    po = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _coded(po, "ParticipantObjectIDTypeCode", id_type)
    return po


_COUNT = re.compile(r"(\d+) instance\(s\)")


def _sop_class(study: ET.Element, row: EventRow, sop_class: str) -> None:
    """The study's SOPClass element (PS3.15 A.5.3.4: the classes and number of instances moved):
    for a stored instance its class and UID; for a retrieve the number of instances sent."""
    if row.action == "store" and sop_class:
        el = ET.SubElement(study, "SOPClass", {"UID": sop_class, "NumberOfInstances": "1"})
        ET.SubElement(el, "Instance", {"UID": _clean(row.detail)})
    elif row.action in ("retrieve", "retrieve-begin") and (m := _COUNT.search(row.detail)):
        ET.SubElement(study, "SOPClass", {"NumberOfInstances": m.group(1)})


def build(row: EventRow, source: AuditSource, sop_class: str = "") -> bytes:
    """The PS3.15 A.5 AuditMessage for one audit event, as UTF-8 XML on one line (``sop_class``: the
    SOP Class UID of a stored instance, from the index)."""
    kind = KINDS.get(row.action, UNKNOWN)
    detail, actor = _clean(row.detail), _clean(row.actor)
    root = ET.Element("AuditMessage")
    ei = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": kind.action_code,
        "EventDateTime": row.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "EventOutcomeIndicator": _outcome(row.outcome)})
    _coded(ei, "EventID", kind.event)
    if kind.type_code is not None:
        _coded(ei, "EventTypeCode", kind.type_code)
    description = detail if row.outcome in ("success", "") else f"{_clean(row.outcome)}: {detail}"
    if kind is UNKNOWN:
        description = f"{row.action}: {description}"
    if description.strip():
        ET.SubElement(ei, "EventOutcomeDescription").text = description[:1024]

    archive_address = (source.hostname, "1") if source.hostname else ("", "")
    requestor_address = _address(_clean(row.source))
    _participant(root, actor, True, kind.requestor_role, requestor_address)
    _participant(root, source.ae_title, False, kind.archive_role, archive_address,
                 alternative=source.source_id)
    if row.action == "export":
        _participant(root, "export", False, DESTINATION_MEDIA)

    asi_attrs = {"AuditSourceID": source.source_id}
    if source.enterprise_site:
        asi_attrs["AuditEnterpriseSiteID"] = source.enterprise_site
    _coded(ET.SubElement(root, "AuditSourceIdentification", asi_attrs), "AuditSourceTypeCode",
           APPLICATION_SERVER)

    if kind.objects == "query":
        match = _UID.search(detail)
        po = _object(root, match.group(0) if match else STUDY_ROOT_FIND, "2", "24", SOP_CLASS_UID)
        ET.SubElement(po, "ParticipantObjectQuery").text = _b64(detail or "-")
    elif kind.objects == "alert":
        po = _object(root, f"pacs:{_clean(row.action)}", "2", "13", URI)  # 13: security resource
        if detail:
            ET.SubElement(po, "ParticipantObjectDetail", {"type": "detail", "value": _b64(detail)})
    if kind.objects != "none" or row.patient_ref is not None:
        if row.study_uid:
            study = _object(root, _clean(row.study_uid), "2", "3", STUDY_UID, kind.lifecycle)  # 3: report
            _sop_class(study, row, sop_class)
        if row.patient_ref is not None:
            patient = _object(root, str(row.patient_ref), "1", "1", PATIENT_NUMBER,
                              kind.lifecycle if row.action == "shred" else "")
            ET.SubElement(patient, "ParticipantObjectDetail",
                          {"type": "IssuerOfPatientID", "value": _b64(f"{source.source_id}-internal")})
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return xml.replace(b"\n", b"&#10;").replace(b"\r", b"&#13;")
