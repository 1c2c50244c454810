"""Headless Chromium (Debian's /usr/bin/chromium) through Playwright, for browser tests.

Never downloads a browser. Typical use::

    with live_server(app) as base_url, chromium() as browser:
        page = browser.new_page()
        page.goto(base_url + "/viewer/")

``open_ohif_study`` opens one study in OHIF and waits until its viewport shows pixels.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page
    from werkzeug.serving import BaseWSGIServer

CHROMIUM = os.environ.get("PACS_TEST_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_unavailable() -> str | None:
    """Why browser tests cannot run here, or None if they can (use with pytest.skip)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (python) is not installed"
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM}"
    return None


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium browser, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def live_server(app: object, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve a WSGI app with werkzeug's threaded server on a free port; yield its base URL."""
    from werkzeug.serving import make_server

    server: BaseWSGIServer = make_server(host, 0, app, threaded=True)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


class RequestLog:
    """Records every URL a page requests, and those leaving the test server's origin."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(base_url))
        self.urls: list[str] = []
        self.failed: list[str] = []
        page.on("request", lambda req: self.urls.append(req.url))
        page.on("requestfailed", lambda req: self.failed.append(f"{req.url} {req.failure}"))

    @property
    def external(self) -> list[str]:
        """Requests to any other host (data: and blob: URLs are local)."""
        local = (self.origin, "data:", "blob:")
        return [u for u in self.urls if not u.startswith(local)]

    def paths(self, prefix: str) -> list[str]:
        """Requested URLs on our origin whose path starts with ``prefix``."""
        return [u for u in self.urls if urlsplit(u).path.startswith(prefix)]


def nonblack_fraction(png: bytes, threshold: int = 16) -> float:
    """Fraction of pixels in a PNG whose brightest channel exceeds ``threshold``."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        gray = img.convert("RGB").point(lambda v: 255 if v > threshold else 0).convert("L")
        hist = gray.histogram()
    total = sum(hist)
    return 1.0 - hist[0] / total if total else 0.0


class StudyView(NamedTuple):
    """What ``open_ohif_study`` saw."""

    screenshot: bytes  # PNG of the whole page
    nonblack: float  # fraction of non-black pixels in the first viewport canvas
    external_requests: list[str]  # URLs requested from other hosts (should be empty)
    requests: list[str]  # every URL the page requested


def dismiss_ohif_popups(page: Page) -> None:
    """Close OHIF's first-visit tour and "investigational use" banner if they are showing."""
    for label in ("Skip all", "Confirm and hide"):
        button = page.get_by_text(label, exact=True)
        try:
            if button.count():
                button.first.click(timeout=2000)
        except Exception:  # a popup that went away on its own is fine
            pass


VIEWPORT_CANVAS = "canvas.cornerstone-canvas"


def open_ohif_study(
    base_url: str,
    study_uid: str,
    *,
    viewer_prefix: str = "/viewer",
    min_nonblack: float = 0.01,
    timeout_s: float = 90.0,
    browser: Browser | None = None,
    context: BrowserContext | None = None,
) -> StudyView:
    """Open ``<viewer_prefix>/viewer?StudyInstanceUIDs=<uid>`` and wait for an image.

    Waits for (1) OHIF's cornerstone viewport canvas (``canvas.cornerstone-canvas``) to be
    visible, then (2) polls a screenshot of that canvas, analysed with Pillow, until more
    than ``min_nonblack`` of its pixels are not black (an image was decoded and drawn,
    not just the black background), then (3) closes the first-visit popups and takes a
    full-page screenshot. The canvas is read back as a screenshot, not with getImageData,
    so it works whatever rendering path cornerstone picked (WebGL or CPU). Raises
    ``TimeoutError`` (message carries the last fraction and any failed requests) if that
    does not happen within ``timeout_s``. With ``context`` (e.g. one holding a session cookie)
    the page opens in it and the context is left open.
    """
    if browser is None and context is None:
        with chromium() as own:
            return open_ohif_study(
                base_url,
                study_uid,
                viewer_prefix=viewer_prefix,
                min_nonblack=min_nonblack,
                timeout_s=timeout_s,
                browser=own,
            )
    url = f"{base_url}{viewer_prefix}/viewer?StudyInstanceUIDs={quote(study_uid)}"
    owned = context is None
    if context is None:
        assert browser is not None
        context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = None
    try:
        page = context.new_page()
        log = RequestLog(page, base_url)
        deadline = time.monotonic() + timeout_s
        page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
        canvas = page.locator(VIEWPORT_CANVAS).first
        canvas.wait_for(state="visible", timeout=timeout_s * 1000)
        fraction = 0.0
        while time.monotonic() < deadline:
            fraction = nonblack_fraction(canvas.screenshot())
            if fraction > min_nonblack:
                dismiss_ohif_popups(page)
                page.wait_for_timeout(500)  # let the layout settle
                return StudyView(page.screenshot(full_page=True), fraction, log.external, log.urls)
            page.wait_for_timeout(500)
        raise TimeoutError(
            f"OHIF showed no image for {study_uid} within {timeout_s:.0f}s "
            f"(non-black fraction {fraction:.4f}); failed requests: {log.failed[:10]}"
        )
    finally:
        if owned:
            context.close()
        elif page is not None:
            page.close()
