"""Run the workloads side by side with their peers; write JSON and a Markdown report.

    python benchmarks/run.py                 # every workload, full rounds
    python benchmarks/run.py --quick         # fewer rounds
    python benchmarks/run.py --only W1,W4    # some workloads

Results go to ``benchmarks/results/<timestamp>.json`` and ``benchmarks/results/latest.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import measure, summarize, table  # noqa: E402

def discover() -> list[tuple]:
    """Every ``w*.py`` module here declares ``WORKLOADS``: (id, title, candidates
    function name, items for per-item units or None, baseline candidate name)."""
    found = []
    for path in sorted(HERE.glob("w[0-9]*.py")):
        mod = __import__(path.stem)
        for wid, title, fn, per_item, baseline in getattr(mod, "WORKLOADS", []):
            found.append((wid, title, mod, fn, per_item, baseline))
    return found


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
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    import gilfree

    return {"python": platform.python_version(), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "gilfree": gilfree.__version__, "commit": commit}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per candidate")
    ap.add_argument("--only", default="", help="comma-separated workload ids, e.g. W1,W4")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    info = machine()
    report = [f"# Benchmark results", "",
              f"Command: `python benchmarks/run.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
              f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
              f"commit {info['commit']}", ""]
    results = {"machine": info, "rounds": rounds, "workloads": {}}
    for wid, title, mod, fn, per_item, baseline in discover():
        if only and wid not in only and wid.rstrip("b") not in only:
            continue
        print(f"== {wid}: {title}", flush=True)
        cands = measure(getattr(mod, fn)(args.quick), rounds)
        rows = [summarize(c) for c in cands]
        md = table(rows, per_item=per_item, baseline=baseline)
        print(md, flush=True)
        report += [f"## {wid}: {title}", "", md, ""]
        results["workloads"][wid] = {"title": title, "per_item": per_item, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=1))
    (out / "latest.md").write_text("\n".join(report))
    print(f"wrote {out / (stamp + '.json')} and {out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
