"""Render a results JSON (from ``run.py``) as Markdown tables and PNG bar charts.

    python benchmarks/report.py benchmarks/results/<stamp>.json          # latest.md + PNGs
    python benchmarks/report.py benchmarks/results/<stamp>.json --docs   # + docs/benchmarks.md

``run.py`` calls ``render`` itself after every run; this entry point re-renders an older
run (or the docs page) without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCS_PAGE = HERE.parent / "docs" / "benchmarks.md"

#: Two lines per workload (what runs; what gilfree must reach), from workloads.md.
DESCRIPTIONS = {
    "W1": "200 items whose node blocks in `time.sleep(0.010)` (a network call). Limit ~10 ms "
          "(all at once).\nBar: `ThreadEngine()` with no tuning, warm <= 13 ms, cold <= 25 ms; "
          "`AutoEngine()` warm within 1.15x of `ThreadEngine()` warm.",
    "W2": "200 items of `await asyncio.sleep(0.010)`. Limit ~10 ms.\n"
          "Bar: `AsyncEngine()` <= 13 ms; `AutoEngine()` warm within 1.15x of it.",
    "W2b": "20,000 trivial `async def` items: the per-item cost of async dispatch.\n"
           "Bar: `AsyncEngine()` <= 10 us/item (asyncio.gather: ~16 us).",
    "W3": "400 items of ~4 ms pure-Python arithmetic (GIL-bound). Limit: loop time / cores.\n"
          "Bar: `ProcessEngine()` >= 0.97 x cores warm, >= 0.92 x cores cold; "
          "`AutoEngine()` warm within 1.15x of `ProcessEngine()` warm.",
    "W4": "20,000 items of `x + 1`: what the engine itself costs per item. Limit: a Python call.\n"
          "Bar per item: SeqEngine <= 2 us, ThreadEngine <= 3 us, ProcessEngine <= 2 us; "
          "AutoEngine within 1.5x of SeqEngine.",
    "W5": "10,000 items through a model whose `__init__` takes 50 ms and whose call is ~0.06 ms "
          "of pure Python.\nBar: `ProcessEngine()` with `@stateful` >= 1.85x the loop on 2 "
          "cores, one init per worker; `AutoEngine()` warm within 1.15x of it.",
    "W6": "200 passages through a DualNode encoder: singular 10 ms/call, batch 10 ms + "
          "0.05 ms/item.\nBar: `pipeline.map` with automatic batch size <= 15 ms; "
          "`AutoEngine()` warm within 1.15x of `ThreadEngine()` warm.",
    "W7": "1,000 items each returning a 1 MiB float64 numpy array from a worker process.\n"
          "Bar: `ProcessEngine()` >= 2x the best peer's throughput; the in-process floor "
          "beside it.",
    "W8": "500 items through fetch (10 ms I/O) -> parse (2 ms pure Python) -> encode "
          "(DualNode as W6). Limit ~0.5 s.\nBar: with executor hints (fetch on threads, "
          "parse on processes) honoured in one map, <= 1.10x the hand-tuned stage-wise "
          "peer (the `hinted` rows); streaming (`imap`, the `hinted, streaming` rows) "
          "<= 0.95x that peer and <= 1.15x the parse-bound limit row (parse loop / cores, "
          "same run); with no configuration (`AutoEngine()`, warm), <= 1.00x that peer.",
    "W9": "1,000,000 items from a generator through an I/O stage (2 ms `time.sleep`, "
          "`executor=\"thread\"`) and a CPU stage (~11 us pure Python, "
          "`executor=\"process\"`), results consumed as they come; each call in a fresh "
          "interpreter (peak driver RSS above its pre-call baseline, from the kernel's "
          "VmHWM, in each row's note).\nBar: `ThreadEngine()` `imap` over the generator: "
          "peak driver RSS <= 150 MiB above baseline, throughput >= 1/1.2 of `map` on the "
          "materialised list.",
    **{wid: f"An outer map over {shape} tasks x samples whose nested pipeline maps over its "
               "samples (~2 ms of pure Python each).\nBar: `ProcessEngine()` and `AutoEngine()` "
               ">= 1.85x the sequential loop on 2 cores (warm)."
       for wid, shape in (("W10a", "1 x 400"), ("W10b", "3 x 134"), ("W10c", "400 x 5"))},
}
EXPECTED = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10a", "W10b", "W10c")
ENGINES = ("SeqEngine", "ThreadEngine", "AsyncEngine", "ProcessEngine", "AutoEngine",
           "DaskEngine")
COLORS = {"gilfree": "#1f77b4", "peer": "#8c8c8c", "baseline": "#d62728",
          "hypernodes": "#ff7f0e"}

NOTES = """\
How to read the tables:

- **median / min / p95**: wall time of one call over the timed rounds (rounds are
  interleaved across candidates in a new random order each round, after one untimed
  warm-up call for warm rows; each call waits for an idle machine first, and rows whose
  engine keeps a dask cluster in the driver are measured apart from the others).
  Per-item workloads show microseconds per item.
- **vs loop**: the sequential loop's median / this median (higher is faster).
  **vs best peer**: the fastest peer's median / this median (> 1: faster than every peer).
- **[warm]** reuses a pool or engine that already ran once (a notebook re-running a
  cell); **[cold]** builds it inside the timed call. **start-up** = cold median minus
  warm median of the same candidate.
- **CPU avg / peak**: cores busy (CPU seconds of the driver and all its child processes
  per wall second, from the kernel's 10 ms ticks), over the call and over its busiest
  window of at least 50 ms. **RSS driver / worker**: peak resident memory of the driver
  and of the largest worker process (`xN`: workers seen). Sampled every 10 ms, less
  often as a call goes on (every 10 % of the time so far, at most 100 ms), so that the
  sampling takes little CPU from the workers of a multi-core candidate.
- Rows measured in a separate Python (HyperNodes, in its own 3.12 venv) are timed inside
  that process; its CPU and memory are then the "driver".
"""


# -- formatting ------------------------------------------------------------------------
def _fmt_time(seconds: float, per_item: int | None) -> str:
    if per_item:
        v = seconds * 1e6 / per_item
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    v = seconds * 1e3
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _ok(r: dict) -> bool:
    return "median" in r and not r.get("error")


def best_peer(rows: list[dict]) -> dict | None:
    peers = [r for r in rows if _ok(r) and r["group"] in ("peer", "hypernodes")]
    return min(peers, key=lambda r: r["median"]) if peers else None


def startup(rows: list[dict]) -> dict[str, float]:
    """label -> cold median minus warm median, where both rows ran."""
    warm = {r["label"]: r["median"] for r in rows if _ok(r) and r.get("mode") == "warm"}
    return {r["label"]: r["median"] - warm[r["label"]] for r in rows
            if _ok(r) and r.get("mode") == "cold" and r["label"] in warm}


def workload_table(rows: list[dict[str, Any]], *, per_item: int | None = None,
                   baseline: str | None = None) -> str:
    ok = [r for r in rows if _ok(r)]
    base = next((r["median"] for r in ok if r["name"] == baseline), None)
    best = best_peer(rows)
    ups = startup(rows)
    unit = "us/item" if per_item else "ms"
    out = [f"| candidate | group | median {unit} | min | p95 | rounds | vs loop | vs best peer "
           f"| start-up ms | CPU avg / peak | RSS driver / worker MiB |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not _ok(r):
            why = (r.get("error") or "not run").replace("|", "/")
            tag = "not available" if r.get("unavailable") else "failed"
            out.append(f"| {r['name']} | {r['group']} | {tag}: {why} | | | | | | | | |")
            continue
        speed = f"{base / r['median']:.2f}x" if base else "-"
        vs_peer = f"{best['median'] / r['median']:.2f}x" if best else "-"
        up = f"{ups[r['label']] * 1e3:.1f}" if r.get("mode") == "cold" and r["label"] in ups \
            else ""
        cpu = f"{r['cpu_avg']:.2f} / {r['cpu_peak']:.2f}" if "cpu_avg" in r else "-"
        mem = "-"
        if "rss_driver_mib" in r:
            mem = f"{r['rss_driver_mib']:.0f}"
            if r.get("workers"):
                mem += f" / {r['rss_worker_mib']:.0f} (x{r['workers']})"
        out.append(f"| {r['name']} | {r['group']} | {_fmt_time(r['median'], per_item)} | "
                   f"{_fmt_time(r['min'], per_item)} | {_fmt_time(r['p95'], per_item)} | "
                   f"{r['rounds']} | {speed} | {vs_peer} | {up} | {cpu} | {mem} |")
    return "\n".join(out)


def summary_table(results: dict) -> str:
    """One line per workload: the fastest gilfree row beside the fastest peer and the bar."""
    out = ["| workload | fastest gilfree row | fastest peer | peer / gilfree | vs loop | bar |",
           "|---|---|---|---:|---:|---|"]
    for wid, w in results["workloads"].items():
        bar = DESCRIPTIONS.get(wid, "\n").split("\n", 1)[-1].removeprefix("Bar: ")
        if w.get("pending"):
            out.append(f"| {wid} | {w['pending']} | | | | {bar} |")
            continue
        rows, per_item = w["rows"], w.get("per_item")
        # Engines on the workload's pipeline (not a raw-primitive floor row).
        ours = [r for r in rows if _ok(r) and r["group"] == "gilfree"
                and r["label"].startswith(ENGINES)]
        g = min(ours, key=lambda r: r["median"]) if ours else None
        p = best_peer(rows)
        base = next((r["median"] for r in rows if _ok(r) and r["name"] == w.get("baseline")),
                    None)
        unit = " us/item" if per_item else " ms"

        def cell(r):
            return f"{r['name']}: {_fmt_time(r['median'], per_item)}{unit}" if r else "-"
        ratio = f"{p['median'] / g['median']:.2f}x" if g and p else "-"
        loop = f"{base / g['median']:.1f}x" if g and base else "-"
        out.append(f"| {wid} | {cell(g)} | {cell(p)} | {ratio} | {loop} | {bar} |")
    return "\n".join(out)


# -- plots -------------------------------------------------------------------------------
def plot(wid: str, w: dict, path: Path) -> str | None:
    """A horizontal bar chart of medians (whiskers: min to p95); None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"matplotlib not importable ({type(exc).__name__}: {exc})"
    rows = [r for r in w["rows"] if _ok(r)]
    if not rows:
        return "no row ran"
    per_item = w.get("per_item")
    scale = (1e6 / per_item) if per_item else 1e3
    unit = "us per item" if per_item else "ms"
    med = [r["median"] * scale for r in rows]
    lo = [max(0.0, (r["median"] - r["min"]) * scale) for r in rows]
    hi = [max(0.0, (r["p95"] - r["median"]) * scale) for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.3))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, med, xerr=[lo, hi], color=[COLORS.get(r["group"], "#8c8c8c") for r in rows],
            error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    log = max(med) / max(min(med), 1e-9) > 30
    if log:
        ax.set_xscale("log")
    right = max(m + h for m, h in zip(med, hi))
    ax.set_xlim(right=right * (4 if log else 1.18))
    for yi, m, h in zip(y, med, hi):
        ax.text(m + h, yi, f" {m:.0f}" if m >= 100 else f" {m:.3g}", va="center", fontsize=7)
    ax.set_xlabel(f"median {unit} (whiskers: min to p95; lower is better)")
    ax.set_title(f"{wid}: {w['title']}", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for g, c in COLORS.items()
               if any(r["group"] == g for r in rows)]
    labels = [g for g in COLORS if any(r["group"] == g for r in rows)]
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


# -- the report ----------------------------------------------------------------------------
def _header(results: dict) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(results.get("versions", {}).items()))
    return [f"Command: `{results['command']}`",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} "
            f"({m['platform']}); gilfree {m['gilfree']} at commit {m['commit'] or '?'}; "
            f"run of {results['started']}, {results.get('duration_s', 0):.0f} s.",
            "",
            f"Packages: {versions}." if versions else "",
            ""]


def _workload_md(wid: str, w: dict, plot_prefix: str) -> list[str]:
    desc = DESCRIPTIONS.get(wid, "").replace("\n", "  \n")
    out = [f"## {wid}: {w['title']}", ""]
    if desc:
        out += [desc, ""]
    if w.get("pending"):
        return out + [f"**{wid}: {w['pending']}**", ""]
    out += [workload_table(w["rows"], per_item=w.get("per_item"), baseline=w.get("baseline")),
            ""]
    best = best_peer(w["rows"])
    if best:
        out += [f"Best peer: {best['name']}.", ""]
    notes = [f"- {r['name']}: {r['note']}" for r in w["rows"] if r.get("note")]
    if notes:
        out += ["Notes:", "", *notes, ""]
    if w.get("plot"):
        out += [f"![{wid}]({plot_prefix}{w['plot']})", ""]
    elif w.get("plot_error"):
        out += [f"(no plot: {w['plot_error']})", ""]
    return out


def not_run(results: dict) -> list[str]:
    out = []
    for wid, w in results["workloads"].items():
        if w.get("pending"):
            out.append(f"- {wid}: {w['pending']}")
        for r in w.get("rows", []):
            if not _ok(r):
                tag = "not available" if r.get("unavailable") else "failed"
                out.append(f"- {wid} {r['name']}: {tag}: {r.get('error') or 'not run'}")
    return out


def render(results: dict, out_dir: Path) -> Path:
    """Write ``latest.md`` and one ``<W>.png`` per workload into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for wid, w in results["workloads"].items():
        if w.get("pending"):
            continue
        why = plot(wid, w, out_dir / f"{wid}.png")
        w["plot"], w["plot_error"] = (None, why) if why else (f"{wid}.png", None)
    md = ["# Benchmark results", "", *_header(results), "## Summary", "",
          summary_table(results), "",
          "(peer / gilfree > 1: gilfree's fastest row beats every peer; medians.)", "",
          NOTES]
    if results.get("sampler"):
        md += [f"Resources: {results['sampler']}", ""]
    for wid, w in results["workloads"].items():
        md += _workload_md(wid, w, "")
    skipped = not_run(results)
    if skipped:
        md += ["## Not run here, and why", "", *skipped, ""]
    path = out_dir / "latest.md"
    path.write_text("\n".join(md))
    return path


#: The docs page's last section: the soak benchmark is a script of its own (minutes per
#: engine), its latest run a page of its own.
SOAK_SECTION = [
    "", "## Soak: driver memory over repeated maps", "",
    "`benchmarks/soak.py` (not part of `run.py`) runs the same 1,000,000-item map of "
    "`x + 1` ten times on each engine, each engine in a fresh interpreter with its "
    "defaults, and reports the wall time and the driver's RSS (after `gc.collect()`) after "
    "each map. Bar: the driver grows at most 40 MiB from the 2nd map to the last, on every "
    "engine; the script exits non-zero when one misses it.", "",
    "```bash",
    "python benchmarks/soak.py                                   # every engine, full size",
    "python benchmarks/soak.py --items 200000 --repeats 5 --engines thread,process",
    "python benchmarks/soak.py --md benchmarks/results/soak.md   # the page linked below",
    "```", "",
    "Latest run: [benchmarks/results/soak.md](../benchmarks/results/soak.md).", ""]


def render_docs(results: dict, results_dir: Path, page: Path = DOCS_PAGE) -> Path:
    """docs/benchmarks.md: how to run, then every workload's two lines, table and plot."""
    try:
        rel = Path("..") / results_dir.resolve().relative_to(HERE.parent)
    except ValueError:  # results outside the repository: link them where they are
        rel = results_dir.resolve()
    md = ["# Benchmarks", "",
          "Every figure on this page comes from one run of `benchmarks/run.py`, which runs "
          "each workload of the specification (W1-W9) on every gilfree engine and on the "
          "tools a user would pick instead (the peers), in the same process, interleaved, "
          "cold and warm. Absolute times vary between machines; compare ratios measured in "
          "the same run. The machine below is a small shared VM: expect noise of a few "
          "percent to tens of percent on the rows that take milliseconds.", "",
          "```bash",
          "pip install '.[bench]'              # the peers: dask, joblib, uvloop, daft, ...",
          "python benchmarks/run.py            # every workload, full rounds",
          "python benchmarks/run.py --quick    # fewer rounds (< 5 min on 2 cores)",
          "python benchmarks/run.py --only W3  # one workload",
          "python benchmarks/run.py --only W10 # W10a, W10b and W10c (W2: W2 and W2b)",
          "python benchmarks/grid.py --workload W5 --engine ProcessEngine  # knob sweep",
          "```", "",
          "The HyperNodes rows run in a Python >= 3.12 virtual environment that the runner "
          "creates under `benchmarks/.venv-hypernodes` (`pip install hypernodes`); "
          "`--no-hypernodes` skips them.", "",
          *_header(results), "## Summary", "", summary_table(results), "",
          "(peer / gilfree > 1: gilfree's fastest row beats every peer; medians.)", "",
          NOTES]
    for wid, w in results["workloads"].items():
        md += _workload_md(wid, w, f"{rel.as_posix()}/")
    skipped = not_run(results)
    if skipped:
        md += ["## Not run, and why", "", *skipped, ""]
    md += SOAK_SECTION
    page.write_text("\n".join(md))
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="a results file written by run.py")
    ap.add_argument("--out", default=None, help="directory for latest.md and the PNGs "
                    "(default: the JSON's directory)")
    ap.add_argument("--docs", action="store_true", help="also write docs/benchmarks.md")
    args = ap.parse_args(argv)
    src = Path(args.json)
    results = json.loads(src.read_text())
    out = Path(args.out) if args.out else src.parent
    print(f"wrote {render(results, out)}")
    if args.docs:
        print(f"wrote {render_docs(results, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
