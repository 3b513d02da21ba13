"""Run the workloads side by side with their peers; write JSON, Markdown and plots.

    python benchmarks/run.py                 # every workload (W1-W8), full rounds
    python benchmarks/run.py --quick         # fewer rounds (< 5 minutes on 2 cores)
    python benchmarks/run.py --only W1,W4    # some workloads
    python benchmarks/run.py --docs          # also rewrite docs/benchmarks.md

Results go to ``benchmarks/results/<timestamp>.json`` (every round, median, min, p95,
CPU and memory, machine and package versions; copied to ``latest.json``),
``benchmarks/results/latest.md`` and one PNG bar chart per workload beside it.
Workload modules are the ``w*.py`` files here; each declares ``WORKLOADS`` (see
``discover``) and runs in a child process of its own.  The peers come from ``pip
install .[bench]``; a peer that cannot run is listed with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# dask.distributed logs every worker start and stop at INFO: only warnings, please.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
# Worker processes that start a fresh interpreter (Daft's UDF actors, spawn) must find
# the workload modules their functions live in.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)

import common  # noqa: E402
import hypernodes_peer  # noqa: E402
import report  # noqa: E402
import resources  # noqa: E402
from harness import measure, summarize  # noqa: E402

#: Workloads whose module may not exist yet, and what to say meanwhile.
PENDING = {w: "module pending (ProcessEngine work in progress)" for w in ("W3", "W5", "W7")}
PACKAGES = ("gilfree", "numpy", "cloudpickle", "tbb", "psutil", "matplotlib", "joblib",
            "uvloop", "dask", "distributed", "daft", "pyarrow")


def discover() -> tuple[list[tuple], dict[str, str]]:
    """Every ``w*.py`` module here declares ``WORKLOADS``: (id, title, candidates
    function name, items for per-item units or None, baseline candidate name).  A module
    that fails to import is reported, not fatal."""
    found, broken = [], {}
    for path in sorted(HERE.glob("w[0-9]*.py")):
        try:
            mod = importlib.import_module(path.stem)
        except Exception as exc:
            traceback.print_exc()
            broken[path.stem.split("_")[0].upper()] = \
                f"module {path.name} does not import ({type(exc).__name__}: {exc})"
            continue
        for wid, title, fn, per_item, baseline in getattr(mod, "WORKLOADS", []):
            found.append((wid, title, mod, fn, per_item, baseline))
    return found, broken


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    import gilfree

    return {"python": platform.python_version(), "cpu": cpu,
            "cores": common.cores(), "logical_cpus": os.cpu_count(),
            "platform": platform.platform(), "gilfree": gilfree.__version__,
            "commit": commit}


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def selected(wid: str, only: set[str]) -> bool:
    """Whether ``--only`` asks for workload ``wid``: by its id, or by the id its
    letter extends (W2 selects W2 and W2b; W10 selects W10a, W10b and W10c)."""
    wid = wid.upper()
    return not only or wid in only or (wid[-1].isalpha() and wid[:-1] in only)


def run_workload(entry: tuple, args: argparse.Namespace, rounds: int) -> dict:
    """Measure one workload in this process: its candidates, interleaved rounds, rows."""
    wid, title, mod, fn, per_item, baseline = entry
    if args.tiny and per_item:
        per_item = common.size(per_item)
    t0 = time.perf_counter()
    w = {"title": title, "per_item": per_item, "baseline": baseline,
         "module": Path(mod.__file__).name}
    try:
        cands = getattr(mod, fn)(args.quick)
        measure(cands, rounds, quick=args.quick, sample=not args.no_sampling,
                quiet=not args.tiny)
        w["rows"] = [summarize(c) for c in cands]
    except Exception as exc:
        traceback.print_exc()
        w.update(rows=[], pending=f"the workload itself failed: {type(exc).__name__}: {exc}")
    w["seconds"] = round(time.perf_counter() - t0, 1)
    if w["rows"]:
        print(report.workload_table(w["rows"], per_item=per_item, baseline=baseline))
        costly = sorted(w["rows"], key=lambda r: -r.get("spent_s", 0))[:3]
        print("   costliest rows: " + ", ".join(f"{r['name']} {r['spent_s']:.1f} s"
                                                for r in costly))
    return w


def run_isolated(wid: str, argv: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run one workload in a child ``run.py --child`` (so a crash or a hang in one peer
    loses that workload only); returns its result, or None and why."""
    import signal
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "w.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", wid,
               "--child", str(dest)]
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, f"timed out after {timeout:.0f} s (killed; see the log for the row)"
        finally:
            try:  # workers the child left behind
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        if code != 0 or not dest.exists():
            why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            return None, (f"the workload's process died ({why}); the log above has the "
                          "traceback")
        return json.loads(dest.read_text()), ""


def strip_only(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--only":
            skip = True
        elif not a.startswith("--only="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="3 rounds; a candidate whose first call takes > 1 s runs once")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per candidate")
    ap.add_argument("--only", default="", help="comma-separated workload ids, e.g. W1,W4")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    ap.add_argument("--docs", action="store_true", help="also rewrite docs/benchmarks.md")
    ap.add_argument("--no-hypernodes", action="store_true",
                    help="skip the HyperNodes rows (they need a Python >= 3.12 venv)")
    ap.add_argument("--no-sampling", action="store_true", help="no CPU/memory sampling")
    ap.add_argument("--tiny", action="store_true",
                    help="shrink every workload (a smoke test of the code, not a benchmark)")
    ap.add_argument("--in-process", action="store_true",
                    help="run every workload in this process (default: one child each, so "
                         "a crash or hang costs one workload, and no state leaks between)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per workload before its process is killed "
                         "(default 600 with --quick, else 3600)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    common.TINY = args.tiny
    if args.no_hypernodes:
        hypernodes_peer.SKIP = "skipped (--no-hypernodes)"
    found, broken = discover()
    if args.child:  # one workload, for the parent's run_isolated
        entries = [e for e in found if selected(e[0], only)]
        out = {wid: run_workload(e, args, rounds) for e in entries for wid in [e[0]]}
        Path(args.child).write_text(json.dumps(
            {"workloads": out, "hypernodes": hypernodes_peer.versions()}))
        return 0
    started = time.perf_counter()
    shown = [a for a in argv if a not in ("--docs",)]
    results = {"command": " ".join(["python benchmarks/run.py", *shown]).strip(),
               "started": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": machine(), "versions": versions(), "rounds": rounds,
               "quick": args.quick, "tiny": args.tiny,
               "sampler": resources.unavailable_reason() or
               ("off (--no-sampling)" if args.no_sampling else ""),
               "workloads": {}}
    have = {wid for wid, *_ in found}
    for wid in report.EXPECTED:
        if wid not in have and selected(wid, only):
            why = broken.get(wid) or PENDING.get(wid) or "module pending"
            results["workloads"][wid] = {"title": report.DESCRIPTIONS[wid].split(".")[0],
                                         "pending": why, "rows": []}
    timeout = args.timeout or (600 if args.quick else 3600)
    hn_versions: dict = {}
    done: set[str] = set()
    for entry in found:
        wid, title = entry[0], entry[1]
        if not selected(wid, only) or wid in done:
            continue
        print(f"== {wid}: {title}", flush=True)
        if args.in_process:
            results["workloads"][wid] = run_workload(entry, args, rounds)
            hn_versions = hypernodes_peer.versions() or hn_versions
        else:
            # A module's workloads (W2 and W2b) share one child.
            siblings = [e[0] for e in found if e[2] is entry[2] and selected(e[0], only)]
            got, why = run_isolated(",".join(siblings), strip_only(argv), timeout)
            for sib in siblings:
                if got is None:
                    results["workloads"][sib] = {"title": title if sib == wid else sib,
                                                 "pending": why, "rows": []}
                else:
                    results["workloads"][sib] = got["workloads"][sib]
                    hn_versions = got["hypernodes"] or hn_versions
            done.update(siblings)
        print(f"   ({time.perf_counter() - started:.0f} s so far)", flush=True)
    results["versions"].update({f"hypernodes-venv {k}": v for k, v in hn_versions.items()})
    results["workloads"] = dict(sorted(results["workloads"].items()))
    results["duration_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        md = report.render(results, out)  # notes each plot's file in results
    except Exception:
        traceback.print_exc()
        md = "(no report: rendering failed)"
    # latest.json: the data behind latest.md and the plots (kept in git with them; the
    # timestamped files are the history, ignored by git).
    text = json.dumps(results, indent=1)
    (out / f"{stamp}.json").write_text(text)
    (out / "latest.json").write_text(text)
    print(f"wrote {out / (stamp + '.json')}, {md}, latest.json and the plots "
          f"({results['duration_s']:.0f} s in all)")
    if args.docs:
        print(f"wrote {report.render_docs(results, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
