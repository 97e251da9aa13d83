#!/usr/bin/env bash
# Build what spark-submit ships to executors that do not have mxnorm_spark installed.
#
#   scripts/package.sh            dist/mxnorm_spark-<version>.zip    for --py-files
#                                 dist/mxnorm_spark-<version>-py3-none-any.whl  for pip
#   scripts/package.sh --zip      only the zip (no build backend needed, no network)
#   scripts/package.sh --venv     also dist/mxnorm_spark-env-<version>.tar.gz: a venv-pack'ed
#                                 environment (the wheel + numpy/pandas/pyarrow at the driver's
#                                 versions) for spark.archives
#
# Environment: PYTHON (default .venv/bin/python, else python3), DIST (default dist).
# Prints the absolute path of every artifact it wrote, one per line, last.
#
# Why a zip and a wheel: PySpark puts --py-files entries ending in .zip/.egg/.jar on the
# executors' sys.path and silently ignores other names, so a .whl given to --py-files reaches
# the driver but not the executors. The wheel is for `pip install` on the nodes or into a
# packed environment.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
dist="${DIST:-dist}"
mkdir -p "$dist"
dist="$(cd "$dist" && pwd)"

want_wheel=1
want_venv=0
for arg in "$@"; do
  case "$arg" in
    --zip) want_wheel=0 ;;
    --venv) want_venv=1 ;;
    -h | --help)
      sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "package.sh: unknown option '$arg' (valid: --zip, --venv, --help)" >&2
      exit 2
      ;;
  esac
done

version="$("$py" -c 'import re,sys; print(re.search(r"^__version__ = \"(.+)\"", open("mxnorm_spark/_version.py").read(), re.M).group(1))')"
written=()

# The zip is written by Python, not `zip`: sorted entries, fixed timestamps and no
# __pycache__, so the same sources always give the same bytes (and the same checksum).
zip_path="$dist/mxnorm_spark-$version.zip"
"$py" - "$zip_path" <<'PY'
import pathlib, sys, zipfile

out = pathlib.Path(sys.argv[1])
tmp = out.with_suffix(".zip.tmp")
files = sorted(
    p for p in pathlib.Path("mxnorm_spark").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".typed", ".json"}
)
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for p in files:
        info = zipfile.ZipInfo(p.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, p.read_bytes())
tmp.replace(out)
PY
written+=("$zip_path")

if [ "$want_wheel" = 1 ] || [ "$want_venv" = 1 ]; then
  whl_path="$dist/mxnorm_spark-$version-py3-none-any.whl"
  rm -f "$whl_path"
  # Build isolation fetches the build backend named in pyproject.toml from the package index.
  # Its output (deprecation notices from the backend) is kept in a log, shown on failure.
  log="$root/build/package-wheel.log"
  # setuptools reuses build/lib and never removes what is gone from the sources: a module
  # moved since the last build would still be in the wheel.
  rm -rf "$root/build/lib" "$root"/build/bdist.*
  mkdir -p "$root/build"
  # With the backend installed already (the [test] extra has it), build without isolation:
  # nothing is fetched.
  isolation=()
  if "$py" -c 'import sys, setuptools, wheel; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
    isolation=(--no-build-isolation)
  fi
  "$py" -m pip wheel -q --no-deps ${isolation[@]+"${isolation[@]}"} -w "$dist" . >"$log" 2>&1 ||
    {
      cat "$log" >&2
      echo "package.sh: 'pip wheel' failed (it needs setuptools>=77, installed or from the package index);" >&2
      echo "  the zip for --py-files is built: $zip_path" >&2
      exit 1
    }
  [ -f "$whl_path" ] || {
    echo "package.sh: expected $whl_path after 'pip wheel'" >&2
    exit 1
  }
  written+=("$whl_path")
fi

if [ "$want_venv" = 1 ]; then
  env_dir="$root/build/pack-venv"
  env_path="$dist/mxnorm_spark-env-$version.tar.gz"
  # Pin the executors' numpy/pandas/pyarrow to the driver's: Arrow batches and pickled numpy
  # arrays cross between them, and the same versions keep the arithmetic the same.
  pins="$("$py" -c 'import numpy, pandas, pyarrow; print(f"numpy=={numpy.__version__} pandas=={pandas.__version__} pyarrow=={pyarrow.__version__}")')"
  rm -rf "$env_dir"
  "$py" -m venv "$env_dir"
  # pyspark itself is left out on purpose: executors import it from the Spark installation
  # ($SPARK_HOME/python/lib/pyspark.zip), which must match the cluster's Spark version anyway.
  # shellcheck disable=SC2086
  "$env_dir/bin/python" -m pip install -q $pins >&2
  "$env_dir/bin/python" -m pip install -q --no-deps "$whl_path" >&2
  tools="$root/build/pack-tools"
  "$py" -m pip install -q --upgrade --target "$tools" "venv-pack>=0.2" >&2
  rm -f "$env_path"
  PYTHONPATH="$tools" "$py" -m venv_pack -q -p "$env_dir" -o "$env_path" >&2
  written+=("$env_path")
fi

printf '%s\n' "${written[@]}"
