"""Brute force as an attacker would (issue 20 part 4): wrong codes for one letter from many source
addresses (``X-Forwarded-For`` through a trusted proxy, ``trust_proxy_headers``), concurrently, so
both gunicorn workers answer; the attacker honours ``Retry-After`` to get more codes compared.

Seen: the growing 429 + Retry-After delays before the lock (with ``letter_max_failures`` 6: three
free tries, then waits of 1, 2 and 4 s); the lock (403, the right code too, from anywhere); the
global alarm in the audit trail; the victim's record reachable again only through a reissued letter.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests

from storage.letters import ALARM_PER_MINUTE, LETTER_FREE_FAILURES, Letters
from tests.conftest import start_server
from tests.dicomgen import make_image
from tests.test_letters import parse_letter

MAX_FAILURES = 6
WRONG = "0000-0000-0000-0000-0000"


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _gunicorn_workers(serve_pid: int) -> list[int]:
    def children(pid: int) -> list[int]:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    for child in children(serve_pid):
        if "gunicorn" in Path(f"/proc/{child}/cmdline").read_text():
            return children(child)
    return []


def test_distributed_brute_force(tmp_path: Path, figures) -> None:  # noqa: ANN001
    tag = os.urandom(3).hex()
    srv = start_server(tmp_path, PACS_TRUST_PROXY_HEADERS="true",
                       PACS_LETTER_MAX_FAILURES=str(MAX_FAILURES))
    try:
        archive = srv.archive()
        try:
            ds = make_image(patient_id=f"BFA-{tag}", patient_name=f"Victim^{tag}", rows=8, columns=8)
            import io

            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            ref = archive.store(buf.getvalue()).patient_ref
            letter = Letters(archive).issue(ref, expires_at=datetime(2100, 1, 1))
        finally:
            archive.close()
        url = f"{srv.http_url}/letters/{letter.selector}/dicom-web/studies"
        workers = _gunicorn_workers(srv.proc.pid)
        assert len(workers) == 2
        before = {pid: _cpu_ticks(pid) for pid in workers}

        lock = threading.Lock()
        seen: list[tuple[float, int, int | None]] = []  # (time, status, Retry-After)
        addresses = iter(range(1, 1 << 20))
        not_before = [0.0]  # the attacker waits as told (Retry-After), then tries again

        def attempt(_: int) -> int:
            with lock:
                n = next(addresses)
                wait = not_before[0] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            source = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"  # a new address each time
            basic = base64.b64encode(f"{letter.selector}:{WRONG}".encode()).decode()
            r = requests.get(url, timeout=30, headers={"Authorization": f"Basic {basic}",
                                                       "X-Forwarded-For": source})
            retry = int(r.headers["Retry-After"]) if "Retry-After" in r.headers else None
            with lock:
                seen.append((time.monotonic(), r.status_code, retry))
                if retry:
                    not_before[0] = max(not_before[0], time.monotonic() + retry)
            return r.status_code

        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(8) as pool:  # 8 connections at once: both workers answer
            while time.monotonic() < deadline and not any(s == 403 for _, s, _ in seen):
                list(pool.map(attempt, range(40)))
        after = {pid: _cpu_ticks(pid) for pid in workers}

        statuses = Counter(s for _, s, _ in seen)
        first_lock = next(i for i, (_, s, _) in enumerate(seen) if s == 403)
        delays = sorted({r for _, s, r in seen[:first_lock] if s == 429 and r})
        assert statuses[200] == 0
        assert statuses[401] == MAX_FAILURES, statuses  # exactly the bound were compared
        assert delays and delays[0] >= 1, "429 + Retry-After before the lock"
        assert len(delays) >= MAX_FAILURES - LETTER_FREE_FAILURES - 1, delays  # they grew
        assert all(after[p] > before[p] for p in workers), "both gunicorn workers answered"

        # the lock holds for the right code, from the victim's own address and any other
        good = base64.b64encode(f"{letter.selector}:{letter.access_code}".encode()).decode()
        for source in ("203.0.113.5", "10.0.0.1"):
            r = requests.get(url, timeout=30, headers={"Authorization": f"Basic {good}",
                                                       "X-Forwarded-For": source})
            assert r.status_code == 403 and f"Victim^{tag}".encode() not in r.content
        # meanwhile the same attacker sprays guessed selectors (the letter space) from new addresses
        def guess(i: int) -> int:
            selector = os.urandom(16).hex()
            basic = base64.b64encode(f"{selector}:{WRONG}".encode()).decode()
            r = requests.get(f"{srv.http_url}/letters/{selector}/dicom-web/studies",
                             timeout=30, headers={"Authorization": f"Basic {basic}",
                                                  "X-Forwarded-For": f"172.16.{i >> 8}.{i & 255}"})
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            sprayed = Counter(pool.map(guess, range(ALARM_PER_MINUTE)))
        assert set(sprayed) <= {401, 404}, sprayed
        alarm = srv.pacs("audit", "--action", "alarm").stdout
        assert "refused letter attempts" in alarm
        # only a reissue opens the record again; the locked letter then answers "no longer valid"
        new = parse_letter(srv.pacs("letter", "reissue", letter.selector).stdout)
        assert new["selector"] != letter.selector
        fresh = base64.b64encode(f"{new['selector']}:{new['access code']}".encode()).decode()
        r = requests.get(f"{srv.http_url}/letters/{new['selector']}/dicom-web/studies", timeout=30,
                         headers={"Authorization": f"Basic {fresh}", "X-Forwarded-For": "203.0.113.5"})
        assert r.status_code == 200 and f"BFA-{tag}".encode() in r.content
        r = requests.get(url, timeout=30, headers={"Authorization": f"Basic {good}",
                                                   "X-Forwarded-For": "203.0.113.5"})
        assert r.status_code == 410
    finally:
        srv.stop()
    figures(wrong_codes_sent=sum(statuses.values()), source_addresses=len(seen),
            statuses=dict(statuses), retry_after_seen_before_lock=delays,
            selectors_guessed=sum(sprayed.values()), alarm="raised",
            http_workers_cpu_ticks={str(i): after[p] - before[p] for i, p in enumerate(workers)})
