"""How the report tests read a report: its HTML as a parser sees it (``parse``) and as a real headless
Chromium draws it (``render_in_chromium``).

Chromium: the browser checks skip when ``chromium`` is not installed, unless ``CI`` is set, where
its absence fails them (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

from html.parser import HTMLParser
import os
from pathlib import Path
import re
import shutil
import subprocess

import pytest

from tuner import report as tuner_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: The report's sections, in page order.
SECTION_IDS = [sid for sid, _ in tuner_report.SECTIONS]


class Page(HTMLParser):
    """Collects what the tests look at: ids, scripts, external references, images."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.external: list[str] = []
        self.images: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        a = dict(attributes)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "script":
            self.scripts.append(a)
        if tag == "img":
            self.images.append(str(a.get("src")))
        for key in ("src", "href"):
            value = a.get(key) or ""
            if re.match(r"(https?:)?//", value):
                self.external.append(value)


def parse(text: str) -> Page:
    """The report's HTML as :class:`Page` collects it."""
    page = Page()
    page.feed(text)
    page.close()
    return page


_HOOK = """<script>(function(){var log=function(kind,args){console.log("[report-test " + kind + "] " +
Array.prototype.map.call(args,String).join(" "));};
console.error=function(){log("console.error",arguments);};console.warn=function(){log("console.warn",arguments);};
window.addEventListener("error",function(ev){
log("error",[ev.message||("resource "+(ev.target&&(ev.target.src||ev.target.href)))]);},true);
window.addEventListener("unhandledrejection",function(ev){log("unhandledrejection",[ev.reason]);});})();</script>"""


def chromium() -> str:
    """The browser's path; skips the test without one (fails it under ``CI``)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must install it: apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return CHROMIUM


def render_in_chromium(report: Path, tmp_path: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """Load a copy of ``report`` in headless Chromium with the network off; (DOM after load,
    console errors/warnings and failed loads). The copy gets a first script that reports
    console.error, console.warn, uncaught errors and failed resource loads."""
    browser = chromium()
    page = tmp_path / "under-test.html"
    page.write_text(report.read_text().replace("<head>", "<head>" + _HOOK, 1))
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=20000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    result = subprocess.run(
        [*common, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    problems = [line for line in result.stderr.splitlines() if "[report-test " in line]
    if screenshot is not None:
        shot = subprocess.run(
            [*common, "--window-size=1200,5000", f"--screenshot={screenshot}", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    return result.stdout, problems
