"""The history and drift report of a state: what each batch did to it, and where it drifted.

A stream records every micro-batch, and ``mxnorm-spark fit`` every batch value, in the
per-batch history next to the state (:mod:`mxnorm_spark.store.history`). This module reads
it and turns it into

* drift events (:func:`drift_events`): a batch whose mean lies more than ``k`` state
  standard deviations from the state mean *before* that batch (the state after the
  previous recorded batch), ``z = |batch mean - mean before| / sd before``;
* a report (:func:`write_report`): ``.html`` is one self-contained page (a summary, the
  drift events, one chart per feature with the state mean +/- 1 sd and the batch means
  over the batches; the charts are embedded PNGs, nothing is fetched), ``.png`` just the
  charts, one figure with one panel per feature.

No Spark: pyarrow reads the history, matplotlib draws (the ``[report]`` extra).

>>> import tempfile
>>> from mxnorm_spark import Moments, MXNormState
>>> from mxnorm_spark.store.history import record_batch
>>> d, s = tempfile.mkdtemp(), MXNormState.create(["x"], alpha=0.5)
>>> for i, batch in enumerate([[0.0, 2.0], [0.5, 1.5], [9.0, 11.0]]):
...     m = Moments.from_array([[v] for v in batch])
...     s = s.update(m, batch_id=i)
...     _ = record_batch(d, i, rows=2, moments=m, state=s)
>>> [(e.batch_id, e.feature, round(e.z, 2)) for e in drift_events(load_history(d))]
[(2, 'x', 11.38)]
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mxnorm_spark.core.errors import (
    EmptyInputError,
    InvalidParameterError,
    MXNormError,
    StateNotFoundError,
)
from mxnorm_spark.store.filesystems import LocalFileSystem, filesystem, local_path
from mxnorm_spark.store.history import history_dir, read_records

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

    from mxnorm_spark.core.state import MXNormState

__all__ = [
    "DEFAULT_K",
    "REPORT_TYPES",
    "DriftEvent",
    "MissingExtraError",
    "drift_events",
    "load_history",
    "write_report",
]

DEFAULT_K = 3.0
REPORT_TYPES = (".html", ".png")
# Beyond this many rows the HTML table of drift events says how many it left out.
_MAX_TABLE_EVENTS = 1000


class MissingExtraError(ImportError, MXNormError):
    """A package of the ``[report]`` extra (matplotlib, pyarrow) is not installed."""


@dataclass(frozen=True)
class DriftEvent:
    """One batch mean more than ``k`` state standard deviations from the state before it."""

    batch_id: int
    batch_value: str | None
    feature: str
    batch_mean: float
    mean_before: float
    sd_before: float
    z: float

    def describe(self) -> str:
        """One line: which batch and feature, and how far its mean was from the state."""
        value = "" if self.batch_value is None else f" ({self.batch_value})"
        return (
            f"batch {self.batch_id}{value} {self.feature}: batch mean {self.batch_mean:.6g} is "
            f"{self.z:.2f} sd from the state mean {self.mean_before:.6g} "
            f"(sd {self.sd_before:.6g}) before it"
        )


@dataclass(frozen=True)
class _Series:
    """One feature's rows of a history, in batch order."""

    feature: str
    batch_id: np.ndarray
    batch_value: list[str | None]
    valid: np.ndarray
    batch_mean: np.ndarray
    state_mean: np.ndarray
    state_sd: np.ndarray


# ---- reading ------------------------------------------------------------------------------
def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        raise MissingExtraError(
            f"the history report needs {top}, which is not installed: "
            "install mxnorm-spark with its [report] extra (in a clone: pip install '.[report]')",
            name=top,
        ) from exc


def load_history(path: str, spark: SparkSession | None = None) -> Any:
    """The history of the state at ``path`` (a state directory, or a state file and its
    ``.history`` beside it) as a ``pyarrow.Table`` ordered by batch id.

    Raises :class:`~mxnorm_spark.core.errors.EmptyInputError` naming the place when there is
    no history there.
    """
    _require("pyarrow")
    fs = filesystem(path, spark)
    where = local_path(path) if isinstance(fs, LocalFileSystem) else path
    exists = fs.exists(where)
    state_file = (not fs.is_dir(where)) if exists else None
    table = read_records(fs, path, state_file=state_file)
    if table.num_rows:
        return table.sort_by([("batch_id", "ascending")])
    if not exists:
        raise EmptyInputError(f"{path}: no such state file or state directory")
    raise EmptyInputError(
        f"{path} has no history (nothing in {history_dir(path, state_file=state_file)}): "
        "a stream records one batch per micro-batch, and `mxnorm-spark fit` (one batch per "
        "--batch-col value) writes one beside its state file"
    )


def _series(table: Any) -> list[_Series]:
    cols = table.sort_by([("batch_id", "ascending")]).to_pydict()
    features = list(dict.fromkeys(cols["feature"]))
    out = []
    for name in features:
        idx = [i for i, f in enumerate(cols["feature"]) if f == name]

        def col(key: str, idx: list[int] = idx) -> np.ndarray:
            return np.array([np.nan if cols[key][i] is None else cols[key][i] for i in idx])

        var = col("state_var")
        out.append(
            _Series(
                feature=name,
                batch_id=np.array([cols["batch_id"][i] for i in idx], dtype=np.int64),
                batch_value=[cols["batch_value"][i] for i in idx],
                valid=np.nan_to_num(col("valid")),
                batch_mean=col("batch_mean"),
                state_mean=col("state_mean"),
                state_sd=np.sqrt(np.maximum(var, 0.0)),
            )
        )
    return out


def _check_k(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise InvalidParameterError(f"k (drift threshold in state sd) must be > 0, got {k!r}")
    return float(k)


def _events_of(s: _Series, k: float) -> list[DriftEvent]:
    events = []
    for i in range(1, len(s.batch_id)):
        mean, sd, m = s.state_mean[i - 1], s.state_sd[i - 1], s.batch_mean[i]
        if s.valid[i] <= 0 or not (math.isfinite(mean) and math.isfinite(sd) and math.isfinite(m)):
            continue
        diff = abs(m - mean)
        # A constant feature (sd 0) that moves is infinitely far off; one that stays is not.
        z = diff / sd if sd > 0 else (math.inf if diff > 0 else 0.0)
        if z > k:
            events.append(
                DriftEvent(int(s.batch_id[i]), s.batch_value[i], s.feature, m, mean, sd, float(z))
            )
    return events


def drift_events(table: Any, k: float = DEFAULT_K) -> list[DriftEvent]:
    """The drift events of a history table, by batch id then feature order.

    A batch is compared with the state after the previous recorded batch, so the first
    batch (and a feature's first batch with a state) has none. A batch in which the feature
    had no valid value has none.
    """
    k = _check_k(k)
    events = [e for s in _series(table) for e in _events_of(s, k)]
    order = {f: j for j, f in enumerate(dict.fromkeys(table.column("feature").to_pylist()))}
    return sorted(events, key=lambda e: (e.batch_id, order[e.feature]))


# ---- charts -------------------------------------------------------------------------------
def _draw(ax: Axes, s: _Series, events: Sequence[DriftEvent], k: float) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    x, mean, sd = s.batch_id, s.state_mean, s.state_sd
    ax.fill_between(x, mean - sd, mean + sd, color="C0", alpha=0.2, lw=0, label="state mean ± 1 sd")
    ax.plot(x, mean, color="C0", lw=1.6, label="state mean (after each batch)")
    seen = s.valid > 0
    ax.plot(x[seen], s.batch_mean[seen], "o", color="C1", ms=3.5, label="batch mean")
    if events:
        ax.plot(
            [e.batch_id for e in events],
            [e.batch_mean for e in events],
            "o",
            mfc="none",
            mec="C3",
            ms=10,
            mew=1.8,
            label=f"drift: > {k:g} sd from the state before",
        )
    ax.set_title(s.feature, loc="left", fontsize=11, fontweight="bold")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    labels = {int(b): v for b, v in zip(s.batch_id, s.batch_value, strict=True) if v is not None}
    if labels:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: labels.get(round(v), "")))
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel("batch value" if labels else "batch id")


def _figure(series: Sequence[_Series], events: Sequence[DriftEvent], k: float) -> Figure:
    _require("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 0.7 + 2.8 * len(series)), layout="constrained")
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    for ax, s in zip(axes, series, strict=True):
        _draw(ax, s, [e for e in events if e.feature == s.feature], k)
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(
        list(handles.values()), list(handles), loc="outside upper center", ncol=4, fontsize=9
    )
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ---- the report ---------------------------------------------------------------------------
def _report_type(out: str) -> str:
    suffix = "." + out.rsplit(".", 1)[-1].lower() if "." in out.rsplit("/", 1)[-1] else ""
    if suffix not in REPORT_TYPES:
        raise InvalidParameterError(
            f"report file {out}: unknown type {suffix or '(no extension)'!r}; use .html for "
            "one self-contained page or .png for just the charts"
        )
    return suffix


def _newest_state(path: str, spark: SparkSession | None) -> MXNormState | None:
    """The state beside the history, None if there is none; a damaged one is an error, as
    in every other reader of a state."""
    from mxnorm_spark.store.states import read_state

    try:
        return read_state(path, spark)
    except StateNotFoundError:
        return None


def write_report(
    path: str, out: str, k: float = DEFAULT_K, spark: SparkSession | None = None
) -> list[DriftEvent]:
    """Write the report of the state at ``path`` to ``out`` (``.html`` or ``.png``) and
    return its drift events."""
    kind = _report_type(out)
    k = _check_k(k)
    table = load_history(path, spark)
    state = _newest_state(path, spark)
    series = _series(table)
    events = drift_events(table, k)
    _require("matplotlib")
    if kind == ".png":
        data = _png(_figure(series, events, k))
    else:
        data = _html(path, table, series, events, k=k, state=state).encode("utf-8")
    fs = filesystem(out, spark)
    target = local_path(out) if isinstance(fs, LocalFileSystem) else out
    parent = target.rstrip("/").rpartition("/")[0]
    if parent:
        fs.mkdirs(parent)
    fs.write_atomic(target, data)
    return events


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { font-weight: 600; color: #555; }
img { max-width: 100%; height: auto; }
"""


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


def _rows(rows: Sequence[Sequence[Any]], head: Sequence[str] | None = None) -> str:
    def cell(v: Any, tag: str) -> str:
        if isinstance(v, (float, np.floating)):
            return f'<{tag} class="num">{_num(float(v))}</{tag}>'
        if isinstance(v, (int, np.integer)):
            return f'<{tag} class="num">{v}</{tag}>'
        return f"<{tag}>{html.escape('' if v is None else str(v))}</{tag}>"

    lines = []
    if head:
        lines.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
    lines += ["<tr>" + "".join(cell(v, "td") for v in r) + "</tr>" for r in rows]
    return "\n".join(lines)


def _summary(path: str, table: Any, k: float, state: MXNormState | None) -> list[tuple[str, Any]]:
    cols = table.to_pydict()
    ids = sorted(set(cols["batch_id"]))
    per_batch = {
        b: (v, r)
        for b, v, r in zip(cols["batch_id"], cols["batch_value"], cols["rows"], strict=True)
    }
    values = [per_batch[b][0] for b in ids if per_batch[b][0] is not None]
    times = [t for t in cols["committed_at"] if t is not None]
    rows: list[tuple[str, Any]] = [
        ("state", path),
        ("batches", f"{len(ids)} (batch ids {ids[0]} .. {ids[-1]})"),
        ("rows", f"{sum(r or 0 for _, r in per_batch.values()):,}"),
        ("features", ", ".join(dict.fromkeys(cols["feature"]))),
    ]
    if values:
        rows.append(("batch values", f"{values[0]} .. {values[-1]}"))
    if times:
        rows.append(
            ("committed", f"{min(times):%Y-%m-%d %H:%M:%S} .. {max(times):%Y-%m-%d %H:%M:%S} UTC")
        )
    if state is not None:
        opts = ", ".join(f"{n}={v!r}" for n, v in state.options.to_dict().items())
        rows.append(("options", opts))
    rows.append(("drift rule", f"|batch mean - state mean before| > {k:g} x state sd before"))
    return rows


_EVENT_HEAD = (
    "batch id",
    "batch value",
    "feature",
    "batch mean",
    "state mean before",
    "state sd before",
    "z",
)
_FEATURE_HEAD = ("feature", "batches with values", "drift events", "state mean", "state sd")


def _events_html(events: Sequence[DriftEvent], k: float) -> str:
    if not events:
        return f"<p>No batch mean was more than {k:g} state sd from the state before it.</p>"
    shown = events[:_MAX_TABLE_EVENTS]
    rows = [
        (e.batch_id, e.batch_value, e.feature, e.batch_mean, e.mean_before, e.sd_before, e.z)
        for e in shown
    ]
    more = len(events) - len(shown)
    note = f"\n<p>and {more} more</p>" if more else ""
    return f'<table class="events">\n{_rows(rows, _EVENT_HEAD)}\n</table>{note}'


def _features_html(series: Sequence[_Series], events: Sequence[DriftEvent], k: float) -> str:
    rows = [
        (
            s.feature,
            int((s.valid > 0).sum()),
            sum(e.feature == s.feature for e in events),
            s.state_mean[-1],
            s.state_sd[-1],
        )
        for s in series
    ]
    parts = [f'<table class="features">\n{_rows(rows, _FEATURE_HEAD)}\n</table>']
    for s in series:
        png = base64.b64encode(_png(_figure([s], events, k))).decode("ascii")
        alt = html.escape(f"{s.feature}: state mean ± 1 sd and batch means over the batches")
        parts.append(f"<h3>{html.escape(s.feature)}</h3>")
        parts.append(f'<img src="data:image/png;base64,{png}" alt="{alt}">')
    return "\n".join(parts)


def _html(
    path: str,
    table: Any,
    series: Sequence[_Series],
    events: Sequence[DriftEvent],
    *,
    k: float,
    state: MXNormState | None,
) -> str:
    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "\n".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
            f"<title>MXNorm history: {html.escape(path)}</title>\n<style>{_STYLE}</style>",
            "</head>\n<body>\n<h1>MXNorm state history and drift</h1>",
            f'<table class="summary">\n{_rows(_summary(path, table, k, state))}\n</table>',
            f"<h2>Drift events ({len(events)})</h2>\n{_events_html(events, k)}",
            f"<h2>Features</h2>\n{_features_html(series, events, k)}",
            f"<p><small>written {made} by mxnorm-spark report</small></p>\n</body>\n</html>\n",
        ]
    )
