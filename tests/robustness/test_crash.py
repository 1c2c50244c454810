"""Crash consistency (issue 20 part 1): ``kill -9`` of DIMSE and HTTP workers while objects arrive.

Four dcmtk ``storescu`` clients (one association at a time each, started again after a kill) and two
STOW-RS clients push small objects into a real ``pacs serve`` with two DIMSE workers and two
gunicorn workers. A killer sends SIGKILL to one DIMSE worker, one HTTP worker, or every worker of
both kinds at once, at random moments; the supervisors (pacs/workers.py, gunicorn) start new ones.

Afterwards, with the server stopped: every object that was answered Success reads back
byte-identical; every object whose answer was lost is absent or complete; once the orphans of the
killed stores are swept, ``pacs check --grace 0`` (index against blobs, counts, every GCM tag, every
wrapped key) finds nothing. On SQLite and on PostgreSQL with blobs in files, and on SQLite with
every blob in the S3 store (SeaweedFS): there the bucket holds exactly the indexed objects after
the sweep, and no multipart upload is left open.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from dicomweb.multipart import Part, encode
from storage.archive import Archive
from storage.config import load_settings
from storage.errors import NotFound
from storage.index.models import Instance
from tests.conftest import _postgres_url, require, start_server
from tests.dicomgen import dataset_bytes, make_image, write

DIMSE_CLIENTS, FILES_PER_CLIENT = 4, 500
STOW_CLIENTS, STOW_REQUESTS, PER_REQUEST = 2, 30, 10
#: Clients pace themselves (an association of ASSOCIATION_FILES files, then a pause, as modalities
#: send), so the push lasts ~40 s: long enough for several rounds of kills, DIMSE workers having to
#: live 5.5 s between them.
ASSOCIATION_FILES, PAUSE = 10, 0.4
#: Kills of each kind (one DIMSE worker, one HTTP worker, all workers); then the push finishes.
KILL_ROUNDS = 3
SUCCESS = "Received Store Response (Success)"


@pytest.fixture(params=["sqlite", "postgres", "s3"])
def database_env(request) -> Iterator[dict[str, str]]:  # noqa: ANN001
    """Where the archive keeps its index and blobs: SQLite and files, PostgreSQL and files, or
    SQLite and the S3 store (the SeaweedFS scripts/test starts, a prefix of this test's own;
    no object kept inline in the index, so every one goes to S3)."""
    if request.param == "sqlite":
        yield {}
    elif request.param == "postgres":
        yield from ({"PACS_DATABASE_URL": url} for url in _postgres_url())
    else:
        if not os.environ.get("PACS_TEST_S3_ENDPOINT"):
            pytest.skip("SeaweedFS not started (scripts/test starts it, PACS_TEST_S3_ENDPOINT)")
        yield {"PACS_BLOB_STORE": f"s3://{os.environ['PACS_TEST_S3_BUCKET']}/crash-{os.urandom(4).hex()}",
               "PACS_S3_ENDPOINT": os.environ["PACS_TEST_S3_ENDPOINT"],
               "PACS_S3_ACCESS_KEY_ID": os.environ["PACS_TEST_S3_ACCESS_KEY_ID"],
               "PACS_S3_SECRET_ACCESS_KEY": os.environ["PACS_TEST_S3_SECRET_ACCESS_KEY"],
               "PACS_INLINE_BLOB_LIMIT": "0"}


def bucket_listing(env: dict[str, str]) -> tuple[set[str], int]:
    """(blob keys, open multipart uploads) under the S3 store's prefix, as the store itself
    lists them (boto3, not our code)."""
    import boto3

    bucket, prefix = env["PACS_BLOB_STORE"].removeprefix("s3://").split("/", 1)
    client = boto3.client("s3", endpoint_url=env["PACS_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id=env["PACS_S3_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["PACS_S3_SECRET_ACCESS_KEY"])
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys |= {o["Key"].removeprefix(prefix + "/") for o in page.get("Contents", [])}
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
    return keys, len(uploads)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def workers(serve_pid: int) -> tuple[list[int], list[int]]:
    """(DIMSE worker pids, gunicorn worker pids) under a ``pacs serve`` (pacs/serve.py)."""
    dimse, http = [], []
    for child in _children(serve_pid):
        cmd = _cmdline(child)
        if "gunicorn" in cmd:
            http += _children(child)
        elif cmd.endswith("pacs serve "):
            dimse.append(child)
    return dimse, http


def age(pid: int) -> float:
    """Seconds since the process started (/proc/PID/stat field 22, in clock ticks since boot)."""
    try:
        start = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0.0
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start / os.sysconf("SC_CLK_TCK")


class Progress:
    """Answers received per front door since the start (clients count, the killer reads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers = {"dimse": 0, "http": 0}

    def add(self, door: str) -> None:
        with self.lock:
            self.answers[door] += 1


class Killer(threading.Thread):
    """SIGKILLs workers at random moments, KILL_ROUNDS of each kind, each time only once the front door it hits
    has answered again since its last kill (a worker still starting is not what we test). A DIMSE
    worker only once it has lived 5.5 s: the supervisor backs off from workers that die young
    (pacs/workers.py, MIN_UPTIME); gunicorn replaces its workers at once."""

    def __init__(self, serve_pid: int, seed: int, progress: Progress):
        super().__init__(daemon=True)
        self.serve_pid, self.rng, self.progress = serve_pid, random.Random(seed), progress
        self.stop = threading.Event()
        self.kills: dict[str, int] = {"one DIMSE worker": 0, "one HTTP worker": 0, "all workers": 0}
        self.last = {"dimse": -1, "http": -1}  # answers seen at the last kill of that door

    def _answered(self, door: str) -> bool:
        return self.progress.answers[door] > self.last[door]

    def run(self) -> None:
        kinds = list(self.kills)
        i = 0
        while not self.stop.wait(self.rng.uniform(0.2, 0.8)) and i < 3 * KILL_ROUNDS:
            dimse, http = workers(self.serve_pid)
            old_dimse = [p for p in dimse if age(p) > 5.5] if self._answered("dimse") else []
            old_http = [p for p in http if age(p) > 1.0] if self._answered("http") else []
            kind = kinds[i % 3]
            if kind == "all workers":
                targets = dimse + http if len(old_dimse) == len(dimse) == 2 and old_http else []
            else:
                pool = old_dimse if kind == "one DIMSE worker" else old_http
                targets = [self.rng.choice(pool)] if pool else []
            if not targets:
                continue
            i += 1
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.kills[kind] += 1
            for door, hit in (("dimse", kind != "one HTTP worker"), ("http", kind != "one DIMSE worker")):
                if hit:
                    self.last[door] = self.progress.answers[door]


def dimse_client(port: int, files: list[Path], outcome: dict[str, str], done: threading.Event,
                 progress: Progress) -> None:
    """storescu over the files not yet sent; after a broken association, again over the rest."""
    tool = require("storescu")
    left = list(files)
    deadline = time.monotonic() + 300
    while left and time.monotonic() < deadline:
        p = subprocess.run([tool, "-v", "-aec", "PACS", "-to", "20", "-ta", "20", "-td", "20",
                            "127.0.0.1", str(port), *map(str, left[:ASSOCIATION_FILES])],
                           capture_output=True, text=True, env=dict(os.environ, TCP_NODELAY="1"))
        sending = None
        for line in (p.stdout + p.stderr).splitlines():
            m = re.search(r"Sending file: (\S+)", line)
            if m:
                sending = Path(m.group(1)).stem
                outcome[sending] = "unknown"
            elif "Received Store Response" in line and sending:
                outcome[sending] = "success" if SUCCESS in line else "failure"
                progress.add("dimse")
                sending = None
        left = [f for f in left if f.stem not in outcome]
        time.sleep(PAUSE)
    done.set()


def stow_client(url: str, batches: list[list[tuple[str, bytes]]], outcome: dict[str, str],
                progress: Progress) -> None:
    for batch in batches:
        time.sleep(PAUSE)
        ct, chunks = encode([Part.make(b, "application/dicom") for _, b in batch],
                            media_type="application/dicom")
        for uid, _ in batch:
            outcome[uid] = "unknown"
        try:
            r = requests.post(url, data=b"".join(chunks), timeout=60,
                              headers={"Content-Type": ct, "Accept": "application/dicom+json"})
        except requests.RequestException:
            continue  # the worker died under us: these stay unknown
        if r.status_code not in (200, 202, 409):
            continue
        progress.add("http")
        body = r.json()
        for item in body.get("00081199", {}).get("Value", []):
            outcome[item["00081155"]["Value"][0]] = "success"
        for item in body.get("00081198", {}).get("Value", []):
            outcome[item["00081155"]["Value"][0]] = "failure"


def _p10(ds) -> bytes:  # noqa: ANN001
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.timeout(600)  # ~1 min each on a quiet machine; several times that under load
def test_kill_workers_while_storing(tmp_path: Path, database_env: dict[str, str], figures) -> None:  # noqa: ANN001
    tag = os.urandom(4).hex()
    originals: dict[str, bytes] = {}
    dimse_files: list[list[Path]] = []
    for c in range(DIMSE_CLIENTS):
        folder = tmp_path / f"dimse{c}"
        files = []
        for i in range(FILES_PER_CLIENT):
            study = f"2.25.{int(tag, 16)}{c}{i // 50}"
            ds = make_image(patient_id=f"CR-{tag}-{c}-{i // 100}", patient_name=f"Crash^{tag}",
                            study_uid=study, series_uid=study + ".1", rows=8, columns=8,
                            instance_number=i, pixel_seed=i)
            path = write(ds, folder)
            files.append(path)
            originals[ds.SOPInstanceUID] = path.read_bytes()
        dimse_files.append(files)
    stow_batches: list[list[list[tuple[str, bytes]]]] = []
    for c in range(STOW_CLIENTS):
        batches = []
        for r in range(STOW_REQUESTS):
            study = f"2.25.{int(tag, 16)}9{c}{r // 5}"
            batch = []
            for i in range(PER_REQUEST):
                ds = make_image(patient_id=f"CR-{tag}-S{c}", patient_name=f"Crash^{tag}",
                                study_uid=study, series_uid=f"{study}.{r}", rows=8, columns=8,
                                instance_number=i, pixel_seed=r * 100 + i)
                data = _p10(ds)
                originals[ds.SOPInstanceUID] = data
                batch.append((ds.SOPInstanceUID, data))
            batches.append(batch)
        stow_batches.append(batches)

    srv = start_server(tmp_path, PACS_DIMSE_WORKERS="2", PACS_HTTP_WORKERS="2", **database_env)
    try:
        outcome: dict[str, str] = {}
        progress = Progress()
        killer = Killer(srv.proc.pid, seed=int(tag, 16), progress=progress)
        killer.start()
        dones = [threading.Event() for _ in range(DIMSE_CLIENTS)]
        clients = [threading.Thread(target=dimse_client, args=(srv.dicom_port, f, outcome, d, progress))
                   for f, d in zip(dimse_files, dones, strict=True)]
        clients += [threading.Thread(target=stow_client, args=(srv.dicomweb_url + "/studies", b, outcome, progress))
                    for b in stow_batches]
        started = time.monotonic()
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=400)
        pushed_in = time.monotonic() - started
        killer.stop.set()
        killer.join()
        assert all(d.is_set() for d in dones)
        assert srv.proc.poll() is None, "pacs serve itself must survive its workers' deaths"
    finally:
        srv.stop()

    crashes = sum(killer.kills.values())
    assert killer.kills["one DIMSE worker"] and killer.kills["one HTTP worker"] and killer.kills["all workers"]
    counts = {k: sum(1 for v in outcome.values() if v == k) for k in ("success", "failure", "unknown")}
    assert counts["success"] > len(originals) // 2, counts
    assert counts["failure"] == 0, counts  # a kill loses answers; it is never a refusal

    archive = Archive(load_settings(env=srv.env))
    try:
        complete_unknown = 0
        for uid, state in outcome.items():
            try:
                info = archive.instances(sop_uid=uid)[0]
            except NotFound:
                assert state != "success", f"{uid} was answered Success but is not stored"
                continue
            stored = archive.read_bytes(info)
            assert dataset_bytes(stored) == dataset_bytes(originals[uid]), uid
            complete_unknown += state == "unknown"
        swept = archive.sweep_orphans(grace_seconds=0)  # the server is stopped: nothing in flight
        with archive.sessions() as session:
            indexed = set(session.scalars(select(Instance.blob_key)).all())
    finally:
        archive.close()
    if "PACS_BLOB_STORE" in database_env:  # in the bucket: exactly the indexed objects, no upload open
        in_bucket, uploads_open = bucket_listing(database_env)
        assert (in_bucket - indexed, indexed - in_bucket, uploads_open) == (set(), set(), 0)
        assert len(in_bucket) == len(indexed) >= counts["success"]
    check = srv.pacs("check", "--grace", "0", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "archive is consistent" in check.stdout
    assert tag not in check.stdout + check.stderr
    figures(objects_pushed=len(outcome), success=counts["success"], answer_lost=counts["unknown"],
            lost_but_complete=complete_unknown, crashes_injected=crashes,
            kills=json.dumps(killer.kills), orphans_swept=swept, push_seconds=round(pushed_in),
            database=database_env.get("PACS_DATABASE_URL", "sqlite").split(":")[0],
            blobs="s3" if "PACS_BLOB_STORE" in database_env else "files")
