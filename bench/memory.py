"""Peak resident memory of a benchmark process tree, sampled with psutil.

A background thread samples this process (the driver), its JVM child and the JVM's Python
worker descendants every ``interval`` seconds and keeps the peak of each group's summed RSS.
RSS of forked Python workers double-counts pages they share with the daemon that forked
them, so the ``workers`` figure is an upper bound.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from types import TracebackType

import psutil

MiB = 1024 * 1024


@dataclass
class Peaks:
    driver: int = 0  # the Python driver process (bytes)
    jvm: int = 0  # the Spark JVM (bytes)
    workers: int = 0  # all Python processes below the JVM, summed (bytes)
    total: int = 0  # all of the above at one instant (bytes)
    samples: int = 0

    def max(self, other: Peaks) -> Peaks:
        """The element-wise maximum: the peaks over several measured intervals."""
        return Peaks(
            max(self.driver, other.driver),
            max(self.jvm, other.jvm),
            max(self.workers, other.workers),
            max(self.total, other.total),
            self.samples + other.samples,
        )

    def as_mib(self) -> dict[str, float]:
        return {
            "driver": round(self.driver / MiB, 1),
            "jvm": round(self.jvm / MiB, 1),
            "workers": round(self.workers / MiB, 1),
            "total": round(self.total / MiB, 1),
        }


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0


def sample_tree(root: psutil.Process) -> tuple[int, int, int]:
    """Return the current (driver, jvm, python workers) RSS in bytes below ``root``."""
    driver = _rss(root)
    jvm = workers = 0
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            name = child.name().lower()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss = _rss(child)
        if name.startswith("java"):
            jvm += rss
        elif name.startswith("python"):
            workers += rss
    return driver, jvm, workers


@dataclass
class PeakMemory:
    """Context manager: ``with PeakMemory() as mem: ...`` then read ``mem.peaks``."""

    interval: float = 0.1
    pid: int = field(default_factory=os.getpid)
    peaks: Peaks = field(default_factory=Peaks)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._root = psutil.Process(self.pid)

    def _sample(self) -> None:
        driver, jvm, workers = sample_tree(self._root)
        p = self.peaks
        p.driver = max(p.driver, driver)
        p.jvm = max(p.jvm, jvm)
        p.workers = max(p.workers, workers)
        p.total = max(p.total, driver + jvm + workers)
        p.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
