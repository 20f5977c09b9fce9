"""Plans drawn by Graphviz (``Plan.render``): SVG and PNG with one box per segment, a clear
error without Graphviz, and the picture in the docs kept equal to the plan it shows.

``TRIOFLOW_UPDATE_DOCS=1 pytest tests/test_render.py`` rewrites docs/images/observing.svg
(the same as ``trioflow graph examples.observing:pipeline --format svg -o ...``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

import trioflow as tf
from trioflow._render import GraphvizNotFound, render_dot

ROOT = Path(__file__).resolve().parent.parent
DOCS_SVG = ROOT / "docs" / "images" / "observing.svg"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


def observing_plan() -> tf.Plan:
    sys.path.insert(0, str(ROOT))
    try:
        from examples.observing import pipeline
    finally:
        sys.path.remove(str(ROOT))
    return pipeline.plan()


def texts(svg: str) -> list[str]:
    """The visible text of an SVG drawn by Graphviz, in order."""
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


@needs_dot
def test_svg_has_a_box_per_segment_around_its_fused_stages() -> None:
    svg = observing_plan().render("svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # one cluster (a box) per segment, titled with its lifecycle and what is fused in it
    clusters = re.findall(r'<g id="clust\d+" class="cluster">', svg)
    assert len(clusters) == 4
    for title in ("segment 0: continuous, 3 fused", "segment 1: pooled", "segment 2: continuous",
                  "segment 3: persistent, 2 fused"):
        assert title in texts(svg)
    # every node, its operator under its name, and the edges' capacities
    for name, op in [("read", "from_iterable"), ("parse", "map"), ("valid", "filter"), ("enrich", "map"),
                     ("batch", "batch"), ("store", "persistent"), ("count", "reduce")]:
        i = texts(svg).index(name)
        assert texts(svg)[i + 1] == op
    assert texts(svg).count("512") == 3


@needs_dot
def test_png_is_a_png() -> None:
    png = (tf.from_iterable([1]) | tf.to_list()).plan().render("png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_render_without_graphviz_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # no dot on it
    with pytest.raises(GraphvizNotFound, match="needs Graphviz's dot program, which is not on PATH") as info:
        (tf.from_iterable([1]) | tf.to_list()).plan().render("svg")
    assert isinstance(info.value, tf.TrioflowError)


def test_render_format_is_checked() -> None:
    with pytest.raises(ValueError, match="fmt must be one of svg, png, got 'gif'"):
        render_dot("digraph {}", "gif")


@needs_dot
def test_bad_dot_text_is_reported_with_graphviz_message() -> None:
    with pytest.raises(RuntimeError, match=r"dot -Tsvg failed \(exit code 1\): .*syntax error"):
        render_dot("digraph { -> }", "svg")


@needs_dot
def test_the_svg_in_the_docs_is_the_plan_of_the_example() -> None:
    fresh = observing_plan().render("svg").decode()
    if os.environ.get("TRIOFLOW_UPDATE_DOCS") == "1":
        DOCS_SVG.write_text(fresh)
    # the text drawn (titles, names, operators, capacities) must match; the layout's
    # coordinates may differ between Graphviz versions
    assert texts(DOCS_SVG.read_text()) == texts(fresh), (
        "docs/images/observing.svg is out of date: TRIOFLOW_UPDATE_DOCS=1 pytest tests/test_render.py")
