"""Waiting for a streaming query: say when it waits for new data, and stop it on Ctrl-C.

PySpark's own SIGINT handler calls into the JVM (``cancelAllJobs``) from inside the py4j
call the main thread is blocked in (``awaitTermination``): that reentrant call fails and
logs py4j tracebacks. While :func:`wait_for_query` waits, a first Ctrl-C only sets a flag
(no JVM call from the handler); the wait, which polls, then stops the query cleanly. A
second Ctrl-C raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql.streaming.query import StreamingQuery

__all__ = ["POLL_SECONDS", "is_waiting_for_data", "say_idle", "wait_for_query"]

# How often the wait looks at the query (Ctrl-C, idle): a stop takes at most this long.
POLL_SECONDS = 1


@contextmanager
def _ctrl_c_sets(flag: threading.Event) -> Iterator[None]:
    """While inside: a first SIGINT sets ``flag``, a second raises KeyboardInterrupt.
    Outside the main thread (where signals cannot be handled) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def is_waiting_for_data(status: Any) -> bool:
    """Whether a query's ``status`` says it has run out of input and waits for more."""
    if not isinstance(status, dict) or status.get("isTriggerActive"):
        return False
    return str(status.get("message", "")).startswith("Waiting for data")


def say_idle(source: Any) -> Callable[[], None]:
    """The ``on_idle`` of a stream that prints: one line naming what it waits for."""
    where = f"files in {source.path}" if source is not None else "data"
    return lambda: print(f"[mxnorm] waiting for new {where} (Ctrl-C to stop)", flush=True)


def wait_for_query(
    query: StreamingQuery,
    await_termination: Callable[[int], bool],
    *,
    on_idle: Callable[[], None] | None = None,
    progress_count: Callable[[], int] = lambda: 0,
) -> bool:
    """Wait until ``query`` ends (``await_termination(timeout)`` is True) or Ctrl-C stops
    it; True when Ctrl-C stopped it. ``on_idle`` is called once each time the query starts
    to wait for new data: first, then again after each batch (as ``progress_count``
    tells)."""
    stop = threading.Event()
    idle_at: int | None = None
    with _ctrl_c_sets(stop):
        while not await_termination(POLL_SECONDS):
            if stop.is_set():
                query.stop()
                return True
            if on_idle is None:
                continue
            # Between triggers the status flips to "Getting offsets" and back many times a
            # second: announce again only once a batch has run since.
            if is_waiting_for_data(query.status) and idle_at != progress_count():
                idle_at = progress_count()
                on_idle()
    return stop.is_set()
