"""DICOMweb under generated requests (issue 20 part 2): schemathesis reads our OpenAPI description
(``/dicom-web/openapi.json``, dicomweb/openapi.py) from a running ``pacs serve`` and sends a few
hundred requests made from it. Zero 5xx, no traceback in any body or in the server log, and nothing
stored from the refused STOW-RS bodies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from sqlalchemy import func, select

from storage.index.models import Instance
from tests.conftest import Server, start_server

EXAMPLES = 10  # per operation and method
SEEN: Counter[str] = Counter()


@schemathesis.check
def no_traceback(ctx, response, case) -> None:  # noqa: ANN001
    body = response.content or b""
    if b"Traceback" in body or b'File "/' in body:
        raise AssertionError("a traceback in the response body")


BOUNDARY = "pacs-fuzz"


@schemathesis.serializer("multipart/related")
def multipart_related(ctx, value) -> bytes:  # noqa: ANN001
    """The generated body as one part of a multipart/related request (the boundary is added to
    the Content-Type in the test), so the STOW-RS reader and the ingest path get it."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{BOUNDARY}--\r\n".encode())


@pytest.fixture(scope="module")
def api_server(tmp_path_factory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("openapi"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_schema(api_server: Server):  # noqa: ANN201
    r = requests.get(api_server.dicomweb_url + "/openapi.json", timeout=30)
    assert r.status_code == 200 and r.json()["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(r.json())
    schema.config.update(base_url=api_server.http_url)
    return schema


def test_generated_requests(api_schema, api_server: Server, figures) -> None:  # noqa: ANN001
    """Each operation of the description gets EXAMPLES requests (hypothesis, derandomized); then
    the server log holds no traceback and nothing any refused STOW-RS body carried was stored."""
    from hypothesis import given

    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # noqa: ANN001
            if (case.media_type or "").startswith("multipart/related"):
                case.headers = {**(case.headers or {}),
                                "Content-Type": f"{case.media_type}; boundary={BOUNDARY}"}
            response = case.call(timeout=30)
            SEEN[f"{response.status_code // 100}xx"] += 1
            case.validate_response(response, checks=[schemathesis.checks.not_a_server_error,
                                                     no_traceback])

        run()
    SEEN["operations"] = operations
    log = (api_server.data_dir.parent / "server.log").read_text(errors="replace")
    assert "Traceback" not in log
    archive = api_server.archive()
    try:
        with archive.engine.connect() as c:
            stored = c.execute(select(func.count()).select_from(Instance)).scalar_one()
    finally:
        archive.close()
    assert stored == 0  # every STOW-RS body schemathesis made was refused: nothing half-stored
    requests_made = sum(v for k, v in SEEN.items() if k.endswith("xx"))
    assert requests_made >= 100 and SEEN["5xx"] == 0, SEEN
    figures(requests_generated=requests_made, operations=SEEN["operations"],
            by_class={k: v for k, v in SEEN.items() if k.endswith("xx")}, stored_from_refused=stored)
