"""The former path of :mod:`mxnorm_spark.batch.aggregate`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.batch.aggregate`."""

from mxnorm_spark.batch.aggregate import (
    ENGINES,
    BatchTable,
    batch_moments,
    batch_moments_and_rows,
    check_engine,
    feature_names,
    moments_by_batch,
    moments_table_by_batch,
    resolve_input,
    sql_double,
    vector_names,
)

__all__ = [
    "ENGINES",
    "BatchTable",
    "batch_moments",
    "batch_moments_and_rows",
    "check_engine",
    "feature_names",
    "moments_by_batch",
    "moments_table_by_batch",
    "resolve_input",
    "sql_double",
    "vector_names",
]
