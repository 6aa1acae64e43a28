"""Open a page of ours in a real headless Chromium (Debian's, driven by Playwright) and report
what a reader would see broken: images that did not load, links to files that do not exist,
embedded pages that did not render, script errors.

Tests that use it are skipped where no Chromium is installed (``./install test`` installs it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def open_page(path: Path, *, wait_for_frames: str | None = None) -> dict:
    """Load ``path`` (a local HTML file) and return what the page holds::

        {"title", "text", "images": [(src, loaded)], "links": [(href, exists)],
         "audio": [src], "frames": [(url, has_selector)], "errors": [message]}

    ``wait_for_frames`` is a CSS selector each embedded page must come to contain (e.g. the
    plotly graph of a map); its presence is reported per frame.
    """
    playwright = pytest.importorskip("playwright.sync_api")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium on this machine (./install test installs Debian's chromium)")
    root = path.resolve().parent
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
            )
            hrefs = page.evaluate("Array.from(document.links).map(a => a.getAttribute('href'))")
            audio = page.evaluate("Array.from(document.querySelectorAll('audio')).map(a => a.getAttribute('src'))")
            frames = []
            for frame in page.frames[1:]:
                ok = True
                if wait_for_frames:
                    try:
                        frame.wait_for_selector(wait_for_frames, timeout=30_000)
                    except Exception:
                        ok = False
                frames.append((frame.url, ok))
            links = []
            for href in hrefs:
                target = urlparse(href)
                if target.scheme in ("http", "https"):
                    links.append((href, False))  # a report must not depend on the network
                else:
                    links.append((href, (root / unquote(target.path)).exists()))
            return {
                "title": page.title(),
                "text": page.inner_text("body"),
                "images": images,
                "links": links,
                "audio": audio,
                "frames": frames,
                "errors": errors,
            }
        finally:
            browser.close()
