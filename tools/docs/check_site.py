"""Check the built documentation site (``nox -s docs`` runs this after ``mkdocs build --strict``).

    python tools/docs/check_site.py [--site build/site] [--shots build/screenshots] [--no-browser]

1. Links: every ``href``/``src`` of every HTML page that points inside the site must name a
   file that exists, and a ``#fragment`` must name an ``id`` on the target page. A page that
   *loads* anything from another host (a script, a stylesheet, an image, a font) is an error
   too: the site works offline. Links *to* other sites are not followed (no network).
2. Browser: the site is served on 127.0.0.1 by Python's ``http.server``; headless Chromium
   opens the home page and one operator page, and takes a screenshot of each (kept in
   ``--shots``). Each screenshot must be a PNG of the window's size that is not a blank
   page, and the DOM Chromium rendered for the operator page must hold the ``map``
   operator's reference (its heading and its "emits:" contract line), which only gets there
   if the served page loaded and rendered.

Exits 1 with the list of problems, 0 when all is well.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
#: (page, text its rendered DOM must contain) for the screenshots
PAGES = [("index.html", "streaming-pipeline framework for"),
         ("reference/operators.html", "emits:")]
WINDOW = (1280, 1000)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
#: attributes that make the browser fetch a resource (as opposed to a link the reader follows)
_LOADS = {("script", "src"), ("img", "src"), ("link", "href"), ("source", "src"), ("iframe", "src")}
#: ``<link rel=...>`` values that only name another page (not fetched to show this one)
_LINK_ONLY_RELS = frozenset({"canonical", "alternate", "author", "license", "next", "prev", "search"})


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        #: (tag, attribute, url, whether the browser fetches it to show the page)
        self.urls: list[tuple[str, str, str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        rel = set((dict(attrs).get("rel") or "").split())
        for name, val in attrs:
            if val is None:
                continue
            if name in ("id", "name"):
                self.ids.add(val)
            elif name in ("href", "src"):
                loads = (tag, name) in _LOADS and not (tag == "link" and rel <= _LINK_ONLY_RELS)
                self.urls.append((tag, name, val, loads))


@functools.cache
def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def check_links(site: Path) -> tuple[list[str], int]:
    """Broken internal links and external loads, and the number of internal links checked."""
    problems: list[str] = []
    checked = 0
    for html in sorted(site.rglob("*.html")):
        rel = html.relative_to(site)
        for tag, attr, url, loads in _parse(html).urls:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                if loads and parts.scheme != "data":
                    problems.append(f"{rel}: <{tag} {attr}> loads from another host: {url}")
                continue
            checked += 1
            if not parts.path:
                target = html
            elif parts.path.startswith("/"):  # 404.html: absolute paths, from the site's root
                target = (site / unquote(parts.path).lstrip("/")).resolve()
            else:
                target = (html.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_relative_to(site):
                problems.append(f"{rel}: {url} points outside the site")
            elif not target.exists():
                problems.append(f"{rel}: {url} -> no such file")
            elif parts.fragment and target.suffix == ".html" and \
                    unquote(parts.fragment) not in _parse(target).ids:
                problems.append(f"{rel}: {url} -> no id {parts.fragment!r} on that page")
    return problems, checked


def _png_size_and_colors(path: Path) -> tuple[int, int, int]:
    """Width, height, and how many distinct byte values the decoded image rows hold (a
    blank page has very few), read with zlib: no imaging library needed."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    idat = bytearray()
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(bytes(idat))
    return width, height, len(set(raw))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def check_browser(site: Path, shots: Path, chromium: str) -> list[str]:
    problems: list[str] = []
    shots.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        for page, expected in PAGES:
            url = f"http://127.0.0.1:{port}/{page}"
            shot = shots / (page.replace("/", "_").removesuffix(".html") + ".png")
            shot.unlink(missing_ok=True)
            with tempfile.TemporaryDirectory(prefix="trioflow-chromium-") as profile:
                flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
                shot_run = subprocess.run([*flags, f"--screenshot={shot}", url],
                                          capture_output=True, text=True, timeout=120)
                dom_run = subprocess.run([*flags, "--dump-dom", url],
                                         capture_output=True, text=True, timeout=120)
            if shot_run.returncode or not shot.exists():
                problems.append(f"chromium took no screenshot of {url} (exit {shot_run.returncode}): "
                                f"{shot_run.stderr.strip()[-500:]}")
                continue
            width, height, values = _png_size_and_colors(shot)
            if (width, height) != WINDOW:
                problems.append(f"{shot}: {width}x{height}, expected {WINDOW[0]}x{WINDOW[1]}")
            if values < 64:
                problems.append(f"{shot}: looks blank ({values} distinct byte values)")
            if expected not in dom_run.stdout:
                problems.append(f"chromium's rendered DOM of {url} lacks {expected!r} "
                                f"(exit {dom_run.returncode}, {len(dom_run.stdout)} chars)")
            else:
                print(f"screenshot {shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot}: "
                      f"{width}x{height}, {shot.stat().st_size:,} bytes; DOM has {expected!r}")
    finally:
        server.shutdown()
        server.server_close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--site", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--shots", type=Path, default=ROOT / "build" / "screenshots")
    parser.add_argument("--no-browser", action="store_true", help="check the links only")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    if not (site / "index.html").exists():
        print(f"check_site: no {site / 'index.html'}: build the site first (mkdocs build)")
        return 1
    problems, checked = check_links(site)
    pages = len(list(site.rglob("*.html")))
    print(f"links: {checked} internal links on {pages} pages checked, {len(problems)} problems")
    if not args.no_browser:
        chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            problems.append("no chromium on PATH (apt-get install chromium; .ci/run does)")
        else:
            problems += check_browser(site, args.shots.resolve(), chromium)
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
