"""Run every case of ``cases.py`` on a classic local SparkSession (a separate process).

python tests/connect/classic_run.py INPUT_DIR OUTPUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import run_all


def main() -> int:
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        run_all(spark, Path(sys.argv[1]), Path(sys.argv[2]))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
