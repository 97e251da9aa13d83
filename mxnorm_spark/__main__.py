"""``python -m mxnorm_spark``: the same as the ``mxnorm-spark`` command."""

import sys

from mxnorm_spark.cli.commands import main

sys.exit(main())
