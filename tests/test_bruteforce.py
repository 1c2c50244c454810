"""Brute force against a letter: counted in the index (shared by both gunicorn workers), growing
delays answered with 429 + Retry-After, a lock only a reissue lifts, a global alarm in the audit."""

from __future__ import annotations

import base64
import http.client
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests

from storage.letters import (
    CLIENT_FREE_FAILURES,
    LETTER_FREE_FAILURES,
    Letters,
    Locked,
    Throttled,
    UnknownLetter,
    WrongCode,
)
from tests.conftest import start_server
from tests.dicomgen import make_image, write
from tests.test_letters import parse_letter

pytestmark = pytest.mark.cloud  # server tests on SQLite + files and on PostgreSQL + S3

MAX_FAILURES = 3
WRONG = "0000-0000-0000-0000-0000"


@pytest.fixture(scope="module")
def server(tmp_path_factory, server_backend):
    """A server whose letters lock after 3 wrong codes (before any delay), so 1,000 tries run fast."""
    srv = start_server(tmp_path_factory.mktemp("bf"), server_backend,
                       PACS_LETTER_MAX_FAILURES=str(MAX_FAILURES))
    yield srv
    srv.stop()


def _get(url: str, auth: tuple[str, str], source: str = "127.0.0.1") -> int:
    """One GET from a given loopback source address (http.client can bind the source)."""
    host, _, rest = url.removeprefix("http://").partition("/")
    name, _, port = host.partition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30, source_address=(source, 0))
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        conn.request("GET", "/" + rest, headers={"Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_thousand_wrong_codes(server, tmp_path: Path) -> None:
    write(make_image(patient_id="BF-1"), tmp_path / "in")
    server.pacs("import", "-q", str(tmp_path / "in"))
    letter = parse_letter(server.pacs("letter", "issue", "--patient-id", "BF-1").stdout)
    sel, code = letter["selector"], letter["access code"]
    url = f"{server.http_url}/letters/{sel}/dicom-web/studies"

    with ThreadPoolExecutor(8) as pool:  # concurrent: both gunicorn workers answer
        statuses = Counter(pool.map(lambda _: _get(url, (sel, WRONG)), range(1000)))
    assert statuses[200] == 0
    assert statuses[401] == MAX_FAILURES, statuses  # exactly the bound were compared, over 2 workers
    assert statuses[401] + statuses[403] + statuses[429] == 1000, statuses

    # the lock holds: the right code is refused too, also from another address
    assert _get(url, (sel, code)) == 403
    assert _get(url, (sel, code), source="127.0.0.3") == 403
    row = Letters(server.archive()).get(sel)
    assert row.state == "locked" and row.failures == MAX_FAILURES

    trail = server.pacs("audit", "--action", "alarm").stdout
    assert "refused letter attempts" in trail
    refused = server.pacs("audit", "--patient-id", "BF-1", "--action", "letter-access").stdout
    outcomes = Counter(line.split("\t")[2] for line in refused.splitlines()[1:])
    # every refusal of this letter, each with its reason (the right code twice after the lock)
    assert outcomes == Counter({"failure": statuses[401], "locked": statuses[403] + 2,
                                "throttled": statuses[429]}) - Counter(), (outcomes, statuses)

    # only a reissue opens the record again (a new selector and code); the old one stays refused
    new = parse_letter(server.pacs("letter", "reissue", sel).stdout)
    assert new["selector"] != sel
    new_url = f"{server.http_url}/letters/{new['selector']}/dicom-web/studies"
    assert _get(new_url, (new["selector"], new["access code"])) == 200
    assert _get(url, (sel, code)) == 410


def test_page_form_counts_the_same(server, tmp_path: Path) -> None:
    write(make_image(patient_id="BF-2"), tmp_path / "in")
    server.pacs("import", "-q", str(tmp_path / "in"))
    letter = parse_letter(server.pacs("letter", "issue", "--patient-id", "BF-2").stdout)
    page = f"{server.http_url}/letters/{letter['selector']}"
    codes = [requests.post(page, data={"code": WRONG}, allow_redirects=False, timeout=10).status_code
             for _ in range(MAX_FAILURES + 2)]
    assert codes == [401] * MAX_FAILURES + [403, 403]
    r = requests.post(page, data={"code": letter["access code"]}, allow_redirects=False, timeout=10)
    assert r.status_code == 403 and "__Host-pacs" not in r.headers.get("Set-Cookie", "")


# -- the delay schedule, with a clock we control (SQLite and PostgreSQL) ----------------------------

def test_growing_delays_then_lock(archive, tmp_path: Path) -> None:
    ref = archive.store(write(make_image(patient_id="BF-3"), tmp_path)).patient_ref
    letters = Letters(archive)
    issued = letters.issue(ref)
    t = datetime(2030, 1, 1, 12, 0, 0)
    waits = []
    for _ in range(archive.settings.letter_max_failures):
        while True:
            try:
                letters.authenticate(issued.selector, WRONG, "192.0.2.1", now=t)
            except Throttled as exc:
                waits.append(exc.retry_after)
                t += timedelta(seconds=exc.retry_after)
                continue
            except WrongCode:
                break
    assert waits == [2 ** i for i in range(archive.settings.letter_max_failures - LETTER_FREE_FAILURES)]
    with pytest.raises(Locked):
        letters.authenticate(issued.selector, issued.access_code, "192.0.2.1", now=t + timedelta(days=30))
    # a fresh letter from the same address works: failures against a letter are not the client's
    other = letters.issue(ref)
    grant = letters.authenticate(other.selector, other.access_code, "192.0.2.1", now=t)
    assert grant.patient_ref == ref and grant.scope().patient_ref == ref


def test_client_throttled_across_letters(archive, tmp_path: Path) -> None:
    ref = archive.store(write(make_image(patient_id="BF-4"), tmp_path)).patient_ref
    letters = Letters(archive)
    issued = letters.issue(ref)
    t = datetime(2030, 1, 1)
    for i in range(CLIENT_FREE_FAILURES):
        with pytest.raises(UnknownLetter):
            letters.authenticate(f"guess{i:027d}", WRONG, "198.51.100.7", now=t)
    with pytest.raises(Throttled) as exc:
        letters.authenticate(issued.selector, issued.access_code, "198.51.100.7", now=t)
    assert exc.value.retry_after == 1
    # another address is not affected; after the wait the right code works and resets the count
    assert letters.authenticate(issued.selector, issued.access_code, "198.51.100.8", now=t)
    assert letters.authenticate(issued.selector, issued.access_code, "198.51.100.7",
                                now=t + timedelta(seconds=1))
