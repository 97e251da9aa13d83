"""The numpy core imports without pyspark: the serving path needs no JVM (ARCHITECTURE.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_mxnorm_spark_leaves_pyspark_out() -> None:
    proc = run(
        "import mxnorm_spark, sys; "
        "assert 'pyspark' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith('pyspark'))"
    )
    assert proc.returncode == 0, proc.stderr


def test_core_modules_import_when_pyspark_cannot() -> None:
    proc = run(
        "\n".join(
            [
                "import sys",
                "sys.modules['pyspark'] = None  # any import of pyspark now raises ImportError",
                "try:",
                "    import pyspark.sql",
                "except ImportError:",
                "    pass",
                "else:",
                "    raise SystemExit('the pyspark block did not hold')",
                "import numpy as np",
                "import mxnorm_spark",
                "import mxnorm_spark.core.moments",
                "import mxnorm_spark.core.state",
                "import mxnorm_spark.store",
                "from mxnorm_spark import Moments, MXNormState",
                "m = Moments.from_array(np.array([[1.0], [3.0]]))",
                "s = MXNormState.create(['x']).update(m)",
                "assert MXNormState.from_json(s.to_json()).mean.tolist() == [2.0]",
                "print('ok')",
            ]
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_command_line_starts_without_pyspark() -> None:
    """``mxnorm-spark report`` and ``inspect`` need no Spark: the CLI module imports without it."""
    proc = run(
        "import sys\n"
        "sys.modules['pyspark'] = None\n"
        "from mxnorm_spark.cli import commands as cli\n"
        "parser = cli.build_parser()\n"
        "print(sorted(parser._subparsers._group_actions[0].choices))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "'report'" in proc.stdout and "'export-keys'" in proc.stdout


def test_the_beam_engine_imports_when_pyspark_cannot() -> None:
    """``mxnorm_spark.beam`` runs where Beam runs: no pyspark on its workers."""
    proc = run(
        "import sys\n"
        "sys.modules['pyspark'] = None\n"
        "import mxnorm_spark.beam as mb\n"
        "assert 'pyspark' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
        "print(sorted(n for n in mb.__all__ if n.startswith('Fit')))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("['FitHistory', 'FitMXNorm', 'FitWindows']")


def test_feast_view_helper_imports_without_pyspark_or_feast() -> None:
    """What a Feast feature server imports to run the on-demand view: no Spark, no Feast."""
    proc = run(
        "\n".join(
            [
                "import sys",
                "sys.modules['pyspark'] = None",
                "sys.modules['feast'] = None",
                "import mxnorm_spark.feast",
                "from mxnorm_spark.feast.udf import normalize_inputs",
                "out = normalize_inputs({'x': [3.0], 'x__mean': [1.0], 'x__scale': [2.0]},",
                "                       (('x', 'z'),), False)",
                "assert out == {'z': [1.0]}, out",
                "print('ok')",
            ]
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("former", "canonical", "name"),
    [
        ("mxnorm_spark.state", "mxnorm_spark.core.state", "StateOptions"),
        ("mxnorm_spark.moments", "mxnorm_spark.core.moments", "Moments"),
        ("mxnorm_spark.errors", "mxnorm_spark.core.errors", "MXNormError"),
        ("mxnorm_spark.aggregate", "mxnorm_spark.batch.aggregate", "moments_by_batch"),
        ("mxnorm_spark.apply", "mxnorm_spark.batch.apply", "normalize"),
        ("mxnorm_spark.sources", "mxnorm_spark.streaming.sources", "FileSource"),
        ("mxnorm_spark.progress", "mxnorm_spark.streaming.progress", "BatchReport"),
        ("mxnorm_spark.session", "mxnorm_spark.cli.session", "build_session"),
        ("mxnorm_spark.config", "mxnorm_spark.cli.config", "load_config"),
        ("mxnorm_spark.demo", "mxnorm_spark.cli.demo", "write_demo_files"),
        ("mxnorm_spark.keyed_stream", "mxnorm_spark.streaming.keyed", "KeyOptions"),
        ("mxnorm_spark.ml_keyed", "mxnorm_spark.ml.keyed", "KeyedMXNormModel"),
        ("mxnorm_spark.streaming", "mxnorm_spark.streaming.updater", "MXNormStream"),
        ("mxnorm_spark.keyed", "mxnorm_spark.keyed.backfill", "fit_keyed"),
        ("mxnorm_spark.ml", "mxnorm_spark.ml.estimator", "MXNorm"),
        ("mxnorm_spark.serving", "mxnorm_spark.serving.loading", "load"),
    ],
)
def test_former_module_paths_still_import(former: str, canonical: str, name: str) -> None:
    # Code written against the flat layout (and the README's examples) goes on working.
    import importlib

    assert getattr(importlib.import_module(former), name) is getattr(
        importlib.import_module(canonical), name
    )
