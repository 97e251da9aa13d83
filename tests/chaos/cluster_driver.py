"""The driver of one executor-kill run (a process of its own, master from the command line).

    python cluster_driver.py MASTER KIND OUT INPUT

KIND is ``stream``, ``keyed`` (a keyed stream) or ``fit`` (a backfill over ``day``). The
input goes through chaosgate.gated, so executors pause where the test asks; the driver
itself is plain product code: MXNormStream.run or MXNorm.fit, arrow engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEATURES = ["a", "b", "c"]


def main(master: str, kind: str, out: str, inp: str) -> int:
    from pyspark.sql import SparkSession

    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.ml.estimator import MXNorm
    from mxnorm_spark.store import write_state
    from mxnorm_spark.streaming._local import DriverBatches
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    builder = SparkSession.builder.master(master).appName(f"mxnorm-chaos-{kind}")
    conf = {
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
        "spark.driver.host": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Two 1-core executors, one on each worker: a killed one leaves the other.
        "spark.cores.max": "2",
        "spark.executor.cores": "1",
        "spark.executor.memory": "512m",
        "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        "spark.pyspark.python": sys.executable,
    }
    for name in ("MXCHAOS_GATE", "MXCHAOS_BATCH", "MXCHAOS_NTH"):
        if os.environ.get(name):
            conf[f"spark.executorEnv.{name}"] = os.environ[name]
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.addPyFile(str(HERE / "chaosgate.py"))
    import chaosgate

    if kind == "fit":
        df = chaosgate.gated(spark.read.parquet(inp))
        model = MXNorm(inputCols=FEATURES, alpha=0.3, batchCol="day", engine="arrow").fit(df)
        write_state(model.state, f"{out}/state.json")
        return 0
    schema = spark.read.parquet(inp).schema
    stream_df = chaosgate.gated(
        spark.readStream.schema(schema).option("maxFilesPerTrigger", "1").parquet(inp)
    )
    stream = MXNormStream(
        spark, f"{out}/state", cols=FEATURES, output=f"{out}/out",
        options=StateOptions(alpha=0.25), engine="arrow", persist=False, progress=print,
        keys=KeyOptions(("k",)) if kind == "keyed" else None,
    )  # fmt: skip
    stream._driver = DriverBatches(0, None)  # every batch through executors, never collected
    stream.run(stream_df, f"{out}/checkpoint")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
