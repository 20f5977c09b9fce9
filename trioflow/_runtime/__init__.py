"""Running: a plan becomes one nursery tree.

Theory of operation.

* One nursery per run. Each segment of the plan (a head plus the inline ops fused after it)
  is one task; worker pools add a child nursery inside their segment's task. Edges are
  bounded ``Edge`` queues of chunks.
* Segments start from the sink back to the source, each through ``nursery.start``: a
  segment reports started once its resources are built (persistent workers entered their
  resource, continuous sources said they are listening). ``run`` reports started to its own
  caller only when every segment has, so ``await nursery.start(flow.run)`` means ready.
* Completion flows down: a head whose input ended (or whose source is exhausted) flushes
  its fused ops and closes its output edge; the next segment then sees the end.
* Early stop flows up: when an op wants no more input (``take``), or the output edge's
  consumer has gone, the segment cancels its own scope (``Segment.scope``), so the head
  and any user code under way unwind exactly as on cancellation; the segment then closes
  its input edge, and the producer upstream stops the same way on its next ``put``.
* Failure cancels the tree: every task runs under ``Runner.guarded``, which records a user
  error (already annotated with stage and item) and cancels the run's nursery *before*
  the task's ``finally`` closes its edges, so downstream sees cancellation, never a clean
  end. Nothing takes a completion action after a failure: every completion path first
  passes ``checkpoint_if_cancelled``. Recorded errors are raised once, as a single
  ``ExceptionGroup`` level, after the nursery has exited; no error is swallowed by cleanup,
  because edges close synchronously.
"""

from ._handle import ItemStream as ItemStream
from ._handle import RunHandle as RunHandle
from ._handle import run_to_completion as run_to_completion
from ._runner import Runner as Runner
from ._sources import Emit as Emit
