"""An executor-side gate for the executor-kill tests (shipped to the cluster with addPyFile).

``gated(df)`` passes ``df`` through a ``mapInArrow`` that, in partition 0 of the chosen
micro-batch (or of any job, for a batch job), counts how often that partition is computed
(an exclusive file per computation) and pauses the N-th computation: it writes its PID to
``<gate>/paused`` and waits for ``<gate>/go``. The test then kills the JVM of the executor
running that very task and opens the gate; the retried task passes straight through.

Settings come from the executors' environment: ``MXCHAOS_GATE`` (directory),
``MXCHAOS_BATCH`` (micro-batch id, or ``any``) and ``MXCHAOS_NTH`` (0 = the first
computation of the partition: the moments job; 1 = the second: the output write).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

PAUSE_LIMIT = 600.0


def _pass(batches: Iterator[Any]) -> Iterator[Any]:
    from pyspark import TaskContext

    gate = os.environ.get("MXCHAOS_GATE")
    ctx = TaskContext.get()
    if gate and ctx is not None and ctx.partitionId() == 0:
        want = os.environ.get("MXCHAOS_BATCH", "any")
        batch = ctx.getLocalProperty("streaming.sql.batchId")
        if want in ("any", batch):
            _count_and_maybe_pause(gate, int(os.environ.get("MXCHAOS_NTH", "0")))
    yield from batches


def _count_and_maybe_pause(gate: str, nth: int) -> None:
    k = 0
    while True:
        try:
            os.close(os.open(os.path.join(gate, f"seen-{k}"), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            k += 1
    go = os.path.join(gate, "go")
    if k != nth or os.path.exists(go):
        return
    with open(os.path.join(gate, "paused.tmp"), "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(os.path.join(gate, "paused.tmp"), os.path.join(gate, "paused"))
    deadline = time.monotonic() + PAUSE_LIMIT
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)


def gated(df: Any) -> Any:
    return df.mapInArrow(_pass, df.schema)
