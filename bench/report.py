"""Turn the raw results of a run (``results.json``) into ``RESULTS.md`` and ``results.png``.

Pure functions of the results dict, so the report can be rewritten from a saved
``results.json`` without rerunning anything: ``python -m bench.report bench/results.json``.

Ratios are taken pair by pair: repetition i of a case against repetition i of the
baseline, both from the same run, and the median of those ratios is reported (with the
min-max across pairs). ``x MLlib`` is a throughput ratio (> 1: faster than MLlib);
``/ SQL`` is a time ratio (< 1: faster than hand-written SQL).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import targets
from bench.cases import LABELS, SINKS

CASE_ORDER = ["mxnorm-auto", "mxnorm-sql", "mxnorm-arrow", "sql", "mllib", "numpy"]

# The input of the README's short table.
README_DATASET = "wide16"


@dataclass(frozen=True)
class Stat:
    median: float
    lo: float
    hi: float


def stat(values: Sequence[float]) -> Stat | None:
    return Stat(statistics.median(values), min(values), max(values)) if values else None


def paired(num: Sequence[float], den: Sequence[float]) -> Stat | None:
    """Median (min-max) of ``num[i] / den[i]`` over the repetitions both have."""
    return stat([a / b for a, b in zip(num, den, strict=False) if b > 0])


def _entry(results: dict[str, Any], case: str, dataset: str) -> dict[str, Any] | None:
    for r in results.get("batch", []):
        if r["case"] == case and r["dataset"] == dataset:
            return dict(r)
    return None


def _fmt_s(s: Stat | None) -> str:
    return "-" if s is None else f"{s.median:.2f}"


def _fmt_range(s: Stat | None) -> str:
    return "-" if s is None else f"{s.lo:.2f}-{s.hi:.2f}"


def _fmt_ratio(s: Stat | None, unit: str) -> str:
    return "-" if s is None else f"{s.median:.2f}{unit} ({s.lo:.2f}-{s.hi:.2f})"


def _per_s(r: float) -> str:
    if r >= 1e6:
        return f"{r / 1e6:.3g}M"
    return f"{r / 1e3:.3g}k" if r >= 1e3 else f"{r:.3g}"


def _rate(rows: int, s: Stat | None) -> str:
    return "-" if s is None or s.median <= 0 else _per_s(rows / s.median)


def datasets(results: dict[str, Any]) -> list[dict[str, Any]]:
    return list(results.get("datasets", []))


def batch_rows(results: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    """One row per (case, sink) with the statistics the tables and the chart show."""
    rows = []
    ds = next(d for d in datasets(results) if d["name"] == dataset)
    for case in CASE_ORDER:
        entry = _entry(results, case, dataset)
        if entry is None:
            continue
        for sink in SINKS:
            times = targets.times(results, case, dataset, sink)
            rows.append(
                {
                    "case": case,
                    "sink": sink,
                    "rows": ds["rows"],
                    "time": stat(times),
                    "vs_mllib": paired(targets.times(results, "mllib", dataset, sink), times),
                    "vs_sql": paired(times, targets.times(results, "sql", dataset, sink)),
                    "peak": entry.get("sinks", {}).get(sink, {}).get("peak_mib", {}),
                    "check": entry.get("check", "-"),
                    "error": entry.get("error"),
                }
            )
    return rows


def _peak(p: dict[str, float]) -> str:
    if not p:
        return "-"
    return f"{p['driver']:.0f} / {p['jvm']:.0f} / {p['workers']:.0f}"


def batch_table(results: dict[str, Any], dataset: str) -> list[str]:
    out = [
        "| case | sink | median s | min-max s | rows/s | x MLlib throughput "
        "| time / SQL | peak MiB driver / JVM / py workers | output |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in batch_rows(results, dataset):
        if r["error"]:
            if r["sink"] == SINKS[0]:
                out.append(f"| {r['case']} | all | failed: {r['error']} | | | | | | |")
            continue
        out.append(
            f"| {r['case']} | {r['sink']} | {_fmt_s(r['time'])} | {_fmt_range(r['time'])} "
            f"| {_rate(r['rows'], r['time'])} | {_fmt_ratio(r['vs_mllib'], 'x')} "
            f"| {_fmt_ratio(r['vs_sql'], 'x')} | {_peak(r['peak'])} | {r['check']} |"
        )
    return out


def stream_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per implementation: latency stats per batch size and the throughput run."""
    summary: dict[str, Any] = {}
    for r in results.get("streaming", []):
        impl = r["impl"]
        if "error" in r:
            summary[impl] = {"error": r["error"]}
            continue
        lat = {size: stat(v["timed_ms"]) for size, v in r["latency"].items()}
        summary[impl] = {
            "latency": lat,
            "throughput": r.get("throughput"),
            "peak": r.get("peak_mib"),
        }
    return summary


def _stream_rows(results: dict[str, Any]) -> str:
    for r in results.get("streaming", []):
        tp = r.get("throughput")
        if tp:
            return f"{tp['rows']:,}-row ({tp.get('batches', '?')} micro-batches)"
    return "whole"


def stream_table(results: dict[str, Any]) -> list[str]:
    s = stream_summary(results)
    if not s:
        return ["(streaming not run)"]
    sizes = sorted({size for v in s.values() for size in v.get("latency", {})}, key=int)
    out = [
        "| implementation | "
        + " | ".join(f"{int(z):,}-row batch: median ms (min-max)" for z in sizes)
        + f" | {_stream_rows(results)} stream: rows/s (wall s)"
        + " | peak MiB driver / JVM / py workers |",
        "|---|" + "---:|" * len(sizes) + "---:|---:|",
    ]
    for impl in ("mxnorm", "plain"):
        v = s.get(impl)
        if v is None:
            continue
        if "error" in v:
            out.append(f"| {impl} | failed: {v['error']} |" + " |" * (len(sizes) + 1))
            continue
        cells = []
        for z in sizes:
            st = v["latency"].get(z)
            cells.append("-" if st is None else f"{st.median:.0f} ({st.lo:.0f}-{st.hi:.0f})")
        tp = v.get("throughput") or {}
        tp_cell = f"{_per_s(tp['rows'] / tp['wall_s'])} ({tp['wall_s']:.1f} s)" if tp else "-"
        out.append(
            f"| {impl} | " + " | ".join(cells) + f" | {tp_cell} | {_peak(v.get('peak') or {})} |"
        )
    return out


def _load(avg: Sequence[float] | None) -> str:
    return "-" if not avg else " / ".join(f"{x:.2f}" for x in avg)


def sections_table(results: dict[str, Any]) -> list[str]:
    """Wall time and load average (1 / 5 / 15 min) before and after each section."""
    if not results.get("sections"):
        return []
    out = [
        "| section | wall s | load avg before (1 / 5 / 15 min) | load avg after |",
        "|---|---:|---:|---:|",
    ]
    for sec in results.get("sections", []):
        out.append(
            f"| {sec['name']} | {sec['wall_s']:.0f} | {_load(sec.get('load_before'))} "
            f"| {_load(sec.get('load_after'))} |"
        )
    return out


def backfill_table(results: dict[str, Any]) -> list[str]:
    bf = results.get("backfill")
    if not bf:
        return ["(backfill not run)"]
    if "error" in bf:
        return [f"failed: {bf['error']}"]
    out = [
        "| batch values | fit s, median (min-max) | fit CPU s, median (min-max) | batches seen |",
        "|---:|---:|---:|---:|",
    ]
    for key, v in sorted(bf["values"].items(), key=lambda kv: int(kv[0])):
        wall, cpu = stat(v["fit_s"]), stat(v["fit_cpu_s"])
        out.append(
            f"| {int(key):,} | {_fmt_s(wall)} ({_fmt_range(wall)}) "
            f"| {_fmt_s(cpu)} ({_fmt_range(cpu)}) | {v.get('batches', '-')} |"
        )
    out += [
        "",
        f"{bf.get('rows', 0):,} rows x 8 doubles, {bf.get('partitions', '?')} partitions; peak "
        f"RSS driver {bf.get('peak_driver_mib', 0):.0f} MiB, JVM {bf.get('peak_jvm_mib', 0):.0f} "
        "MiB.",
    ]
    return out


def dataset_heading(ds: dict[str, Any]) -> str:
    shape = (
        f"{ds['rows']:,} rows, one array<double> column of dimension {ds['features']}"
        if ds["vector"]
        else f"{ds['rows']:,} rows x {ds['features']} double columns"
    )
    return f"## {ds['name']}: {shape}"


SECTION_TITLES = {
    "core": "No Spark: the numpy core against the seed loop, and the keyed serving lookup",
    "vec64-udt": "vec64 as a VectorUDT column",
    "keyed-stream": "Keyed stream",
}


def section_markdown(results: dict[str, Any], name: str) -> list[str]:
    """One section's table and target verdicts: what the run prints as it finishes it."""
    ds = next((d for d in datasets(results) if d["name"] == name), None)
    if ds is not None:
        lines = [dataset_heading(ds), "", *batch_table(results, name)]
    elif name == "streaming":
        lines = ["## Streaming", "", *stream_table(results)]
    elif name == "backfill":
        lines = ["## Backfill", "", *backfill_table(results)]
    else:
        lines = [f"## {SECTION_TITLES.get(name, name)}"]
    found = [v for v in targets.verdicts(results) if v.section == name]
    if found:
        lines += ["", *targets.table(found)]
    return lines


def load_sentence(results: dict[str, Any]) -> str:
    """The load the figures were taken under, and a warning when others shared the machine."""
    meta = results["meta"]
    cores = meta["machine"]["cores"]
    peak = max(
        [meta["load_start"], meta["load_end"]]
        + [sec[k][0] for sec in results.get("sections", []) for k in ("load_before", "load_after")]
    )
    text = (
        f"Load average (1 min): {meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at "
        f"the end, at most {peak:.2f} between sections, on {cores} cores."
    )
    # The run itself keeps about `cores` runnable (local[cores]); beyond one more, it shared.
    if peak > cores + 1:
        text += " **Other work shared the machine: the figures are noisy.**"
    return text


def render_markdown(results: dict[str, Any], chart: str | None = "results.png") -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"Run on {meta['date']} at commit {meta['versions'].get('commit', 'unknown')} with "
        f"`{meta['command']}` ({meta['mode']} mode, {meta['reps']} timed repetitions after a "
        f"warm-up, {meta['wall_s']:.0f} s in all).",
    ]
    if not meta.get("complete", True):
        lines += ["", "**Partial run: interrupted before every section had run.**"]
    if meta.get("note"):
        lines += ["", meta["note"]]
    lines += [
        "",
        "## Targets",
        "",
        "Each figure is a ratio (or, for 1k-row micro-batches, a difference) of two "
        "measurements of this run; `ours` is `MXNorm(...).fit(df).transform(df)`, engine auto. "
        + load_sentence(results),
        "",
        *targets.table(targets.verdicts(results)),
        "",
        "## Machine and load",
        "",
        f"- {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gib']:.0f} GiB RAM, {meta['machine']['os']}",
        f"- load average (1 min) at start {meta['load_start']:.2f}, at end {meta['load_end']:.2f} "
        "(above the core count means other work shared the machine: treat figures as noisy)",
        "- " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "- Spark settings, the same for every Spark case: "
        + ", ".join(f"`{k}={v}`" for k, v in meta["spark_conf"].items()),
    ]
    if results.get("sections"):
        lines += ["", *sections_table(results)]
    if chart:
        lines += ["", f"![median end-to-end time per case]({chart})"]
    for ds in datasets(results):
        lines += ["", dataset_heading(ds), "", *batch_table(results, ds["name"])]
    lines += ["", "## Streaming", "", *stream_table(results)]
    if results.get("streaming"):
        lines += ["", meta.get("streaming_note", "")]
    if results.get("backfill"):
        lines += [
            "",
            "## Backfill",
            "",
            *backfill_table(results),
            "",
            meta.get("backfill_note", ""),
        ]
    lines += ["", "## How it is measured", "", *meta.get("method", [])]
    return "\n".join(lines).rstrip() + "\n"


def render_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dss = datasets(results)
    panels = len(dss) + (1 if results.get("streaming") else 0)
    ncols = 2 if panels > 2 else max(panels, 1)
    nrows = -(-max(panels, 1) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 4.2 * nrows), squeeze=False)
    flat = list(grid.flat)
    for extra in flat[panels:]:
        extra.set_visible(False)
    axes = [flat]
    colors = {"noop": "#4c72b0", "parquet": "#dd8452"}
    for ax, ds in zip(axes[0], dss, strict=False):
        rows = [r for r in batch_rows(results, ds["name"]) if r["time"] is not None]
        cases = [c for c in CASE_ORDER if any(r["case"] == c for r in rows)]
        width = 0.4
        for k, sink in enumerate(SINKS):
            xs, ys, lo, hi = [], [], [], []
            for i, c in enumerate(cases):
                r = next((r for r in rows if r["case"] == c and r["sink"] == sink), None)
                if r is None:
                    continue
                t = r["time"]
                xs.append(i + (k - 0.5) * width)
                ys.append(t.median)
                lo.append(t.median - t.lo)
                hi.append(t.hi - t.median)
            ax.bar(
                xs, ys, width, yerr=[lo, hi], capsize=2, color=colors[sink], label=f"{sink} sink"
            )
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("seconds, end to end (median, min-max)")
        ax.set_title(f"{ds['name']} ({ds['rows'] / 1e6:g}M rows x {ds['features']})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    if results.get("streaming"):
        ax = axes[0][len(dss)]
        s = stream_summary(results)
        impls = [i for i in ("mxnorm", "plain") if "latency" in s.get(i, {})]
        sizes = sorted({z for i in impls for z in s[i]["latency"]}, key=int)
        width = 0.8 / max(len(impls), 1)
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, z in enumerate(sizes):
                st = s[impl]["latency"].get(z)
                if st is not None:
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(st.median / 1000)
            label = "mxnorm stream" if impl == "mxnorm" else "plain foreachBatch (write only)"
            ax.bar(xs, ys, width, label=label, color=["#55a868", "#8172b3"][k % 2])
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([f"{int(z):,} rows" for z in sizes], fontsize=8)
        ax.set_ylabel("seconds per micro-batch (median)")
        ax.set_title("streaming latency", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"mxnorm_spark benchmarks, local[2], {results['meta']['date']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_table(results: dict[str, Any]) -> list[str]:
    """The README's tables: the targets with their verdicts, then wide16 case by case."""
    out = [*targets.table(targets.verdicts(results)), ""]
    ds = next((d for d in datasets(results) if d["name"] == README_DATASET), None)
    if ds is None:
        return out
    out += [
        f"| case ({ds['rows']:,} rows x {ds['features']} doubles) | noop sink s | Parquet sink s "
        "| x MLlib throughput (noop) | time / SQL (noop) |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = batch_rows(results, README_DATASET)
    for case in CASE_ORDER:
        noop = next((r for r in rows if r["case"] == case and r["sink"] == "noop"), None)
        pq_ = next((r for r in rows if r["case"] == case and r["sink"] == "parquet"), None)
        if noop is None or noop["error"]:
            continue
        out.append(
            f"| {LABELS[case]} | {_fmt_s(noop['time'])} | {_fmt_s(pq_['time'] if pq_ else None)} "
            f"| {_fmt_ratio(noop['vs_mllib'], 'x').split(' ')[0]} "
            f"| {_fmt_ratio(noop['vs_sql'], 'x').split(' ')[0]} |"
        )
    return out


def write_report(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``RESULTS.md`` and ``results.png`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "results.png"
    render_chart(results, png)
    md = out_dir / "RESULTS.md"
    md.write_text(render_markdown(results, chart=png.name))
    return md, png


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs done one after the other (e.g. a rerun of the cases that failed).

    Later runs win for the same (case, dataset), for streaming and for the backfill; the
    metadata is the first run's, with the wall time summed and the last run's end load; the
    sections of every run are listed.
    """
    meta = dict(parts[0]["meta"])
    meta["wall_s"] = sum(p["meta"]["wall_s"] for p in parts)
    meta["load_end"] = parts[-1]["meta"]["load_end"]
    meta["complete"] = all(p["meta"].get("complete", True) for p in parts)
    meta["command"] = " ; ".join(dict.fromkeys(p["meta"]["command"] for p in parts))
    datasets_: dict[str, Any] = {}
    batch: dict[tuple[str, str], Any] = {}
    streaming: list[Any] = []
    backfill: dict[str, Any] | None = None
    for p in parts:
        datasets_.update({d["name"]: d for d in p.get("datasets", [])})
        batch.update({(r["case"], r["dataset"]): r for r in p.get("batch", [])})
        streaming = p.get("streaming") or streaming
        backfill = p.get("backfill") or backfill
    return {
        "meta": meta,
        "datasets": list(datasets_.values()),
        "batch": list(batch.values()),
        "streaming": streaming,
        "backfill": backfill,
        "sections": [sec for p in parts for sec in p.get("sections", [])],
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report [RESULTS.json]`` or ``--merge OUT.json A.json B.json ...``."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--merge":
        src = Path(args[1])
        results = merge([json.loads(Path(a).read_text()) for a in args[2:]])
        src.write_text(json.dumps(results, indent=1))
    else:
        src = Path(args[0] if args else Path(__file__).parent / "results.json")
        results = json.loads(src.read_text())
    md, png = write_report(results, src.parent)
    print(f"wrote {md} and {png}")
    print("\n".join(readme_table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
