"""The former path of :mod:`mxnorm_spark.cli.demo`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.cli.demo`."""

from mxnorm_spark.cli.demo import (
    FEATURES,
    demo_stream,
    generate_events,
    main,
    write_demo_files,
)

__all__ = [
    "FEATURES",
    "demo_stream",
    "generate_events",
    "main",
    "write_demo_files",
]

if __name__ == "__main__":
    raise SystemExit(main())
