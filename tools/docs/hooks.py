"""mkdocs hooks for the documentation site (``mkdocs.yml`` names this file).

* README.md and CHANGELOG.md live at the repository's root, where GitHub shows them, and
  ``docs/*.md`` link to ``../README.md``: the site gets them as the pages ``readme.md`` and
  ``changelog.md``, with their links rewritten to point inside the site.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
#: repository file -> its page in the site
ROOT_PAGES = {"README.md": "readme.md", "CHANGELOG.md": "changelog.md"}

_LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for source, page in ROOT_PAGES.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files


def _rewrite(markdown: str, mapping: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        target = m["target"]
        for old, new in mapping.items():
            if target == old or (old.endswith("/") and target.startswith(old)):
                target = new + target[len(old):] if old.endswith("/") else new
                break
        return f"]({target}{m['anchor'] or ''})"

    return _LINK.sub(sub, markdown)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri in ROOT_PAGES.values():
        # a root file: docs/x.md -> x.md, README.md/CHANGELOG.md -> their pages
        return _rewrite(markdown, {"docs/": "", **ROOT_PAGES})
    return _rewrite(markdown, {f"../{k}": v for k, v in ROOT_PAGES.items()})
