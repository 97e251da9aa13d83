"""Progress of a stream: one :class:`BatchReport` per micro-batch, printed as one line.

Also the test-only fault hook (:func:`fault`), which kills the driver at a chosen point of
a chosen micro-batch: ``MXNORM_FAULT=before_commit:3`` kills the process with SIGKILL just
before the state of batch 3 is committed (also ``during_key_write``: a keyed stream's
snapshot written but not renamed into place; ``after_commit``, ``during_write``,
``after_write``; several as a comma-separated list). The crash-safety tests restart the
stream after each such kill. ``<point>:<batch>:pause`` pauses there instead: the process
creates ``$MXNORM_FAULT_GATE/<point>-<batch>.paused`` (holding its PID) and waits until
``<point>-<batch>.go`` appears, so a test can act at that very moment (kill an executor,
start a rival writer) without guessing at timings. ``fit_write`` is the point of
``mxnorm-spark fit`` between its claim on ``--state`` and the write (batch 0).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store import StateStore, version_file_name

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

FAULT_ENV = "MXNORM_FAULT"
FAULT_GATE_ENV = "MXNORM_FAULT_GATE"
FAULT_POINTS = (
    "during_key_write",
    "before_commit",
    "after_commit",
    "during_write",
    "after_write",
    "fit_write",
)
# A paused process goes on by itself after this long: a test that died must not leave it.
PAUSE_LIMIT_SECONDS = 600

__all__ = [
    "FAULT_ENV",
    "FAULT_GATE_ENV",
    "FAULT_POINTS",
    "BatchReport",
    "fault",
    "largest_mean_change",
    "print_report",
]


@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did; :meth:`line` is the progress line a stream prints."""

    batch_id: int
    rows: int
    seconds: float
    replayed: bool
    state_version: str | None
    max_mean_change: float | None = None
    changed_feature: str | None = None
    output: str | None = None
    # Event-time streams: late rows of this micro-batch, batches it folded, batches open.
    late_rows: int | None = None
    folded: int | None = None
    open_batches: int | None = None

    @classmethod
    def of(
        cls,
        batch_id: int,
        rows: int,
        *,
        seconds: float,
        replayed: bool,
        prev: MXNormState | None,
        new: MXNormState | None,
        out_dir: str | None,
        late_rows: int | None = None,
        folded: int | None = None,
        open_batches: int | None = None,
    ) -> BatchReport:
        """The report of a batch that turned state ``prev`` into ``new`` (None: no state)."""
        change, feature = (None, None)
        if not replayed and new is not None and prev is not None and rows:
            change, feature = largest_mean_change(prev, new)
        return cls(
            batch_id=batch_id,
            rows=rows,
            seconds=seconds,
            replayed=replayed,
            state_version=None if new is None else version_file_name(batch_id),
            max_mean_change=change,
            changed_feature=feature,
            output=out_dir,
            late_rows=late_rows,
            folded=folded,
            open_batches=open_batches,
        )

    def line(self) -> str:
        head = f"[mxnorm] batch {self.batch_id}: {self.rows:,} rows in {self.seconds:.2f} s"
        if self.state_version is None:
            return f"{head}, empty before any data: no state yet"
        if self.replayed:
            tail = f"replayed: reused committed {self.state_version}"
        elif self.rows == 0:
            tail = f"empty: state unchanged, committed {self.state_version}"
        elif self.max_mean_change is None:
            tail = f"state initialized, committed {self.state_version}"
        else:
            tail = (
                f"largest mean change {self.max_mean_change:.3g} sd ({self.changed_feature}), "
                f"committed {self.state_version}"
            )
        if self.late_rows is not None:
            tail += (
                f"; {self.late_rows:,} late rows dropped, {self.folded} batch(es) folded, "
                f"{self.open_batches} open"
            )
        return f"{head}, {tail}"


def print_report(report: BatchReport) -> None:
    print(report.line(), flush=True)


def largest_mean_change(before: MXNormState, after: MXNormState) -> tuple[float | None, str | None]:
    """Largest |mean change| of a feature, in standard deviations of the state before."""
    had = before.initialized
    if not had.any():
        return None, None
    _, scale = before.normalization_constants(fallback=after)
    with np.errstate(invalid="ignore", divide="ignore"):
        change = np.abs(after.mean - before.mean) / scale
    change = np.where(had & np.isfinite(change), change, -1.0)
    j = int(np.argmax(change))
    return (float(change[j]), before.features[j]) if change[j] >= 0 else (None, None)


def reports_from_history(store: StateStore, after: int | None) -> list[BatchReport]:
    """The reports of the batches recorded after batch ``after``, rebuilt from the store.

    On Spark Connect the micro-batches run in the server's Python process: their reports
    printed there, and the client reads back what they recorded (rows, versions; the
    durations stay on the server, so ``seconds`` is NaN).
    """
    table = store.history()
    ids = table.column("batch_id").to_pylist()
    rows = table.column("rows").to_pylist()
    seen: dict[int, int] = {}
    for b, n in zip(ids, rows, strict=True):
        if after is None or b > after:
            seen.setdefault(int(b), int(n))
    return [
        BatchReport(
            batch_id=b,
            rows=n,
            seconds=float("nan"),
            replayed=False,
            state_version=version_file_name(b),
        )
        for b, n in sorted(seen.items())
    ]


# ---- the fault hook (tests) -------------------------------------------------------------
def fault(point: str, batch_id: int, spark: SparkSession | None = None) -> None:
    """Kill this driver (and a classic session's JVM) with SIGKILL if ``MXNORM_FAULT`` names
    this point of this batch; or pause there (``<point>:<batch>:pause``, see the module)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, rest = item.strip().partition(":")
        bid, _, action = rest.partition(":")
        if name != point or bid.strip() != str(batch_id):
            continue
        if action.strip() == "pause":
            _pause(f"{point}-{batch_id}")
            continue
        if name == point and bid.strip() == str(batch_id):
            print(f"[mxnorm] fault hook: SIGKILL at {point} of batch {batch_id}", flush=True)
            # Classic Spark only (py4j gateway); on Spark Connect the server lives on.
            jvm = getattr(spark, "_jvm", None) if spark is not None else None
            if jvm is not None:
                # The JVM would exit by itself once its parent is gone, but running its
                # shutdown hooks first; a real crash gives it no such chance.
                os.kill(int(jvm.java.lang.ProcessHandle.current().pid()), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


def _pause(name: str) -> None:
    gate = os.environ.get(FAULT_GATE_ENV)
    if not gate:
        raise RuntimeError(f"{FAULT_ENV} asks to pause at {name}, but {FAULT_GATE_ENV} is unset")
    go = os.path.join(gate, f"{name}.go")
    if os.path.exists(go):  # released already: a replay passes through
        return
    paused = os.path.join(gate, f"{name}.paused")
    with open(paused + ".tmp", "w") as fh:  # renamed whole: a reader never sees it empty
        fh.write(str(os.getpid()))
    os.replace(paused + ".tmp", paused)
    print(f"[mxnorm] fault hook: paused at {name}", flush=True)
    deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)
