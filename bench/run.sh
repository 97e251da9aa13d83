#!/usr/bin/env bash
# The benchmark in one command: bench/run.sh [--quick | --full] [--reps N] [--cases a,b] ...
# (`make bench` calls it). Writes bench/RESULTS.md, bench/results.png, bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || scripts/bootstrap.sh test,dev
"$py" -c 'import psutil, matplotlib' 2>/dev/null || "$py" -m pip install -q -e ".[bench]"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export PYSPARK_PYTHON="$PWD/$py" PYSPARK_DRIVER_PYTHON="$PWD/$py"
# Recorded in RESULTS.md as the command that produced it.
export MXBENCH_COMMAND="${MXBENCH_COMMAND:-bench/run.sh${*:+ $*}}"
exec "$py" -m bench.run "$@"
