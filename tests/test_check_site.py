"""tools/docs/check_site.py, the link checker that ``nox -s docs`` runs over the built site:
it must find what is broken (the site itself is checked in that session, not here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "tools" / "docs" / "check_site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_site"] = module
    spec.loader.exec_module(module)
    return module


check_site = _load()


def _site(tmp_path: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{body}</body></html>")
    return tmp_path


def test_a_sound_site_has_no_problems(tmp_path: Path) -> None:
    site = _site(tmp_path, {
        "index.html": '<a href="ref/ops.html#map">map</a> <a href="#top" id="top">top</a>'
                      '<a href="https://example.invalid/">away</a><img src="img/x.png">',
        "ref/ops.html": '<h2 id="map">map</h2><a href="../index.html">home</a>'
                        '<a href="/index.html">root</a>',
        "img/x.png": "",
    })
    problems, checked = check_site.check_links(site)
    assert problems == []
    assert checked == 5


def test_broken_files_anchors_and_external_loads_are_reported(tmp_path: Path) -> None:
    site = _site(tmp_path, {
        "index.html": '<a href="missing.html">x</a><a href="ops.html#nope">y</a>'
                      '<a href="#gone">z</a><img src="img/none.png">'
                      '<script src="https://cdn.example.invalid/x.js"></script>'
                      '<link rel="stylesheet" href="https://fonts.example.invalid/a.css">'
                      '<a href="../../outside.html">out</a>',
        "ops.html": '<h2 id="map">map</h2>',
    })
    problems, _ = check_site.check_links(site)
    text = "\n".join(problems)
    assert "missing.html -> no such file" in text
    assert "ops.html#nope -> no id 'nope'" in text
    assert "#gone -> no id 'gone'" in text
    assert "img/none.png -> no such file" in text
    assert "loads from another host: https://cdn.example.invalid/x.js" in text
    assert "loads from another host: https://fonts.example.invalid/a.css" in text
    assert "../../outside.html points outside the site" in text
    assert len(problems) == 7
