"""spark-submit job: normalize a table with a fitted MXNorm state (`mxnorm-spark transform`).

    spark-submit jobs/normalize_batch.py --config conf/example.toml \
        [flags of 'mxnorm-spark transform']

Takes exactly the flags of `mxnorm-spark transform --help`; the SparkSession is built inside
``main`` and keeps spark-submit's master and --conf settings. Only ``mxnorm_spark`` is
imported, so the job runs wherever the package is installed or shipped with --py-files.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mxnorm_spark.cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["transform", *args])


if __name__ == "__main__":
    sys.exit(main())
