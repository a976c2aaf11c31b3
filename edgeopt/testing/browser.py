"""Render a local HTML page in headless Chromium: its DOM after the scripts ran, and a screenshot.

Tests use it to check that a report opens offline and draws its table and
figures; Chromium comes from Debian's packages (``apt-get install -y chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    """The Chromium executable, or None when none is installed."""
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def _run(page: Path, fragment: str, *flags: str, timeout: float = 90) -> str:
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    with tempfile.TemporaryDirectory(prefix="edgeopt-chromium-") as profile:
        done = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={profile}", "--virtual-time-budget=5000", *flags, url],
                              capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM, serialized after its scripts ran (``fragment``: the URL's ``#...`` part)."""
    return _run(page, fragment, "--dump-dom")


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 2000) -> Path:
    """A PNG of the page's first ``width`` x ``height`` pixels."""
    _run(page, "", f"--screenshot={png.resolve()}", f"--window-size={width},{height}", "--hide-scrollbars")
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


PROBE = """<script>
const found=[];document.querySelectorAll('svg.scatter').forEach(svg=>{
const boxes=[...svg.querySelectorAll('text.label')].map(t=>t.getBBox());
const dots=[...svg.querySelectorAll('circle')].map(c=>c.getBBox());
const hit=(a,b)=>a.x<b.x+b.width&&b.x<a.x+a.width&&a.y<b.y+b.height&&b.y<a.y+a.height;
boxes.forEach((a,i)=>{boxes.forEach((b,j)=>{if(j>i&&hit(a,b))found.push('label/label')});
dots.forEach(d=>{if(hit(a,d))found.push('label/dot')})})});
document.body.setAttribute('data-labels',document.querySelectorAll('svg.scatter text.label').length);
document.body.setAttribute('data-overlaps',found.length);</script>"""
"""Measures, in the browser's own layout, how many scatter labels overlap another label or a point."""


@dataclass(frozen=True)
class Rendered:
    """A report page as Chromium drew it."""

    dom: str
    labels: int
    """Scatter labels drawn."""
    overlaps: int
    """Label/label and label/point overlaps, measured with the browser's text metrics."""
    screenshot: Path
    online: bool
    """The page loads something over the network (a CDN script, a remote image)."""


def render_report(page: Path, workdir: Path) -> Rendered:
    """Render ``page``: its DOM (with :data:`PROBE` appended to a copy) and a screenshot, into ``workdir``."""
    text = page.read_text(encoding="utf-8")
    probe = workdir / f"probe_{page.name}"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = dump_dom(probe)
    labels = re.search(r'data-labels="(\d+)"', dom)
    overlaps = re.search(r'data-overlaps="(\d+)"', dom)
    if labels is None or overlaps is None:
        raise RuntimeError(f"the probe did not run in {page}: a script error?")
    return Rendered(dom, int(labels.group(1)), int(overlaps.group(1)), screenshot(page, workdir / f"{page.stem}.png"),
                    bool(re.search(r"""(src|href)=["']?(https?:|//)""", text)))


def table_rows(dom: str, ident: str) -> list[list[str]]:
    """The cells' text of table ``ident``'s body rows, in the order the page shows them ([] without it)."""
    match = re.search(rf'<table class="sortable" id="{ident}">.*?<tbody>(.*?)</tbody>', dom, re.S)
    if match is None:
        return []
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", match.group(1), re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]
