"""The OHIF viewer served at /viewer (dicomweb.viewer) against a stand-in QIDO endpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from flask import Flask, Response, request

from dicomweb.viewer import viewer_blueprint
from tests.browser import (
    RequestLog,
    browser_unavailable,
    chromium,
    live_server,
    open_ohif_study,
)

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = Path("/tmp/pacs-test-viewer-studylist.png")


def _npm_reachable() -> bool:
    try:
        done = subprocess.run(["npm", "ping"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def dist_dir() -> Path:
    """The OHIF dist installed by scripts/install-ohif (idempotent, cached)."""
    try:
        done = subprocess.run(
            [str(REPO / "scripts/install-ohif")], capture_output=True, text=True, timeout=600
        )
    except FileNotFoundError:
        pytest.skip("bash not available to run scripts/install-ohif")
    if done.returncode != 0:
        if not _npm_reachable():
            pytest.skip("npm registry unreachable: cannot install @ohif/app")
        pytest.fail(f"scripts/install-ohif failed:\n{done.stderr}")
    path = Path(done.stdout.strip().splitlines()[-1])
    assert (path / "index.html").is_file()
    return path


def make_app(dist: Path, **kwargs: object) -> tuple[Flask, list[str]]:
    """The viewer blueprint plus a stand-in DICOMweb answering QIDO /studies with []."""
    app = Flask(__name__)
    app.register_blueprint(viewer_blueprint(dist, "/dicom-web", **kwargs))  # type: ignore[arg-type]
    qido: list[str] = []

    @app.get("/dicom-web/studies")
    def studies() -> Response:
        qido.append(request.query_string.decode())
        uid = request.args.get("StudyInstanceUID") or request.args.get("0020000D")
        pid = request.args.get("PatientID") or request.args.get("00100020")
        body = json.dumps([_study_json()]) if uid == STUDY or pid == PATIENT_ID else "[]"
        return Response(body, mimetype="application/dicom+json")

    return app, qido


@pytest.fixture(scope="module")
def client(dist_dir: Path):  # flask test client
    return make_app(dist_dir)[0].test_client()


def test_missing_dist_answers_503(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path / "absent")
    for url in ("/viewer/", "/viewer/app-config.js", "/viewer/viewer?StudyInstanceUIDs=1.2"):
        resp = app.test_client().get(url)
        assert resp.status_code == 503
        assert resp.mimetype == "text/plain"
        assert "scripts/install-ohif" in resp.get_data(as_text=True)


def test_index_rewritten_for_prefix(client) -> None:
    resp = client.get("/viewer/")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert 'window.PUBLIC_URL="/viewer/"' in html
    assert not re.search(r'(?:href|src)="/(?!viewer/)', html), "root-relative URL left"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert resp.headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_client_routes_serve_index(client) -> None:
    assert client.get("/viewer").status_code == 308
    index = client.get("/viewer/").data
    for url in ("/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/segmentation", "/viewer/a/b"):
        assert client.get(url).data == index
    assert client.get("/viewer/no-such-chunk.js").status_code == 404
    assert client.get("/viewer/sw.js").status_code == 404


def test_assets_mime_cache_and_public_path(client, dist_dir: Path) -> None:
    bundle = next(dist_dir.glob("app.bundle.*.js")).name
    resp = client.get(f"/viewer/{bundle}")
    assert resp.mimetype == "text/javascript"
    assert "immutable" in resp.headers["Cache-Control"]
    body = resp.data
    assert b'__webpack_require__.p = "/viewer/";' in body
    assert b'__webpack_require__.p = "/";' not in body
    assert b"'/dicom-microscopy-viewer/" not in body
    again = client.get(f"/viewer/{bundle}", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status_code == 304
    # Worker bundles have their own runtime: every publicPath must be rewritten.
    for path in dist_dir.glob("*.js"):
        if b'__webpack_require__.p = "/";' in path.read_bytes():
            assert b'__webpack_require__.p = "/viewer/";' in client.get(f"/viewer/{path.name}").data
    wasm = next(dist_dir.glob("*.wasm")).name
    resp = client.get(f"/viewer/{wasm}")
    assert resp.mimetype == "application/wasm" and "immutable" in resp.headers["Cache-Control"]
    css = client.get("/viewer/app.bundle.css")
    assert css.mimetype == "text/css" and b"url(/viewer/" in css.data
    assert css.headers["Cache-Control"] == "no-cache"
    assert client.get("/viewer/manifest.json").mimetype == "application/json"


def _config(resp) -> dict:
    text = resp.get_data(as_text=True)
    assert text.startswith("window.config = ")
    return json.loads(text[len("window.config = ") :].rstrip().rstrip(";"))


def test_app_config_points_at_request_root(dist_dir: Path) -> None:
    app, _ = make_app(dist_dir)
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example"}
    resp = app.test_client().get(
        "/viewer/app-config.js", base_url="http://host:8042", headers=headers
    )
    assert resp.mimetype == "text/javascript" and resp.headers["Cache-Control"] == "no-store"
    config = _config(resp)
    assert config["routerBasename"] == "/viewer/"
    (source,) = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    conf = source["configuration"]
    for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert conf[key] == "http://host:8042/dicom-web"  # forwarded headers not trusted
    assert conf["qidoSupportsIncludeField"] and conf["supportsFuzzyMatching"]
    assert conf["imageRendering"] == conf["thumbnailRendering"] == "wadors"
    assert conf["bulkDataURI"] == {"enabled": True}
    assert "http" not in resp.get_data(as_text=True).replace("http://host:8042", "")


def test_app_config_overrides(dist_dir: Path) -> None:
    app, _ = make_app(dist_dir, config_overrides={"investigationalUseDialog": {"option": "never"}})
    config = _config(app.test_client().get("/viewer/app-config.js"))
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["dataSources"][0]["configuration"]["qidoRoot"] == "http://localhost/dicom-web"


def test_no_path_traversal(dist_dir: Path) -> None:
    app, _ = make_app(dist_dir)
    client = app.test_client()
    for path in ("/viewer/%2e%2e/%2e%2e/etc/passwd", "/viewer/..%2f..%2fetc%2fpasswd"):
        assert b"root:" not in client.get(path).data
    assert client.get("/viewer/assets/%2e%2e/%2e%2e/x.js").status_code == 404


def test_app_config_trusts_forwarded_when_told(dist_dir: Path) -> None:
    app, _ = make_app(dist_dir, trust_forwarded=True)
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "pacs.example, proxy.internal",
        "X-Forwarded-Prefix": "/pacs/",
    }
    client = app.test_client()
    config = _config(client.get("/viewer/app-config.js", base_url="http://h:1", headers=headers))
    assert config["dataSources"][0]["configuration"]["qidoRoot"] == (
        "https://pacs.example/pacs/dicom-web"
    )
    assert config["routerBasename"] == "/pacs/viewer/"
    html = client.get("/viewer/", headers=headers).get_data(as_text=True)
    assert 'window.PUBLIC_URL="/pacs/viewer/"' in html
    # Values that could break out of HTML/JS are ignored.
    evil = {"X-Forwarded-Host": 'x"></script>', "X-Forwarded-Prefix": '/"><script>'}
    config = _config(client.get("/viewer/app-config.js", base_url="http://h:1", headers=evil))
    assert config["dataSources"][0]["configuration"]["qidoRoot"] == "http://h:1/dicom-web"
    assert client.get("/viewer/", headers=evil).data == client.get("/viewer/").data


@pytest.mark.browser
@pytest.mark.slow
def test_ohif_study_list_renders(dist_dir: Path) -> None:
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    app, qido = make_app(dist_dir)
    with live_server(app) as base_url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        log = RequestLog(page, base_url)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base_url}/viewer/", wait_until="domcontentloaded")
        page.get_by_text("No studies available").first.wait_for(state="visible", timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SCREENSHOT))
        isolated = page.evaluate("window.crossOriginIsolated")
        has_sab = page.evaluate("typeof SharedArrayBuffer === 'function'")
    assert qido, "OHIF never queried /dicom-web/studies"
    assert any(u.startswith(f"{base_url}/dicom-web/studies") for u in log.urls)
    assert "limit=" in qido[0]
    assert log.external == [], f"requests left the machine: {log.external}"
    assert not [f for f in log.failed if "/viewer/" in f], log.failed
    assert isolated and has_sab, "page is not cross-origin isolated (COOP/COEP)"
    assert not errors, errors
    if os.environ.get("PACS_TEST_VERBOSE"):
        print("\n".join(log.urls))


# --- One synthetic study, just enough DICOMweb for OHIF to show it --------------------------

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = STUDY + ".1"
SOP = SERIES + ".1"
PATIENT_ID = "VIEWER-1"
ROWS = COLS = 128
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _el(vr: str, *values: object) -> dict:
    return {"vr": vr, "Value": list(values)}


def _frame(transfer_syntax: str) -> bytes:
    """A ring pattern: 16-bit little endian (0..1000), or 8-bit JPEG baseline."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:ROWS, 0:COLS]
    rings = (np.sin(np.hypot(x - COLS / 2, y - ROWS / 2) / 4) + 1) / 2
    if transfer_syntax == JPEG_BASELINE:
        out = io.BytesIO()
        Image.fromarray((rings * 255).astype("u1"), "L").save(out, "JPEG", quality=90)
        return out.getvalue()
    return (rings * 1000).astype("<u2").tobytes()


def _study_json() -> dict:
    return {
        "0020000D": _el("UI", STUDY),
        "00100010": _el("PN", {"Alphabetic": "Test^Viewer"}),
        "00100020": _el("LO", PATIENT_ID),
        "00080020": _el("DA", "20260101"),
        "00080030": _el("TM", "120000"),
        "00080050": _el("SH", "ACC1"),
        "00081030": _el("LO", "Synthetic rings"),
        "00080061": _el("CS", "OT"),
        "00201206": _el("IS", 1),
        "00201208": _el("IS", 1),
    }


def _series_json() -> dict:
    return {
        "0020000D": _el("UI", STUDY),
        "0020000E": _el("UI", SERIES),
        "00080060": _el("CS", "OT"),
        "00200011": _el("IS", 1),
        "0008103E": _el("LO", "Rings"),
        "00201209": _el("IS", 1),
    }


def _instance_json(transfer_syntax: str) -> dict:
    bits = 8 if transfer_syntax == JPEG_BASELINE else 16
    window = (128, 256) if bits == 8 else (500, 1000)
    return {
        **_series_json(),
        "00020010": _el("UI", transfer_syntax),
        "00080016": _el("UI", "1.2.840.10008.5.1.4.1.1.7"),
        "00080018": _el("UI", SOP),
        "00100010": _el("PN", {"Alphabetic": "Test^Viewer"}),
        "00100020": _el("LO", PATIENT_ID),
        "00200013": _el("IS", 1),
        "00200032": _el("DS", 0, 0, 0),
        "00200037": _el("DS", 1, 0, 0, 0, 1, 0),
        "00280002": _el("US", 1),
        "00280004": _el("CS", "MONOCHROME2"),
        "00280010": _el("US", ROWS),
        "00280011": _el("US", COLS),
        "00280030": _el("DS", 1, 1),
        "00280100": _el("US", bits),
        "00280101": _el("US", bits),
        "00280102": _el("US", bits - 1),
        "00280103": _el("US", 0),
        "00281050": _el("DS", window[0]),
        "00281051": _el("DS", window[1]),
        "00281052": _el("DS", 0),
        "00281053": _el("DS", 1),
    }


def add_fake_study(app: Flask, transfer_syntax: str = EXPLICIT_LE) -> None:
    """Serve STUDY on /dicom-web: series QIDO, series metadata, frame 1 (multipart)."""
    dicom_json = "application/dicom+json"

    @app.get("/dicom-web/studies/<study>/series")
    def series(study: str) -> Response:
        body = [_series_json()] if study == STUDY else []
        return Response(json.dumps(body), mimetype=dicom_json)

    @app.get("/dicom-web/studies/<study>/series/<ser>/metadata")
    def metadata(study: str, ser: str) -> Response:
        if (study, ser) != (STUDY, SERIES):
            return Response("[]", 404, mimetype=dicom_json)
        return Response(json.dumps([_instance_json(transfer_syntax)]), mimetype=dicom_json)

    @app.get("/dicom-web/studies/<study>/series/<ser>/instances/<sop>/frames/<frames>")
    def frames(study: str, ser: str, sop: str, frames: str) -> Response:
        boundary = "pacs-test-boundary"
        head = (
            f"--{boundary}\r\nContent-Type: application/octet-stream; "
            f"transfer-syntax={transfer_syntax}\r\n\r\n"
        ).encode()
        body = head + _frame(transfer_syntax) + f"\r\n--{boundary}--\r\n".encode()
        ctype = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
        return Response(body, content_type=ctype)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("transfer_syntax", [EXPLICIT_LE, JPEG_BASELINE])
def test_ohif_shows_a_study(dist_dir: Path, transfer_syntax: str) -> None:
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    app, _ = make_app(dist_dir)
    add_fake_study(app, transfer_syntax)
    with live_server(app) as base_url:
        view = open_ohif_study(base_url, STUDY, timeout_s=60)
    Path(f"/tmp/pacs-test-viewer-study-{transfer_syntax}.png").write_bytes(view.screenshot)
    assert view.nonblack > 0.2  # the rings fill the viewport
    assert view.external_requests == []
    assert any("/frames/1" in u for u in view.requests)
    if transfer_syntax == JPEG_BASELINE:
        # The decoder's wasm comes from under /viewer/ (rewritten worker publicPath).
        assert any(
            u.startswith(f"{base_url}/viewer/") and u.endswith(".wasm") for u in view.requests
        )
