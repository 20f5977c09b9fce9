"""Rendering a plan to a picture with Graphviz's ``dot`` (run as a program, if installed)."""

from __future__ import annotations

import shutil
import subprocess

from ._errors import TrioflowError

#: What ``Plan.render`` can produce.
FORMATS = ("svg", "png")


class GraphvizNotFound(TrioflowError, RuntimeError):
    """Graphviz's ``dot`` program is not installed (not on ``PATH``)."""


def render_dot(dot: str, fmt: str = "svg", *, timeout: float = 60.0) -> bytes:
    """The DOT text ``dot`` laid out and drawn by Graphviz, as ``fmt`` (``svg`` or
    ``png``) bytes; ``GraphvizNotFound`` if ``dot`` is not on ``PATH``."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFound(
            "rendering a plan needs Graphviz's dot program, which is not on PATH: install "
            "Graphviz (apt-get install graphviz, brew install graphviz), or export the text "
            "with plan.to_dot() / plan.to_mermaid()")
    done = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed (exit code {done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout
