#!/usr/bin/env bash
# A Spark Connect server on 127.0.0.1 from the pip pyspark install (its bundled server jar).
#
#   scripts/connect-server.sh up       start in the background, wait until it listens, print
#                                      the URL to use as --remote / SPARK_REMOTE
#   scripts/connect-server.sh down     stop it by PID
#   scripts/connect-server.sh status   print whether it runs (exit 1 when it does not)
#
# Environment (all optional):
#   MXNORM_CONNECT_PORT     gRPC port (default 15002)
#   MXNORM_CONNECT_MASTER   the server's Spark master (default local[2])
#   MXNORM_CONNECT_DIR      PID and log directory (default /tmp/mxnorm-spark-connect-<uid>)
#   PYTHON                  interpreter with pyspark (default .venv/bin/python); the server's
#                           Python workers (UDFs, foreachBatch) run it too
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
port="${MXNORM_CONNECT_PORT:-15002}"
master="${MXNORM_CONNECT_MASTER:-local[2]}"
state_dir="${MXNORM_CONNECT_DIR:-${TMPDIR:-/tmp}/mxnorm-spark-connect-$(id -u)}"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
pid_file="$state_dir/server.pid"
log="$state_dir/server.log"

die() { echo "connect-server.sh: error: $*" >&2; exit 1; }

running_pid() {
  # The PID only counts while it is still our server (a recycled PID is never signalled).
  [ -f "$pid_file" ] || return 1
  local pid; pid="$(cat "$pid_file")"
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q SparkConnectServer || return 1
  echo "$pid"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

alive() {  # running, not a zombie
  local stat; stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

up() {
  command -v java >/dev/null || [ -x "${JAVA_HOME:-}/bin/java" ] ||
    die "Java was not found; PySpark 4 needs Java 17 or 21 (apt-get install openjdk-17-jre-headless)"
  if pid="$(running_pid)"; then echo "already running (PID $pid): sc://127.0.0.1:$port"; return; fi
  listening && die "port $port is taken; set MXNORM_CONNECT_PORT"
  local home; home="$("$py" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" ||
    die "cannot import pyspark with $py; run 'make setup'"
  mkdir -p "$state_dir"
  SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$py" PYSPARK_DRIVER_PYTHON="$py" \
    nohup "$home/bin/spark-class" org.apache.spark.deploy.SparkSubmit \
    --class org.apache.spark.sql.connect.service.SparkConnectServer \
    --master "$master" \
    --conf spark.connect.grpc.binding.address=127.0.0.1 \
    --conf "spark.connect.grpc.binding.port=$port" \
    --conf spark.driver.host=127.0.0.1 \
    spark-internal > "$log" 2>&1 &
  local pid=$!
  echo "$pid" > "$pid_file"   # spark-class execs java: this is the JVM's PID
  for _ in $(seq 1 240); do
    listening && { echo "Spark Connect server up: sc://127.0.0.1:$port (log: $log)"; return; }
    # Our own child, so its PID cannot be recycled yet; its command line is not checked
    # here: while spark-class execs java, /proc/PID/cmdline can read empty.
    alive "$pid" || die "the server exited; see $log"
    sleep 1
  done
  die "no answer on port $port after 240 s; see $log"
}

down() {
  if pid="$(running_pid)"; then
    kill "$pid"
    for _ in $(seq 1 30); do running_pid >/dev/null || break; sleep 1; done
    running_pid >/dev/null && kill -9 "$pid"
    echo "stopped (PID $pid)"
  else
    echo "not running"
  fi
  rm -f "$pid_file"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status)
    if pid="$(running_pid)"; then echo "running (PID $pid): sc://127.0.0.1:$port"; else
      echo "not running"; exit 1; fi ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
