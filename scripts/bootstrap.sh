#!/usr/bin/env bash
# Set up .venv with the package and its extras; check Python and Java first.
# Usage: scripts/bootstrap.sh [extras]   (default extras: test,dev; `make run` uses spark,report)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,dev}"

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "error: $py not found. Install Python 3.10 or newer (e.g. apt-get install python3 python3-venv)." >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: Python 3.10+ is needed, $py is $("$py" -V 2>&1)." >&2
  exit 1
fi

java_bin="java"
[ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ] && java_bin="$JAVA_HOME/bin/java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  cat >&2 <<'MSG'
error: Java was not found. PySpark 4 needs Java 17 or 21.
  Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless
  macOS:         brew install openjdk@17
  or set JAVA_HOME to an existing JDK 17/21 installation.
MSG
  exit 1
fi
java_major=$("$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  echo "error: Java ${java_major:-?} found at $(command -v "$java_bin"); PySpark 4 needs Java 17 or 21." >&2
  echo "  Install openjdk-17 and point JAVA_HOME at it." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv"
  "$py" -m venv .venv
fi
# One stamp per installed extra and pyproject.toml version: `make run` (spark) after
# `make test` (test,dev) installs nothing, and a changed pyproject.toml installs again.
hash="$(sha256sum pyproject.toml | cut -c1-16)"
IFS=, read -ra wanted <<<"$extras"
missing=0
for extra in "${wanted[@]}"; do
  [ -f ".venv/.installed-$hash-$extra" ] || missing=1
done
if [ "$missing" = 1 ]; then
  echo ">> installing mxnorm-spark[$extras] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  for stamp in .venv/.installed-*; do
    case "$stamp" in .venv/.installed-"$hash"-*) ;; *) rm -f "$stamp" ;; esac
  done
  for extra in "${wanted[@]}"; do
    touch ".venv/.installed-$hash-$extra"
    # The test extra holds every package of the spark and report extras.
    if [ "$extra" = test ]; then
      touch ".venv/.installed-$hash-spark" ".venv/.installed-$hash-report"
    fi
  done
fi
