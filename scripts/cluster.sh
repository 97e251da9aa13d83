#!/usr/bin/env bash
# A Spark standalone cluster on 127.0.0.1 (one master, N workers) from the pip pyspark install.
#
#   scripts/cluster.sh up            start in the background, wait until every worker is
#                                    registered, print the master URL and web UI address
#   scripts/cluster.sh down          stop the master and workers by PID
#   scripts/cluster.sh status        print what is running (exit 1 when nothing is)
#   scripts/cluster.sh run -- CMD    up, run CMD with MXNORM_SPARK_MASTER set, down (always)
#   scripts/cluster.sh foreground    up, then wait; Ctrl-C stops the cluster
#
# Environment (all optional):
#   MXNORM_CLUSTER_DIR      state dir: PIDs, logs, work dirs (default /tmp/mxnorm-spark-cluster-*)
#   MXNORM_CLUSTER_WORKERS  number of workers                      (default 2)
#   MXNORM_CLUSTER_CORES    cores per worker                       (default 1)
#   MXNORM_CLUSTER_MEMORY   memory per worker                      (default 1g)
#   MXNORM_CLUSTER_PORT     master port: 7077 when free, else a free port; 0 = always free
#   MXNORM_CLUSTER_UI_PORT  master web UI port: 8080 when free, else a free port; 0 = always free
#   MXNORM_CLUSTER_TIMEOUT  seconds to wait for the workers to register (default 120)
#   PYTHON                  interpreter with pyspark (default .venv/bin/python, else python3)
#
# Every JVM is started with `spark-class`, which execs java, so `$!` is the JVM's PID; that
# PID (checked against /proc/PID/cmdline before any signal, so a recycled PID is never hit)
# is the only handle used to stop it.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# Outside the checkout's build/ so that `make clean` cannot lose the PIDs of a running
# cluster; one directory per user and checkout.
state_dir="${MXNORM_CLUSTER_DIR:-${TMPDIR:-/tmp}/mxnorm-spark-cluster-$(id -u)-$(printf '%s' "$root" | cksum | cut -d' ' -f1)}"
n_workers="${MXNORM_CLUSTER_WORKERS:-2}"
worker_cores="${MXNORM_CLUSTER_CORES:-1}"
worker_memory="${MXNORM_CLUSTER_MEMORY:-1g}"
timeout_s="${MXNORM_CLUSTER_TIMEOUT:-120}"
host=127.0.0.1

if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x "$root/.venv/bin/python" ]; then
  py="$root/.venv/bin/python"
else
  py=python3
fi

die() {
  echo "cluster.sh: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

spark_home() {
  if [ -n "${SPARK_HOME:-}" ] && [ -x "$SPARK_HOME/bin/spark-class" ]; then
    echo "$SPARK_HOME"
    return
  fi
  "$py" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null ||
    die "cannot import pyspark with $py. Run 'make setup' (or set PYTHON / SPARK_HOME)."
}

# 0 when nothing listens on 127.0.0.1:$1 (binding is the only race-free-enough test here).
port_free() {
  "$py" - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# pick_port REQUESTED DEFAULT: the requested port (must be free), or DEFAULT when free, or any.
pick_port() {
  local requested="$1" default="$2"
  if [ -n "$requested" ] && [ "$requested" != 0 ]; then
    port_free "$requested" || die "port $requested on $host is in use (unset the variable to pick a free one)"
    echo "$requested"
  elif [ -z "$requested" ] && port_free "$default"; then
    echo "$default"
  else
    free_port
  fi
}

# is_ours PID CLASS: the PID is alive and is the JVM of that Spark daemon class.
is_ours() {
  local pid="$1" cls="$2"
  # grep reads the file itself: a pipe would turn an early grep exit into a pipefail error.
  [ -r "/proc/$pid/cmdline" ] && grep -qa -- "$cls" "/proc/$pid/cmdline" 2>/dev/null
}

stop_pid() {
  local pid="$1" cls="$2" name="$3" i
  if ! is_ours "$pid" "$cls"; then
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || return 0
  # A standalone daemon's shutdown hook stops its executors; give it a moment, then insist.
  for i in $(seq 1 100); do
    is_ours "$pid" "$cls" || {
      echo "stopped $name (pid $pid)"
      return 0
    }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  echo "killed $name (pid $pid): it did not stop within 10 s"
}

cmd_down() {
  local f pid name cls
  [ -d "$state_dir" ] || {
    echo "no cluster state in $state_dir"
    return 0
  }
  # Workers first, so the master does not log them as lost and try to reschedule.
  for f in "$state_dir"/worker-*.pid "$state_dir"/master.pid; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    name="$(basename "$f" .pid)"
    case "$name" in
      master) cls=org.apache.spark.deploy.master.Master ;;
      *) cls=org.apache.spark.deploy.worker.Worker ;;
    esac
    stop_pid "$pid" "$cls" "$name"
    rm -f "$f"
  done
  rm -f "$state_dir/master.url" "$state_dir/master.ui"
}

# Poll the master's /json endpoint (loopback) until $1 workers are ALIVE or time runs out.
wait_for_workers() {
  local ui_port="$1" want="$2"
  "$py" - "$ui_port" "$want" "$timeout_s" "$state_dir" <<'PY'
import json, os, sys, time, urllib.request

port, want, timeout, state_dir = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout
alive = 0
while time.monotonic() < deadline:
    # A daemon that died (bad port, no memory) will never register: fail now, not at the deadline.
    for name in os.listdir(state_dir):
        if name.endswith(".pid"):
            pid = int(open(os.path.join(state_dir, name)).read())
            if not os.path.exists(f"/proc/{pid}"):
                print(f"{name[:-4]} (pid {pid}) exited during start-up", file=sys.stderr)
                sys.exit(2)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=5) as r:
            info = json.load(r)
        alive = sum(1 for w in info.get("workers", []) if w.get("state") == "ALIVE")
        if alive >= want:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
print(f"only {alive} of {want} workers registered within {timeout:.0f} s", file=sys.stderr)
sys.exit(1)
PY
}

start_daemon() {
  local name="$1"
  shift
  # nohup and spark-class both exec, so $! is the java process itself.
  nohup "$SPARK_HOME/bin/spark-class" "$@" >"$state_dir/$name.log" 2>&1 </dev/null &
  echo $! >"$state_dir/$name.pid"
}

on_start_failure() {
  local rc=$?
  trap - EXIT INT TERM
  echo "cluster.sh: start-up failed; log tails follow, stopping what was started" >&2
  local log
  for log in "$state_dir"/*.log; do
    [ -f "$log" ] || continue
    echo "---- $log" >&2
    tail -n 15 "$log" >&2
  done
  cmd_down >&2
  exit $((rc == 0 ? 1 : rc))
}

cmd_up() {
  SPARK_HOME="$(spark_home)"
  export SPARK_HOME
  [ -x "$SPARK_HOME/bin/spark-class" ] || die "$SPARK_HOME/bin/spark-class not found"
  command -v java >/dev/null 2>&1 || [ -x "${JAVA_HOME:-/nonexistent}/bin/java" ] ||
    die "Java was not found; PySpark 4 needs Java 17 or 21 (see scripts/bootstrap.sh)"

  mkdir -p "$state_dir"
  local f
  for f in "$state_dir"/*.pid; do
    [ -f "$f" ] || continue
    if is_ours "$(cat "$f")" org.apache.spark.deploy; then
      die "a cluster from $state_dir is already running (scripts/cluster.sh down, or set MXNORM_CLUSTER_DIR)"
    fi
    rm -f "$f"
  done

  local master_port ui_port
  master_port="$(pick_port "${MXNORM_CLUSTER_PORT:-}" 7077)"
  ui_port="$(pick_port "${MXNORM_CLUSTER_UI_PORT:-}" 8080)"
  local url="spark://$host:$master_port"

  trap on_start_failure EXIT
  trap 'exit 130' INT TERM

  export SPARK_LOCAL_IP="$host"
  # Keep daemons' and executors' scratch files inside the state dir, away from other runs.
  export SPARK_LOCAL_DIRS="$state_dir/local"
  export SPARK_LOG_DIR="$state_dir"
  export SPARK_PID_DIR="$state_dir"
  mkdir -p "$SPARK_LOCAL_DIRS"

  start_daemon master org.apache.spark.deploy.master.Master \
    --host "$host" --port "$master_port" --webui-port "$ui_port"

  local i wport
  for i in $(seq 1 "$n_workers"); do
    wport="$(pick_port "" $((8080 + i)))"
    [ "$wport" != "$ui_port" ] || wport="$(free_port)"
    mkdir -p "$state_dir/work-$i"
    start_daemon "worker-$i" org.apache.spark.deploy.worker.Worker "$url" \
      --host "$host" --cores "$worker_cores" --memory "$worker_memory" \
      --webui-port "$wport" --work-dir "$state_dir/work-$i"
  done

  wait_for_workers "$ui_port" "$n_workers"
  trap - EXIT INT TERM

  echo "$url" >"$state_dir/master.url"
  echo "http://$host:$ui_port" >"$state_dir/master.ui"
  echo "master URL:  $url"
  echo "web UI:      http://$host:$ui_port"
  echo "workers:     $n_workers x ($worker_cores core, $worker_memory)"
  echo "state/logs:  $state_dir"
}

cmd_status() {
  local f any=1 name cls
  for f in "$state_dir"/master.pid "$state_dir"/worker-*.pid; do
    [ -f "$f" ] || continue
    name="$(basename "$f" .pid)"
    case "$name" in
      master) cls=org.apache.spark.deploy.master.Master ;;
      *) cls=org.apache.spark.deploy.worker.Worker ;;
    esac
    if is_ours "$(cat "$f")" "$cls"; then
      echo "$name: running (pid $(cat "$f"))"
      any=0
    else
      echo "$name: not running (stale pid $(cat "$f"))"
    fi
  done
  if [ "$any" = 0 ]; then
    echo "master URL:  $(cat "$state_dir/master.url" 2>/dev/null || echo '?')"
    echo "web UI:      $(cat "$state_dir/master.ui" 2>/dev/null || echo '?')"
  else
    echo "no cluster running from $state_dir"
  fi
  return "$any"
}

cmd_run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: scripts/cluster.sh run -- COMMAND [ARGS...]"
  cmd_up
  trap 'cmd_down' EXIT
  trap 'exit 130' INT TERM
  MXNORM_SPARK_MASTER="$(cat "$state_dir/master.url")"
  export MXNORM_SPARK_MASTER
  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

cmd_foreground() {
  cmd_up
  trap 'cmd_down' EXIT
  trap 'exit 130' INT TERM
  echo "press Ctrl-C to stop the cluster"
  # Return as soon as the master dies, too, rather than pretending it is up.
  while is_ours "$(cat "$state_dir/master.pid")" org.apache.spark.deploy.master.Master; do
    sleep 1
  done
  echo "the master exited; see $state_dir/master.log" >&2
  exit 1
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  run)
    shift
    cmd_run "$@"
    ;;
  foreground) cmd_foreground ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
