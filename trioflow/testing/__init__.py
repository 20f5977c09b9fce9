"""trioflow.testing: test your pipelines.

* ``run_on_list`` runs a flow (or a stage on a list) and reports outputs, statistics, errors;
* ``ScriptedSource`` and ``RecordingSink`` are exact, clock-aware ends for a flow;
* ``open_probes`` drives a stage item by item (``SourceProbe``, ``SinkProbe``);
* ``fail_on_call``, ``fail_with_probability``, ``hang_on_call``, ``slow_down`` inject faults;
* ``assert_no_leftovers`` and ``ResourceTracker`` check that nothing outlives a run.

Hypothesis strategies live in ``trioflow.testing.strategies`` (needs the ``test`` extra);
importing this package does not import Hypothesis. See ``docs/testing.md``.
"""

from ._cleanup import ResourceTracker as ResourceTracker
from ._cleanup import assert_no_leftovers as assert_no_leftovers
from ._faults import FaultyAsyncFunction as FaultyAsyncFunction
from ._faults import FaultyFunction as FaultyFunction
from ._faults import InjectedFault as InjectedFault
from ._faults import fail_on_call as fail_on_call
from ._faults import fail_with_probability as fail_with_probability
from ._faults import hang_on_call as hang_on_call
from ._faults import slow_down as slow_down
from ._probes import SinkProbe as SinkProbe
from ._probes import SourceProbe as SourceProbe
from ._probes import open_probes as open_probes
from ._run import RunResult as RunResult
from ._run import run_on_list as run_on_list
from ._scripted import Arrival as Arrival
from ._scripted import Fail as Fail
from ._scripted import RecordingSink as RecordingSink
from ._scripted import ScriptedSource as ScriptedSource
from ._scripted import Sleep as Sleep
from ._scripted import WaitFor as WaitFor

__all__ = [
    "Arrival",
    "Fail",
    "FaultyAsyncFunction",
    "FaultyFunction",
    "InjectedFault",
    "RecordingSink",
    "ResourceTracker",
    "RunResult",
    "ScriptedSource",
    "SinkProbe",
    "Sleep",
    "SourceProbe",
    "WaitFor",
    "assert_no_leftovers",
    "fail_on_call",
    "fail_with_probability",
    "hang_on_call",
    "open_probes",
    "run_on_list",
    "slow_down",
]
