"""trioflow: streaming pipelines for Trio, as nursery trees with backpressure end to end.

    import trioflow as tf
    total = await (tf.from_iterable(range(10)) | tf.map(lambda x: x * 2) | tf.reduce(
        lambda a, x: a + x, 0)).run()
"""

from ._acks import Ack as Ack
from ._backends import Backend as Backend
from ._backends import BackendError as BackendError
from ._backends import Dask as Dask
from ._backends import Inline as Inline
from ._backends import Processes as Processes
from ._backends import Threads as Threads
from ._composite import fork_join as fork_join
from ._composite import partition as partition
from ._errors import (
    DefinitionError as DefinitionError,
)
from ._errors import (
    DefinitionTypeError as DefinitionTypeError,
)
from ._errors import (
    DefinitionValueError as DefinitionValueError,
)
from ._errors import (
    FusedStageWarning as FusedStageWarning,
)
from ._errors import (
    RunAborted as RunAborted,
)
from ._errors import (
    SourceConsumedError as SourceConsumedError,
)
from ._errors import (
    TrioflowError as TrioflowError,
)
from ._errors import (
    UnroutableError as UnroutableError,
)
from ._flow import Flow as Flow
from ._flow import Pipeline as Pipeline
from ._graph import Graph as Graph
from ._graph import GraphResult as GraphResult
from ._graph import Node as Node
from ._graph import Port as Port
from ._graph import RouteNode as RouteNode
from ._graph import SinkNode as SinkNode
from ._operators import (
    batch as batch,
)
from ._operators import (
    concat as concat,
)
from ._operators import (
    continuous as continuous,
)
from ._operators import (
    distinct as distinct,
)
from ._operators import (
    distinct_until_changed as distinct_until_changed,
)
from ._operators import (
    enumerate as enumerate,
)
from ._operators import (
    filter as filter,
)
from ._operators import (
    flat_map as flat_map,
)
from ._operators import (
    from_async_iterable as from_async_iterable,
)
from ._operators import (
    from_channel as from_channel,
)
from ._operators import (
    from_iterable as from_iterable,
)
from ._operators import (
    map as map,
)
from ._operators import (
    on_demand as on_demand,
)
from ._operators import (
    periodic as periodic,
)
from ._operators import (
    persistent as persistent,
)
from ._operators import (
    reduce as reduce,
)
from ._operators import (
    scan as scan,
)
from ._operators import (
    sink as sink,
)
from ._operators import (
    skip as skip,
)
from ._operators import (
    skip_while as skip_while,
)
from ._operators import (
    source as source,
)
from ._operators import (
    start_with as start_with,
)
from ._operators import (
    take as take,
)
from ._operators import (
    take_last as take_last,
)
from ._operators import (
    take_while as take_while,
)
from ._operators import (
    tap as tap,
)
from ._operators import (
    to_list as to_list,
)
from ._overflow import UNBOUNDED as UNBOUNDED
from ._overflow import EdgeOverflowError as EdgeOverflowError
from ._overflow import ItemDropped as ItemDropped
from ._overflow import Overflow as Overflow
from ._overflow import Unbounded as Unbounded
from ._parallel import AllOrNothing as AllOrNothing
from ._parallel import AtLeast as AtLeast
from ._parallel import BestEffort as BestEffort
from ._parallel import Error as Error
from ._parallel import FirstK as FirstK
from ._parallel import Outcome as Outcome
from ._parallel import ParallelBlockError as ParallelBlockError
from ._parallel import ParallelPolicy as ParallelPolicy
from ._parallel import Value as Value
from ._parallel import parallel as parallel
from ._plan import DEFAULT as DEFAULT
from ._plan import Plan as Plan
from ._plan import PlanNode as PlanNode
from ._plan import PlanSegment as PlanSegment
from ._policies import Backoff as Backoff
from ._policies import Collect as Collect
from ._policies import DeadLetter as DeadLetter
from ._policies import DeadLetterEntry as DeadLetterEntry
from ._policies import Fail as Fail
from ._policies import OnError as OnError
from ._policies import Restart as Restart
from ._policies import Retry as Retry
from ._policies import Skip as Skip
from ._render import GraphvizNotFound as GraphvizNotFound
from ._report import RunReport as RunReport
from ._runtime import Emit as Emit
from ._runtime import ItemStream as ItemStream
from ._runtime import RunHandle as RunHandle
from ._signals import run_until_signal as run_until_signal
from ._stage import Adaptive as Adaptive
from ._stage import Lifecycle as Lifecycle
from ._stage import Sink as Sink
from ._stage import Source as Source
from ._stage import Stage as Stage
from ._stats import (
    EdgeStatistics as EdgeStatistics,
)
from ._stats import (
    RunState as RunState,
)
from ._stats import (
    RunStatistics as RunStatistics,
)
from ._stats import (
    StageStatistics as StageStatistics,
)
from ._time import EMIT_LATE as EMIT_LATE
from ._time import EmitLate as EmitLate
from ._time import debounce as debounce
from ._time import delay as delay
from ._time import sample as sample
from ._time import throttle as throttle
from ._time import window as window
from ._windows import CollectAll as CollectAll
from ._windows import EventTime as EventTime
from ._windows import Fold as Fold
from ._windows import Late as Late
from ._windows import LateItemError as LateItemError
from ._windows import ProcessingTime as ProcessingTime
from ._windows import Reduce as Reduce
from ._windows import Session as Session
from ._windows import Sliding as Sliding
from ._windows import Tumbling as Tumbling
from ._windows import WindowLimitError as WindowLimitError
from ._windows import WindowResult as WindowResult

__version__ = "0.1.0"

__all__ = [
    "ItemDropped",
    "Ack",
    "Adaptive",
    "AllOrNothing",
    "AtLeast",
    "Backend",
    "BackendError",
    "Backoff",
    "BestEffort",
    "Collect",
    "DEFAULT",
    "Dask",
    "DeadLetter",
    "DeadLetterEntry",
    "DefinitionError",
    "DefinitionTypeError",
    "DefinitionValueError",
    "FusedStageWarning",
    "EdgeOverflowError",
    "EdgeStatistics",
    "Emit",
    "Error",
    "Fail",
    "FirstK",
    "Flow",
    "GraphvizNotFound",
    "Graph",
    "GraphResult",
    "Inline",
    "ItemStream",
    "Lifecycle",
    "Node",
    "OnError",
    "Outcome",
    "Overflow",
    "ParallelBlockError",
    "ParallelPolicy",
    "Pipeline",
    "Plan",
    "PlanNode",
    "PlanSegment",
    "Port",
    "Processes",
    "Restart",
    "Retry",
    "RouteNode",
    "RunAborted",
    "SourceConsumedError",
    "RunHandle",
    "RunReport",
    "RunState",
    "RunStatistics",
    "Sink",
    "SinkNode",
    "Skip",
    "Source",
    "Stage",
    "StageStatistics",
    "Threads",
    "TrioflowError",
    "UNBOUNDED",
    "Unbounded",
    "UnroutableError",
    "Value",
    "batch",
    "concat",
    "continuous",
    "distinct",
    "distinct_until_changed",
    "enumerate",
    "filter",
    "flat_map",
    "fork_join",
    "from_async_iterable",
    "from_channel",
    "from_iterable",
    "map",
    "on_demand",
    "parallel",
    "partition",
    "periodic",
    "persistent",
    "reduce",
    "run_until_signal",
    "scan",
    "sink",
    "skip",
    "skip_while",
    "source",
    "start_with",
    "take",
    "take_last",
    "take_while",
    "tap",
    "to_list",
]
# time: windows and rate control (docs/time.md)
__all__ += [
    "EMIT_LATE", "CollectAll", "EmitLate", "EventTime", "Fold", "Late", "LateItemError",
    "ProcessingTime", "Reduce", "Session", "Sliding", "Tumbling", "WindowLimitError",
    "WindowResult", "debounce", "delay", "sample", "throttle", "window",
]
