"""The math, numpy only: mergeable moments (:mod:`.moments`), the MXNorm state and its
options (:mod:`.state`), the fold of many batches at once (:mod:`.history`), and the
vocabulary every layer shares (:mod:`.errors`, :mod:`.choices`)."""

from mxnorm_spark.core.history import (
    StateHistory,
    fold_history,
)
from mxnorm_spark.core.moments import (
    Moments,
)
from mxnorm_spark.core.state import (
    MXNormState,
    StateOptions,
)

__all__ = [
    "MXNormState",
    "Moments",
    "StateHistory",
    "StateOptions",
    "fold_history",
]
