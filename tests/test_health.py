"""``/healthz`` and ``/readyz`` of a real ``pacs serve``, as a load balancer asks them."""

from __future__ import annotations

import os
import time

import pytest
import requests
import sqlalchemy as sa

from tests.conftest import _postgres_url, start_server


def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_readyz_names_a_missing_blob_directory(tmp_path) -> None:
    srv = start_server(tmp_path)
    try:
        r = requests.get(f"{srv.http_url}/readyz", timeout=10)
        assert r.status_code == 200
        assert r.json() == {"index": "ok", "blobs": "ok"}
        blobs = srv.data_dir / "blobs"
        os.rename(blobs, srv.data_dir / "blobs.away")
        r = requests.get(f"{srv.http_url}/readyz", timeout=10)
        assert r.status_code == 503
        assert r.json() == {"index": "ok", "blobs": "missing directory"}
        assert requests.get(f"{srv.http_url}/healthz", timeout=10).status_code == 200  # still alive
        os.rename(srv.data_dir / "blobs.away", blobs)
        assert requests.get(f"{srv.http_url}/readyz", timeout=10).status_code == 200
    finally:
        srv.stop()


@pytest.mark.postgres
def test_readyz_follows_the_database(tmp_path) -> None:
    urls = _postgres_url()
    url = next(urls)
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(os.environ["PACS_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    srv = start_server(tmp_path, PACS_DATABASE_URL=url)
    try:
        assert requests.get(f"{srv.http_url}/readyz", timeout=10).status_code == 200
        with admin.connect() as c:
            c.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            c.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              f"WHERE datname = '{name}'")

        def refused() -> bool:
            r = requests.get(f"{srv.http_url}/readyz", timeout=10)
            return r.status_code == 503 and r.json()["index"].startswith("unreachable")

        _until(refused)
        body = requests.get(f"{srv.http_url}/readyz", timeout=10).text
        assert "postgres" not in body.lower()  # the kind of failure only: no URL, no server text
        with admin.connect() as c:
            c.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        _until(lambda: requests.get(f"{srv.http_url}/readyz", timeout=10).status_code == 200)
    finally:
        srv.stop()
        admin.dispose()
        for _ in urls:  # drops the database
            pass
