"""Hypothesis strategies for trioflow pipelines: ``items``, ``chains``, ``fault_schedules``,
``run_settings``.

Needs Hypothesis (``pip install 'trioflow[test]'``); ``import trioflow.testing`` does not.
"""

try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "trioflow.testing.strategies needs Hypothesis, which is not installed: "
        "install the 'test' extra, pip install 'trioflow[test]'"
    ) from exc

from ._strategies import Reference as Reference
from ._strategies import RunSettings as RunSettings
from ._strategies import chains as chains
from ._strategies import fault_schedules as fault_schedules
from ._strategies import items as items
from ._strategies import run_settings as run_settings

__all__ = ["Reference", "RunSettings", "chains", "fault_schedules", "items", "run_settings"]
