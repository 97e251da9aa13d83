"""The two engines, one module each, for both moments and normalization: :mod:`.sql` (JVM
expressions) and :mod:`.arrow` / :mod:`.arrow_normalize` (numpy and pyarrow in the Python
workers). What they share: input resolution and the validity test (:mod:`.columns`), the
moments partials they hand back (:mod:`.partials`) and the normalization constants
(:mod:`.constants`)."""

from mxnorm_spark.engines.constants import (
    Constants,
)
from mxnorm_spark.engines.partials import (
    BatchTable,
    PartitionMoments,
)

__all__ = [
    "BatchTable",
    "Constants",
    "PartitionMoments",
]
