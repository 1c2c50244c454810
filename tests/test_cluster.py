"""Two real ``pacs serve`` nodes on one PostgreSQL index and one SeaweedFS bucket (issue 16 part 4).

Both nodes run with exactly ``conf/cluster-node.toml`` (the README's "Running several nodes"
example); their environment gives what differs per node (node name, data directory, ports) and the
addresses of the test services (the database, the bucket under a prefix of this test's own, a
shared master key file). What one node does, the other sees: a store, a delete, a shred, a key
rotation, failed letter codes; and a node killed with SIGKILL in the middle of a push loses nothing
it acknowledged and leaves no orphan object once it has started again.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
import sqlalchemy as sa
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomweb.multipart import decode_bytes
from tests.conftest import (
    ROOT,
    Server,
    free_port,
    postgres_database,
    require,
    start_server,
    wait_for_port,
)
from tests.dicomgen import dataset_bytes, make_image, make_study, write
from tests.test_letters import parse_letter

pytestmark = pytest.mark.postgres

CONFIG = ROOT / "conf" / "cluster-node.toml"
MAX_FAILURES = 3  # letters lock after 3 wrong codes, before any delay: 100 tries run fast
WRONG = "0000-0000-0000-0000-0000"
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Cluster:
    a: Server
    b: Server
    base: Path
    shared: dict[str, str]  # the PACS_* every node gets (database, bucket, key file)
    prefix: str  # this cluster's objects in the test bucket
    move_port: int

    def node_env(self, name: str) -> dict[str, str]:
        return {"PACS_CONFIG": str(CONFIG), "PACS_NODE_NAME": name, **self.shared,
                "PACS_DESTINATIONS": f"MOVESCP=127.0.0.1:{self.move_port}",
                "PACS_LETTER_MAX_FAILURES": str(MAX_FAILURES)}

    def start(self, name: str) -> Server:
        # its own session: a SIGKILL of the node's process group takes every process of it
        (self.base / name).mkdir(parents=True, exist_ok=True)
        return start_server(self.base / name, new_session=True, **self.node_env(name))

    def bucket_keys(self) -> set[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=os.environ["PACS_TEST_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id=os.environ["PACS_TEST_S3_ACCESS_KEY_ID"],
                          aws_secret_access_key=os.environ["PACS_TEST_S3_SECRET_ACCESS_KEY"])
        keys: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=os.environ["PACS_TEST_S3_BUCKET"], Prefix=self.prefix + "/"):
            keys |= {o["Key"].rsplit("/", 1)[1] for o in page.get("Contents", [])}
        return keys

    def index_keys(self) -> set[str]:
        engine = sa.create_engine(self.shared["PACS_DATABASE_URL"])
        try:
            with engine.connect() as c:
                return set(c.exec_driver_sql("SELECT blob_key FROM instances").scalars())
        finally:
            engine.dispose()

    def stop(self) -> None:
        for node in (self.a, self.b):
            node.stop()


def make_cluster(base: Path) -> Cluster:
    if not os.environ.get("PACS_TEST_S3_ENDPOINT"):
        pytest.skip("SeaweedFS not started (scripts/test starts it)")
    name = "k_" + uuid.uuid4().hex[:12]
    shared = {"PACS_DATABASE_URL": postgres_database(name),
              "PACS_BLOB_STORE": f"s3://{os.environ['PACS_TEST_S3_BUCKET']}/{name}",
              "PACS_S3_ENDPOINT": os.environ["PACS_TEST_S3_ENDPOINT"],
              "PACS_S3_ACCESS_KEY_ID": os.environ["PACS_TEST_S3_ACCESS_KEY_ID"],
              "PACS_S3_SECRET_ACCESS_KEY": os.environ["PACS_TEST_S3_SECRET_ACCESS_KEY"],
              "PACS_MASTER_KEY_FILE": str(base / "shared" / "master.key")}
    cluster = Cluster(None, None, base, shared, name, free_port())  # type: ignore[arg-type]
    cluster.a = cluster.start("node-a")  # first: creates the master key and the schema
    cluster.b = cluster.start("node-b")
    return cluster


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Cluster:
    cluster = make_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


def big_study(folder: Path, patient_id: str, n: int = 3) -> list[Path]:
    """CT images of 128 KiB (over inline_blob_limit): each one an object in the bucket."""
    return make_study(folder, n_series=1, per_series=n, patient_id=patient_id, rows=256, columns=256)


def storescu(node: Server, files: list[Path]) -> None:
    require("storescu")
    r = subprocess.run(["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port),
                        *map(str, files)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def wado(node: Server, url: str) -> dict[str, bytes]:
    """SOP Instance UID -> the data set bytes of each instance a WADO-RS answer holds, as stored."""
    r = requests.get(f"{node.dicomweb_url}{url}", headers={"Accept": DICOM_ACCEPT}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    out = {}
    for part in decode_bytes(r.content, r.headers["Content-Type"]):
        raw = part.read()
        out[str(pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)] = dataset_bytes(raw)
    return out


def sent(files: list[Path]) -> dict[str, bytes]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p.read_bytes())
            for p in files}


def qido(node: Server, level: str = "studies", **params: str) -> list[dict]:
    r = requests.get(f"{node.dicomweb_url}/{level}", params=params, timeout=30)
    assert r.status_code in (200, 204), r.text[:300]
    return r.json() if r.status_code == 200 else []


def letter_status(node: Server, selector: str, code: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    token = base64.b64encode(f"{selector}:{code}".encode()).decode()
    try:
        conn.request("GET", f"/letters/{selector}/dicom-web/studies", headers={"Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# -- what one node stores, the other serves ---------------------------------------------------------

def test_store_on_a_find_and_retrieve_on_b(nodes: Cluster, tmp_path: Path) -> None:
    files = big_study(tmp_path / "in", "CL-STORE")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(nodes.a, files)
    assert len(nodes.bucket_keys() & nodes.index_keys()) >= len(files)  # the objects are in the bucket

    # QIDO-RS on B
    [found] = qido(nodes.b, PatientID="CL-STORE")
    assert found["0020000D"]["Value"] == [study]
    # WADO-RS on B: every instance, byte-identical to what was sent to A
    assert wado(nodes.b, f"/studies/{study}") == sent(files)

    # C-GET from B (pynetdicom SCU in the Storage SCP role)
    got: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        got[str(event.dataset.SOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", nodes.b.dicom_port, ae_title=nodes.b.ae_title,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    q = pydicom.Dataset()
    q.QueryRetrieveLevel, q.PatientID, q.StudyInstanceUID = "STUDY", "CL-STORE", study
    statuses = [s.Status for s, _ in assoc.send_c_get(q, PatientRootQueryRetrieveInformationModelGet) if s]
    assoc.release()
    assert statuses[-1] == 0x0000, statuses
    assert got == sent(files)

    # C-MOVE from B to a storage SCP of ours
    moved: dict[str, bytes] = {}

    def on_moved(event: evt.Event) -> int:
        moved[str(event.dataset.SOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    scp = AE(ae_title="MOVESCP")
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    listener = scp.start_server(("127.0.0.1", nodes.move_port), block=False,
                                evt_handlers=[(evt.EVT_C_STORE, on_moved)])
    try:
        wait_for_port(nodes.move_port)
        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", nodes.b.dicom_port, ae_title=nodes.b.ae_title)
        q = pydicom.Dataset()
        q.QueryRetrieveLevel, q.StudyInstanceUID = "STUDY", study
        statuses = [s.Status for s, _ in assoc.send_c_move(q, "MOVESCP",
                                                           StudyRootQueryRetrieveInformationModelMove) if s]
        assoc.release()
    finally:
        listener.shutdown()
    assert statuses[-1] == 0x0000, statuses
    assert moved == sent(files)


def test_delete_on_b_is_gone_on_a(nodes: Cluster, tmp_path: Path) -> None:
    files = big_study(tmp_path / "in", "CL-DEL", n=2)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(nodes.a, files)
    assert wado(nodes.a, f"/studies/{study}") == sent(files)  # A has read it (and keeps what it can)
    keys = nodes.index_keys()
    r = requests.delete(f"{nodes.b.dicomweb_url}/studies/{study}", timeout=30)
    assert r.status_code == 204, r.text
    assert qido(nodes.a, PatientID="CL-DEL") == []
    r = requests.get(f"{nodes.a.dicomweb_url}/studies/{study}", headers={"Accept": DICOM_ACCEPT}, timeout=30)
    assert r.status_code == 404
    gone = keys - nodes.index_keys()
    assert len(gone) == 2 and not gone & nodes.bucket_keys()  # the objects left the bucket too


def test_shred_on_a_refuses_the_letter_on_b(nodes: Cluster, tmp_path: Path) -> None:
    files = big_study(tmp_path / "in", "CL-SHRED", n=1)
    storescu(nodes.b, files)
    letter = parse_letter(nodes.b.pacs("letter", "issue", "--patient-id", "CL-SHRED").stdout)
    sel, code = letter["selector"], letter["access code"]
    assert letter_status(nodes.b, sel, code) == 200  # B has used the patient's key: it holds it
    nodes.a.pacs("patient", "shred", "--patient-id", "CL-SHRED", "--yes")
    assert letter_status(nodes.b, sel, code) == 410
    assert letter_status(nodes.a, sel, code) == 410
    assert qido(nodes.b, PatientID="CL-SHRED") == []


def test_rotation_on_a_b_reads_old_and_new_and_wraps_under_the_new(nodes: Cluster, tmp_path: Path) -> None:
    old = big_study(tmp_path / "old", "CL-ROT-OLD", n=1)
    storescu(nodes.a, old)
    old_study = str(pydicom.dcmread(old[0], stop_before_pixels=True).StudyInstanceUID)
    assert wado(nodes.b, f"/studies/{old_study}") == sent(old)
    out = nodes.a.pacs("keys", "rotate").stdout
    assert "version" in out

    def newest_key_version() -> int:
        engine = sa.create_engine(nodes.shared["PACS_DATABASE_URL"])
        try:
            with engine.connect() as c:
                return c.exec_driver_sql("SELECT kek_version FROM patient_keys "
                                         "ORDER BY created_at DESC LIMIT 1").scalar()
        finally:
            engine.dispose()

    # B follows the rotation by itself (the keyring epoch): a new patient stored on B soon gets
    # its key wrapped under the new version, so the old one can then be retired
    deadline, n, followed = time.monotonic() + 30, 0, False
    while not followed and time.monotonic() < deadline:
        n += 1
        new = big_study(tmp_path / f"new{n}", f"CL-ROT-NEW{n}", n=1)
        storescu(nodes.b, new)  # a new patient: B mints and wraps its key
        followed = newest_key_version() == 2
    assert followed, "node B kept wrapping new keys under the retired-to-be version"
    if n > 1:  # keys B wrapped before it followed: rewrapped by a second rotation
        nodes.a.pacs("keys", "rotate")
    new_study = str(pydicom.dcmread(new[0], stop_before_pixels=True).StudyInstanceUID)
    for node in (nodes.a, nodes.b):  # both read old and new, before and after retiring version 1
        assert wado(node, f"/studies/{old_study}") == sent(old)
        assert wado(node, f"/studies/{new_study}") == sent(new)
    nodes.a.pacs("keys", "retire", "--version", "1")
    late = big_study(tmp_path / "late", "CL-ROT-LATE", n=1)
    storescu(nodes.a, late)  # A's keys are not in B's cache: B unwraps them under the new ring
    late_study = str(pydicom.dcmread(late[0], stop_before_pixels=True).StudyInstanceUID)
    for node in (nodes.b, nodes.a):
        assert wado(node, f"/studies/{old_study}") == sent(old)
        assert wado(node, f"/studies/{late_study}") == sent(late)


def test_hundred_wrong_codes_over_both_nodes_lock_the_letter(nodes: Cluster, tmp_path: Path) -> None:
    storescu(nodes.a, big_study(tmp_path / "in", "CL-BF", n=1))
    letter = parse_letter(nodes.a.pacs("letter", "issue", "--patient-id", "CL-BF").stdout)
    sel, code = letter["selector"], letter["access code"]
    with ThreadPoolExecutor(8) as pool:  # alternately node A and node B, concurrently
        statuses = Counter(pool.map(lambda i: letter_status((nodes.a, nodes.b)[i % 2], sel, WRONG),
                                    range(100)))
    assert statuses[200] == 0
    assert statuses[401] == MAX_FAILURES, statuses  # counted once across both nodes
    assert statuses[401] + statuses[403] + statuses[429] == 100, statuses
    assert letter_status(nodes.a, sel, code) == 403
    assert letter_status(nodes.b, sel, code) == 403


# -- a node killed in the middle of a push ----------------------------------------------------------

def test_kill_a_during_a_push_loses_nothing_acknowledged_and_leaves_no_orphan(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    try:
        folder = tmp_path / "push"
        files = [write(make_image(patient_id=f"CL-KILL-{i % 4}", rows=256, columns=256, sop_uid=generate_uid(),
                                  instance_number=i, pixel_seed=i), folder) for i in range(400)]
        acknowledged: list[Path] = []
        lock = threading.Lock()

        def push(share: list[Path]) -> None:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", cluster.a.dicom_port, ae_title=cluster.a.ae_title)
            if not assoc.is_established:
                return
            try:
                for path in share:
                    status = assoc.send_c_store(pydicom.dcmread(path))
                    if not status or not assoc.is_established:
                        return
                    if status.Status == 0x0000:
                        with lock:
                            acknowledged.append(path)
            finally:
                if assoc.is_established:
                    assoc.abort()

        threads = [threading.Thread(target=push, args=(files[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 40 and time.monotonic() < deadline:  # in full swing
            time.sleep(0.05)
        assert len(acknowledged) >= 40, "the push did not get going"
        os.killpg(cluster.a.proc.pid, signal.SIGKILL)
        cluster.a.proc.wait()
        for t in threads:
            t.join(timeout=120)
        assert len(acknowledged) < len(files), "the push ended before the kill: nothing was interrupted"

        # every acknowledged instance, byte-identical through B
        for path in acknowledged:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            got = wado(cluster.b, f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                                  f"/instances/{ds.SOPInstanceUID}")
            assert got == sent([path])
        orphans_before = len(cluster.bucket_keys() - cluster.index_keys())

        cluster.a = cluster.start("node-a")  # starts again: sweeps what it left unindexed
        assert cluster.bucket_keys() == cluster.index_keys(), orphans_before
        print(f"figures: {len(acknowledged)} acknowledged of {len(files)}; "
              f"{orphans_before} orphan object(s) before the restart, 0 after")
    finally:
        cluster.stop()
