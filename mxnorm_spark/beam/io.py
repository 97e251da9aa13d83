"""``WriteState``: the fitted state written as the project's state file
(:func:`~mxnorm_spark.store.write_state`), which :func:`mxnorm_spark.serving.load`, the
``mxnorm-spark`` command and the Spark side read."""

from __future__ import annotations

import os

import apache_beam as beam

from mxnorm_spark.beam.fit import BatchStates
from mxnorm_spark.errors import InvalidParameterError
from mxnorm_spark.state import MXNormState
from mxnorm_spark.store import write_state

__all__ = ["WriteState"]


def _write(fitted: MXNormState | BatchStates, path: str) -> str:
    state = fitted.final if isinstance(fitted, BatchStates) else fitted
    if not isinstance(state, MXNormState):
        raise InvalidParameterError(
            f"WriteState writes one MXNormState (or a FitHistory's final one), got a "
            f"{type(fitted).__name__}; write per-key states one file per key"
        )
    return write_state(state, path)


class WriteState(beam.PTransform):  # type: ignore[misc]
    """Writes the one state of a PCollection to ``path`` (local or ``s3://``, ``gs://``,
    ``abfs://``) atomically, and yields where it went."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = str(path)

    def expand(self, states: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        return states | "WriteStateFile" >> beam.Map(_write, self.path)
