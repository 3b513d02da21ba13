"""Sweep engines' knobs on one workload; print a ranked table and each knob's effect.

    python benchmarks/grid.py --workload W5 --engine ProcessEngine
    python benchmarks/grid.py --workload W1 --engine ThreadEngine --max-workers 16,64,256,auto
    python benchmarks/grid.py --workload W2 --engine AsyncEngine --max-concurrency 8,64,auto
    python benchmarks/grid.py --workload W8 --engine all --quick    # every local engine

``--engine`` takes one engine, several (comma-separated) or ``all`` (SeqEngine,
ThreadEngine, AsyncEngine, ProcessEngine): the engine is then a knob too.  Unless
``--no-auto``, ``AutoEngine()`` with no settings runs in the same rounds, and the report
puts its time beside the best grid point (issue 17's bar: within 10% of it).
``python benchmarks/grid.py --summary`` gathers the grids in ``--out`` into one table
(``grid-summary.md``): per workload, the best grid point and AutoEngine() beside it.

The knobs are the engine's own options among ``workers`` / ``n_workers``,
``max_workers``, ``batch_size`` and ``max_concurrency`` (an option of the engine where
it has one, else the per-node hint, set on every node of the pipeline).  ``auto`` is the
engine's default (``None``): the row to compare with the best.  The pipeline, inputs
and result check are the workload's own (its first gilfree candidate), so the grid
measures exactly what ``run.py`` does.  A knob that changes nothing this pipeline runs
is not swept unless asked for (``batch_size`` on SeqEngine, ThreadEngine or AsyncEngine
when no node is a DualNode; ``max_concurrency`` on SeqEngine): its values would be the
same code timed again, and the fastest of several identical configurations is only the
luckiest sample.

Every round, every configuration, in a rotating order: a fresh engine, one untimed first
call (its time is the "cold" column), ``--calls`` timed calls on the now-warm engine,
shutdown.  One engine is alive at a time, so configurations do not load each other.
The table goes to stdout and to ``benchmarks/results/grid-<W>-<Engine>.md`` (+ JSON).

Then the best grid point and AutoEngine() are measured again, paired (``--confirm``
rounds, the two alternating in the same protocol, five warm calls each): picking the
fastest of many configurations by their grid medians favours the one whose samples fell
in a quiet moment, so AutoEngine's distance to the best is read from the paired rounds
(the median of their per-round ratios), with the grid's own ratio printed beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)

import common  # noqa: E402
import hypernodes_peer  # noqa: E402
from harness import settle  # noqa: E402
from resources import descendants  # noqa: E402

KNOBS = ("workers", "n_workers", "max_workers", "batch_size", "max_concurrency")


def default_values(knob: str, quick: bool) -> list:
    n = common.cores()
    values = {
        "workers": [1, n, 2 * n],
        "n_workers": [1, n, 2 * n],
        "max_workers": [16, 64, 256] if not quick else [16, 256],
        "batch_size": [1, 8, 64, 512] if not quick else [1, 64],
        "max_concurrency": [1, 8, 64] if not quick else [1, 64],
    }[knob]
    return sorted(set(values)) + [None]


def parse_values(text: str) -> list:
    return [None if v.strip().lower() in ("auto", "none") else int(v)
            for v in text.split(",") if v.strip()]


def pipeline_of(run) -> object | None:
    """The pipeline the workload maps: ``run`` once against an engine that stops at map."""
    from gilfree.engines import SeqEngine

    class Seen(Exception):
        pass

    class Recorder(SeqEngine):
        def map(self, pipeline, *args, **kwargs):
            raise Seen(pipeline)
    try:
        run(Recorder())
    except Seen as seen:
        return seen.args[0]
    except Exception:
        return None
    return None


def has_batch_node(pipeline) -> bool:
    from gilfree.model.batch import DualNode
    for n in getattr(pipeline, "nodes", []):
        inner = getattr(n, "pipeline", None)
        if isinstance(n, DualNode) or (inner is not None and has_batch_node(inner)):
            return True
    return False


def idle_knobs(cls: type, pipeline) -> dict[str, str]:
    """Knobs of ``cls`` that change nothing that runs for ``pipeline``, with the reason
    (read from the engines' code: batch_size sizes only a DualNode's batches, except on
    ProcessEngine where it is also the number of items sent to a worker at once)."""
    idle = {}
    if pipeline is not None and not getattr(cls, "pickles_items", False) \
            and not has_batch_node(pipeline):
        idle["batch_size"] = "no DualNode in this pipeline (it sizes only a DualNode's batches)"
    if cls.__name__ == "SeqEngine":
        idle["max_concurrency"] = "SeqEngine makes one call at a time: every cap is met"
    return idle


def knobs_of(cls: type) -> tuple[list[str], list[str]]:
    """(options of ``cls.__init__`` among KNOBS, knobs that are per-node hints only)."""
    params = inspect.signature(cls.__init__).parameters
    init = [k for k in KNOBS if k in params]
    hints = [k for k in ("batch_size", "max_concurrency")
             if k not in init and k in getattr(cls, "supported_hints", ())]
    return init, hints


def hinted(cls: type, hints: dict) -> type:
    """``cls`` with ``hints`` set on every node of each pipeline it maps."""
    if not hints:
        return cls

    class Hinted(cls):
        def map(self, pipeline, *args, **kwargs):
            for n in getattr(pipeline, "nodes", []):
                self.configure(n.name, **hints)
            return super().map(pipeline, *args, **kwargs)
    Hinted.__name__ = cls.__name__
    return Hinted


def workload(wid: str, engine: str):
    """(candidate run function, check, title) of the workload's gilfree candidate."""
    for path in sorted(HERE.glob("w[0-9]*.py")):
        mod = importlib.import_module(path.stem)
        for w, title, fn, per_item, baseline in getattr(mod, "WORKLOADS", []):
            if w.upper() != wid.upper():
                continue
            cands = getattr(mod, fn)(False)
            pick = [c for c in cands if c.group == "gilfree" and c.unavailable is None
                    and c.label.startswith(engine)]
            pick = pick or [c for c in cands if c.group == "gilfree" and c.unavailable is None
                            and c.label.startswith(("ThreadEngine", "SeqEngine"))]
            if not pick:
                raise SystemExit(f"{wid} has no gilfree candidate to take the pipeline from")
            return pick[0].run, pick[0].check, title
    raise SystemExit(f"no workload {wid} (modules: benchmarks/w*.py)")


def fmt(v) -> str:
    return "auto" if v is None else str(v)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", action="store_true",
                    help="only gather the grid-*.json in --out into grid-summary.md")
    ap.add_argument("--workload", help="e.g. W5")
    ap.add_argument("--engine",
                    help="gilfree.engines classes, comma-separated (e.g. ProcessEngine), or all")
    ap.add_argument("--no-auto", action="store_true",
                    help="leave out the AutoEngine() row (no settings) beside the grid")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2, help="timed warm calls per round")
    ap.add_argument("--quick", action="store_true", help="fewer values per knob, 2 rounds")
    ap.add_argument("--tiny", action="store_true",
                    help="shrunk workloads: a smoke test of this tool, not a measurement")
    ap.add_argument("--confirm", type=int, default=6,
                    help="paired rounds of the best grid point against AutoEngine() (0: none)")
    ap.add_argument("--out", default=str(HERE / "results"))
    for k in KNOBS:
        ap.add_argument(f"--{k.replace('_', '-')}", default=None,
                        help=f"comma-separated {k} values ('auto' = the default)")
    args = ap.parse_args(argv)
    if args.summary:
        return summary(Path(args.out))
    if not args.workload or not args.engine:
        ap.error("--workload and --engine are required (or --summary)")
    hypernodes_peer.SKIP = "not used by grid.py"
    common.TINY = args.tiny
    from gilfree import engines

    names = (["SeqEngine", "ThreadEngine", "AsyncEngine", "ProcessEngine"]
             if args.engine == "all" else args.engine.split(","))
    asked = {k: parse_values(getattr(args, k)) for k in KNOBS if getattr(args, k)}
    run, check, title = workload(args.workload, names[0])
    pipeline = pipeline_of(run)
    configs, knobs, space, left_out = [], {}, {}, []
    for name in names:
        cls = getattr(engines, name, None)
        if cls is None:
            raise SystemExit(f"gilfree.engines has no {name}")
        init, hint_knobs = knobs_of(cls)
        knobs[name] = (cls, init, hint_knobs)
        own = list(dict.fromkeys(init + hint_knobs))
        if len(names) == 1:
            for k in asked:
                if k not in own:
                    raise SystemExit(f"{name} has no {k!r} option or hint "
                                     f"(it has: {', '.join(own) or 'none'})")
        idle = {k: why for k, why in idle_knobs(cls, pipeline).items() if k not in asked}
        left_out += [f"{k} on {name}: {why}" for k, why in idle.items() if k in own]
        values = {k: asked.get(k) or ([None] if k in idle else default_values(k, args.quick))
                  for k in own}
        for k, v in values.items():
            space.setdefault(k, [])
            space[k] += [x for x in v if x not in space[k]]
        configs += [{"engine": name, **dict(zip(values, combo))}
                    for combo in itertools.product(*values.values())]
    if not args.no_auto and hasattr(engines, "AutoEngine"):
        configs.append({"engine": "AutoEngine"})
        knobs["AutoEngine"] = (engines.AutoEngine, [], [])
    space = {"engine": list(knobs), **space}
    rounds = 2 if args.quick and args.rounds == 3 else args.rounds
    print(f"{args.workload} ({title}) on {args.engine}: {len(configs)} configurations x "
          f"{rounds} rounds x ({args.calls} warm calls + 1 first call)", flush=True)

    def make(cfg):
        cls, init, hint_knobs = knobs[cfg["engine"]]
        opts = {k: v for k, v in cfg.items() if k in init and v is not None}
        hints = {k: v for k, v in cfg.items() if k in hint_knobs and v is not None}
        return hinted(cls, hints)(**opts)

    def measure(cfg, calls: int) -> tuple[float, list[float], object]:
        """A fresh engine: one first call (cold), ``calls`` warm calls, shutdown."""
        known = set(descendants())
        engine = None
        try:
            t0 = time.perf_counter()
            engine = make(cfg)
            out = run(engine)
            first = time.perf_counter() - t0
            warm_times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                run(engine)
                warm_times.append(time.perf_counter() - t0)
            return first, warm_times, out
        finally:
            if engine is not None:
                engine.shutdown()
            settle(known)

    warm: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    cold: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    errors: dict[int, str] = {}
    items = None
    started = time.perf_counter()
    for r in range(rounds):
        order = list(range(len(configs)))
        k = r % len(order)
        for i in order[k:] + order[:k]:
            if i in errors:
                continue
            try:
                first, times, out = measure(configs[i], args.calls)
                cold[i].append(first)
                warm[i] += times
                if r == 0 and check is not None and not check(out):
                    errors[i] = "wrong result"
                items = items or (len(out) if hasattr(out, "__len__") else None)
            except Exception as exc:
                errors[i] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"  round {r + 1}/{rounds} done ({time.perf_counter() - started:.0f} s)",
              flush=True)

    rows = []
    for i, cfg in enumerate(configs):
        if warm[i] and i not in errors:
            rows.append({"config": cfg, "median": statistics.median(warm[i]),
                         "min": min(warm[i]), "cold": statistics.median(cold[i]),
                         "samples": warm[i], "cold_samples": cold[i]})
    rows.sort(key=lambda x: x["median"])
    grid_rows = [r for r in rows if r["config"]["engine"] != "AutoEngine"]
    paired = None
    if args.confirm > 0 and grid_rows and any(r["config"]["engine"] == "AutoEngine"
                                              for r in rows):
        paired = confirm(measure, grid_rows[0]["config"], {"engine": "AutoEngine"},
                         args.confirm, max(args.calls, 5))
    md = render(args, title, space, rows, configs, errors, items, rounds, left_out, paired)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"grid-{args.workload.upper()}-{args.engine.replace(',', '+')}"
    base.with_suffix(".md").write_text(md)
    base.with_suffix(".json").write_text(json.dumps(
        {"command": " ".join(["python benchmarks/grid.py", *argv]),
         "workload": args.workload.upper(), "title": title,
         "when": dt.datetime.now().isoformat(timespec="seconds"), "space": space,
         "rows": rows, "errors": {str(configs[i]): e for i, e in errors.items()},
         "left_out": left_out, "paired": paired},
        indent=1, default=str))
    print(f"wrote {base.with_suffix('.md')} and .json")
    return 0


def confirm(measure, best: dict, auto: dict, rounds: int, calls: int) -> dict:
    """The best grid point and AutoEngine() again, in alternating order, round by round:
    the median of the per-round ratios AutoEngine / best (two configurations measured
    minutes apart in the grid can sit in different phases of a shared machine)."""
    print(f"  paired rounds: the best grid point and AutoEngine(), {rounds} x {calls} "
          "warm calls each", flush=True)
    samples = {"best": [], "auto": []}
    ratios = []
    for r in range(rounds):
        pair = [("best", best), ("auto", auto)]
        medians = {}
        for key, cfg in (pair if r % 2 == 0 else pair[::-1]):
            _, times, _ = measure(cfg, calls)
            samples[key] += times
            medians[key] = statistics.median(times)
        ratios.append(medians["auto"] / medians["best"])
    return {"rounds": rounds, "calls": calls, "best": best, "ratios": ratios,
            "ratio": statistics.median(ratios),
            "best_median": statistics.median(samples["best"]),
            "auto_median": statistics.median(samples["auto"])}


def render(args, title, space, rows, configs, errors, items, rounds, left_out=(),
           paired=None) -> str:
    knobs = list(space)
    grid = [r for r in rows if r["config"]["engine"] != "AutoEngine"]
    best = grid[0]["median"] if grid else None
    auto = next((r for r in rows if r["config"]["engine"] == "AutoEngine"), None)
    default = next((r for r in grid if all(v is None for k, v in r["config"].items()
                                            if k != "engine")), None)
    lines = [f"# Grid: {args.workload} ({title}) on {args.engine}", "",
             f"Command: `python benchmarks/grid.py {' '.join(sys.argv[1:])}`  ",
             f"{len(configs)} configurations, {rounds} rounds, {args.calls} warm calls per "
             f"round; {common.cores()} cores.", "",
             "| rank | " + " | ".join(knobs) + " | warm median ms | min ms | first call ms "
             "| items/s | vs best |",
             "|---:|" + "---|" * len(knobs) + "---:|---:|---:|---:|---:|"]
    for n, r in enumerate(rows, 1):
        thr = f"{items / r['median']:,.0f}" if items else "-"
        lines.append(f"| {n} | " + " | ".join(fmt(r["config"].get(k, "-")) for k in knobs) +
                     f" | {r['median'] * 1e3:.1f} | {r['min'] * 1e3:.1f} | "
                     f"{r['cold'] * 1e3:.1f} | {thr} | {r['median'] / best:.2f}x |")
    for i, e in errors.items():
        lines.append("| - | " + " | ".join(fmt(configs[i].get(k, "-")) for k in knobs) +
                     f" | failed: {e} | | | | |")
    lines += ["", "Effect of each knob (geometric mean of the warm medians over the other "
              "knobs, so one pathological setting of another knob does not drown it; "
              "spread = slowest / fastest):", ""]
    for k in knobs:
        means = {}
        for v in space[k]:
            vals = [r["median"] for r in grid if r["config"].get(k, "-") == v]
            if vals:
                means[v] = statistics.geometric_mean(vals)
        if len(means) < 2:
            continue
        fastest = min(means.values())
        spread = max(means.values()) / fastest
        lines.append(f"- **{k}** (spread {spread:.2f}x): " + ", ".join(
            f"{fmt(v)} {m * 1e3:.1f} ms" for v, m in sorted(means.items(),
                                                             key=lambda kv: kv[1])))
    spreads = [(max(r["samples"]) - min(r["samples"])) / r["median"] for r in rows
               if len(r["samples"]) > 1]
    if spreads:
        lines += ["", f"Noise: the warm samples of one configuration spread by "
                  f"{statistics.median(spreads) * 100:.0f}% of their median (median over "
                  "configurations): differences smaller than that are not findings."]
    where = ", ".join(f"{k}={fmt(v)}" for k, v in grid[0]["config"].items()) if grid else ""
    if default and best and len(knobs) > 1:
        lines += ["", f"{default['config']['engine']} with all defaults: rank "
                  f"{rows.index(default) + 1} of {len(rows)}, {default['median'] * 1e3:.1f} ms "
                  f"= {default['median'] / best:.2f}x the best grid point ({where})."]
    if left_out:
        lines += ["", "Not swept (the same code whatever the value): " + "; ".join(left_out)
                  + "."]
    if auto and best:
        lines += ["", f"AutoEngine() (no settings) in the grid: {auto['median'] * 1e3:.1f} ms "
                  f"= {auto['median'] / best:.2f}x the best grid point ({where}, "
                  f"{best * 1e3:.1f} ms)."]
    if paired:
        lines += ["", f"**Paired ({paired['rounds']} rounds x {paired['calls']} warm calls, "
                  f"alternating): AutoEngine() / the best grid point = {paired['ratio']:.2f}x** "
                  f"(per round {min(paired['ratios']):.2f}-{max(paired['ratios']):.2f}x; "
                  f"medians {paired['auto_median'] * 1e3:.1f} / "
                  f"{paired['best_median'] * 1e3:.1f} ms); bar: <= 1.10x."]
    return "\n".join(lines) + "\n"


def summary(out: Path) -> int:
    """grid-summary.md: per grid in ``out``, its best point and AutoEngine() beside it."""
    lines = ["# Grids: AutoEngine() beside the best hand-set configuration", "",
             "Each row is one `benchmarks/grid.py` run (its command below the table); warm "
             "medians. Bar (issue 17): AutoEngine() <= 1.10x the best grid point, read from "
             "the paired rounds (the grid's own ratio beside it).", "",
             "| workload | engines searched | best grid point | best ms | AutoEngine() ms "
             "| grid: Auto / best | paired: Auto / best |",
             "|---|---|---|---:|---:|---:|---:|"]
    commands = []
    for path in sorted(out.glob("grid-*.json"), key=lambda p: p.stat().st_mtime):
        data = json.loads(path.read_text())
        rows = data.get("rows", [])
        grid = [r for r in rows if r["config"].get("engine") != "AutoEngine"]
        auto = next((r for r in rows if r["config"].get("engine") == "AutoEngine"), None)
        if not grid or auto is None:
            continue
        best = min(grid, key=lambda r: r["median"])
        where = ", ".join(f"{k}={fmt(v)}" for k, v in best["config"].items())
        engines_ = ", ".join(dict.fromkeys(r["config"]["engine"] for r in grid))
        paired = data.get("paired")
        lines.append(f"| {data.get('workload', path.stem)} | {engines_} | {where} | "
                     f"{best['median'] * 1e3:.1f} | {auto['median'] * 1e3:.1f} | "
                     f"{auto['median'] / best['median']:.2f}x | "
                     + (f"{paired['ratio']:.2f}x |" if paired else "- |"))
        commands.append(f"- `{data['command']}` ({data['when']})")
    text = "\n".join(lines + ["", "Commands:", "", *commands]) + "\n"
    (out / "grid-summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
