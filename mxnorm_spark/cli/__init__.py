"""The ``mxnorm-spark`` command (:mod:`.commands`), its job configuration (:mod:`.config`,
:mod:`.config_fields`), the job's SparkSession (:mod:`.session`) and the quick-start demo
(:mod:`.demo`)."""

from mxnorm_spark.cli.commands import (
    main,
)

__all__ = [
    "main",
]
