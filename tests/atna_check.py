"""A structural check of DICOM audit messages against the PS3.15 A.5.1 schema (its elements, their
order, required attributes and value sets), with xml.etree. The schema itself (RELAX NG compact) is
not shipped in a package we can install, so its rules that our messages touch are written out here."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from datetime import datetime

_ORDER = re.compile(r"E(A)+(S)+(P)*")
_TAGS = {"EventIdentification": "E", "ActiveParticipant": "A", "AuditSourceIdentification": "S",
         "ParticipantObjectIdentification": "P"}


def _coded(el: ET.Element) -> None:
    for attr in ("csd-code", "codeSystemName", "originalText"):
        assert el.get(attr), f"{el.tag} lacks {attr}"


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def check(xml: str) -> ET.Element:
    """Parse ``xml`` and assert it is an AuditMessage as PS3.15 A.5.1 defines it; returns the root."""
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    order = "".join(_TAGS.get(c.tag, "?") for c in root)
    assert _ORDER.fullmatch(order), f"children out of the schema's order: {order}"

    ei = root.find("EventIdentification")
    assert ei is not None
    assert ei.get("EventActionCode") in ("C", "R", "U", "D", "E")
    assert ei.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    datetime.fromisoformat(ei.get("EventDateTime", "").replace("Z", "+00:00"))
    kids = [c.tag for c in ei]
    assert kids[0] == "EventID", kids
    assert re.fullmatch(r"EventID(,EventTypeCode)*(,EventOutcomeDescription)?", ",".join(kids)), kids
    for c in ei:
        if c.tag != "EventOutcomeDescription":
            _coded(c)

    for ap in root.findall("ActiveParticipant"):
        assert ap.get("UserID")
        assert ap.get("UserIsRequestor") in ("true", "false")
        if ap.get("NetworkAccessPointID") is not None:
            assert ap.get("NetworkAccessPointTypeCode") in ("1", "2", "3", "4", "5")
        for role in ap:
            assert role.tag == "RoleIDCode"
            _coded(role)

    for asi in root.findall("AuditSourceIdentification"):
        assert asi.get("AuditSourceID")
        for c in asi:
            assert c.tag == "AuditSourceTypeCode"
            _coded(c)

    for po in root.findall("ParticipantObjectIdentification"):
        assert po.get("ParticipantObjectID")
        assert po.get("ParticipantObjectTypeCode") in ("1", "2", "3", "4")
        assert 1 <= int(po.get("ParticipantObjectTypeCodeRole", "0")) <= 24
        kids = [c.tag for c in po]
        assert re.fullmatch(r"ParticipantObjectIDTypeCode(,ParticipantObjectName|,ParticipantObjectQuery)?"
                            r"(,ParticipantObjectDetail)*(,ParticipantObjectDescription)*(,SOPClass)*",
                            ",".join(kids)), kids
        _coded(po[0])
        for c in po:
            if c.tag == "ParticipantObjectQuery":
                _b64(c.text or "")
            elif c.tag == "ParticipantObjectDetail":
                assert c.get("type")
                _b64(c.get("value", ""))
            elif c.tag == "SOPClass":
                assert int(c.get("NumberOfInstances", "")) >= 1
                assert all(i.tag == "Instance" and i.get("UID") for i in c)
    return root


def event_id(root: ET.Element) -> str:
    return root.find("EventIdentification/EventID").get("csd-code")  # type: ignore[union-attr]


def event_type(root: ET.Element) -> str | None:
    el = root.find("EventIdentification/EventTypeCode")
    return None if el is None else el.get("csd-code")


def object_ids(root: ET.Element) -> list[str]:
    return [po.get("ParticipantObjectID", "") for po in root.findall("ParticipantObjectIdentification")]
