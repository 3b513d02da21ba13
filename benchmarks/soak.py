"""Soak: does the driver's memory stay flat when the same large map runs again and again?

    python benchmarks/soak.py                                  # 1,000,000 items x 10 maps
    python benchmarks/soak.py --items 200000 --repeats 5 --engines thread,process

Each engine runs in a fresh interpreter (a child of this script), with its defaults: the
same ``items``-item map of ``x + 1`` ``repeats`` times on one engine, each result
dropped before the next map.  After each map the child runs ``gc.collect()`` and reads
its own RSS (the driver's; worker processes are not counted).  The first map pays for
start-up, imports and the allocator's first growth, so the bar is on the growth from
the 2nd map to the last: at most ``--bar-mib`` (40 MiB) on every engine.  A table is
printed; the exit status is non-zero when an engine misses the bar or fails.

This is a benchmark, not a test (minutes for the full size; the numbers depend on the
machine).  Issue 14 asks for it: ProcessEngine's driver once grew 83 -> 189 MiB over ten
such maps.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resources import MIB, cpu_and_rss  # noqa: E402

ENGINES = {"seq": "SeqEngine", "thread": "ThreadEngine", "async": "AsyncEngine",
           "process": "ProcessEngine", "dask": "DaskEngine"}


def _rss_mib() -> float:
    gc.collect()
    reading = cpu_and_rss(os.getpid())
    return reading[1] / MIB if reading else float("nan")


def child(engine_name: str, items: int, repeats: int) -> None:
    """Runs in the child: one engine, ``repeats`` maps; one JSON line per map."""
    from gilfree import Pipeline, engines, node

    @node(output_name="y")
    def plus_one(x):
        return x + 1

    pipeline = Pipeline([plus_one])
    xs = list(range(items))
    print(json.dumps({"rss_before": round(_rss_mib(), 1)}), flush=True)
    with getattr(engines, ENGINES[engine_name])() as engine:
        for k in range(repeats):
            t0 = time.perf_counter()
            out = pipeline.map({"x": xs}, map_over="x", engine=engine)
            wall = time.perf_counter() - t0
            ok = len(out) == items and out[-1] == {"y": items} and out[0] == {"y": 1}
            del out
            print(json.dumps({"map": k + 1, "wall_s": round(wall, 3),
                              "rss_mib": round(_rss_mib(), 1), "ok": ok}), flush=True)


def run_engine(name: str, args: argparse.Namespace) -> dict:
    """One engine in a fresh interpreter; its per-map lines, echoed as they come."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name,
           "--items", str(args.items), "--repeats", str(args.repeats)]
    maps: list[dict] = []
    before = None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(args.timeout, proc.kill)  # a hung map ends the engine's run
    watchdog.start()
    for line in proc.stdout:
        rec = json.loads(line)
        if "rss_before" in rec:
            before = rec["rss_before"]
            continue
        maps.append(rec)
        print(f"  {name:8} map {rec['map']:>3}: {rec['wall_s']:8.2f} s  "
              f"driver RSS {rec['rss_mib']:8.1f} MiB" + ("" if rec["ok"] else "  WRONG RESULT"),
              flush=True)
    _, err = proc.communicate()
    watchdog.cancel()
    error = None
    if proc.returncode != 0 or len(maps) < args.repeats:
        error = (f"exit {proc.returncode} after {len(maps)} of {args.repeats} maps"
                 + (f" (over --timeout {args.timeout} s)" if time.monotonic() - t0 > args.timeout
                    else "") + (": " + err.strip().splitlines()[-1] if err.strip() else ""))
    if any(not m["ok"] for m in maps):
        error = "wrong results"
    return {"engine": ENGINES[name], "rss_before": before, "maps": maps, "error": error}


def summarize(run: dict, bar: float) -> dict:
    maps = run["maps"]
    rss = [m["rss_mib"] for m in maps]
    growth = rss[-1] - rss[1] if len(rss) >= 2 else None
    run["growth_mib"] = None if growth is None else round(growth, 1)
    run["passed"] = run["error"] is None and growth is not None and growth <= bar
    return run


def table(runs: list[dict], bar: float) -> str:
    lines = ["| engine | maps | wall s (min / median / max) | RSS MiB before / after map 1 / "
             "map 2 / last | growth 2nd -> last | bar |",
             "|---|---:|---|---|---:|---|"]
    for r in runs:
        walls = [m["wall_s"] for m in r["maps"]]
        rss = [m["rss_mib"] for m in r["maps"]]
        wall = (f"{min(walls):.2f} / {statistics.median(walls):.2f} / {max(walls):.2f}"
                if walls else "-")
        mem = " / ".join(f"{v:.1f}" if v is not None else "-" for v in
                         [r["rss_before"], *(rss[:2] or ["-"]), *(rss[-1:] if rss else [])])
        growth = f"{r['growth_mib']:+.1f} MiB" if r["growth_mib"] is not None else "-"
        verdict = ("ok" if r["passed"] else
                   f"MISSED (> {bar:g} MiB)" if r["error"] is None else f"FAILED: {r['error']}")
        lines.append(f"| {r['engine']} | {len(r['maps'])} | {wall} | {mem} | {growth} | "
                     f"{verdict} |")
    return "\n".join(lines)


def markdown(runs: list[dict], args: argparse.Namespace, argv: list[str]) -> str:
    """The run as a page: command, machine, the table, every map's numbers."""
    import platform

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=10,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "?"
    if git("status", "--porcelain", "--", "../python", "../cpp"):
        commit += " with uncommitted changes to python/ or cpp/"
    shown = [a for i, a in enumerate(argv) if a not in ("--md", "--json")
             and (i == 0 or argv[i - 1] not in ("--md", "--json"))]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = ["# Soak: driver memory over repeated maps", "",
             f"Command: `{' '.join(['python benchmarks/soak.py', *shown])}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {cores} cores, Python "
             f"{platform.python_version()} ({platform.platform()}); gilfree at commit "
             f"{commit}; run of {time.strftime('%Y-%m-%dT%H:%M:%S')}.", "",
             f"{args.items:,} items of `x + 1` per map, {args.repeats} maps per engine; driver "
             f"RSS after `gc.collect()`; bar: growth from map 2 to the last <= "
             f"{args.bar_mib:g} MiB.", "", table(runs, args.bar_mib), "",
             "Every map (wall s / driver RSS MiB):", ""]
    for r in runs:
        lines.append(f"- {r['engine']}: " + ", ".join(
            f"{m['wall_s']:.2f} / {m['rss_mib']:.1f}" for m in r["maps"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000, help="items per map")
    ap.add_argument("--repeats", type=int, default=10, help="maps per engine (>= 2)")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated, of {','.join(ENGINES)}")
    ap.add_argument("--bar-mib", type=float, default=40.0,
                    help="most driver RSS growth allowed from the 2nd map to the last")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds per engine before it counts as failed")
    ap.add_argument("--json", help="also write the runs to this file")
    ap.add_argument("--md", help="also write the table, command and machine to this file "
                                 "(benchmarks/results/soak.md is the one the docs link)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.items, args.repeats)
        return 0
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or args.repeats < 2 or args.items < 1:
        ap.error(f"engines must be among {sorted(ENGINES)}, repeats >= 2, items >= 1"
                 + (f" (unknown: {unknown})" if unknown else ""))
    print(f"soak: {args.items:,} items of x + 1, {args.repeats} maps per engine, "
          f"bar: driver RSS growth from map 2 to map {args.repeats} <= {args.bar_mib:g} MiB",
          flush=True)
    runs = [summarize(run_engine(n, args), args.bar_mib) for n in names]
    print()
    print(table(runs, args.bar_mib))
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(runs, args, argv if argv is not None else sys.argv[1:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"items": args.items, "repeats": args.repeats, "bar_mib": args.bar_mib,
                       "runs": runs}, f, indent=1)
    return 0 if all(r["passed"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
