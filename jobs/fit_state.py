"""spark-submit job: fit an MXNorm state on a table and write it as JSON (`mxnorm-spark fit`).

    spark-submit jobs/fit_state.py --config conf/example.toml [flags of 'mxnorm-spark fit']

Takes exactly the flags of `mxnorm-spark fit --help`; the SparkSession is built inside
``main`` and keeps spark-submit's master and --conf settings. Only ``mxnorm_spark`` is
imported, so the job runs wherever the package is installed or shipped with --py-files.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mxnorm_spark.cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["fit", *args])


if __name__ == "__main__":
    sys.exit(main())
