"""spark-submit job: normalize a file stream with exactly-once MXNorm state (`mxnorm-spark stream`).

    spark-submit jobs/stream_normalize.py --input incoming/ --format parquet --cols a,b \
        --output normalized/ --state state/ --checkpoint chk/ [--available-now]

Takes exactly the flags of `mxnorm-spark stream --help` (or ``--config FILE.toml`` with a
``[stream]`` table); the SparkSession is built inside ``main`` and keeps spark-submit's
master and --conf settings. Restart it with the same --checkpoint and --state after a
crash: no micro-batch is folded twice and no row is lost or duplicated.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mxnorm_spark.cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["stream", *args])


if __name__ == "__main__":
    sys.exit(main())
