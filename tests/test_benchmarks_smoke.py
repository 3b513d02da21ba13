"""The benchmark runner still runs: ``benchmarks/run.py --only W4 --rounds 1 --tiny``.

A smoke test of the code path (discover, measure, summarize, JSON, Markdown, plot), not
a benchmark: sizes are tiny and nothing is asserted about time.  Peers whose packages
are missing (the ``bench`` extra is not part of ``test``) must show up as rows with a
reason, never vanish; the HyperNodes rows are skipped (they need a Python 3.12 venv and
the network) and must say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

pytestmark = pytest.mark.skipif(not RUN.exists(), reason="no benchmarks/ in this checkout")


def benchmark_env() -> dict:
    """The environment of a benchmark script: whatever gilfree the tests import (source
    tree or installed) is the one benchmarked."""
    import gilfree

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(gilfree.__file__).parent.parent), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.timeout(300)
def test_run_py_only_w4_one_round(tmp_path):
    env = benchmark_env()
    done = subprocess.run(
        [sys.executable, str(RUN), "--only", "W4", "--rounds", "1", "--tiny",
         "--no-hypernodes", "--out", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    stamped = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data == json.loads(stamped[0].read_text())
    assert data["machine"]["cores"] >= 1 and data["machine"]["python"]
    assert list(data["workloads"]) == ["W4"]
    rows = data["workloads"]["W4"]["rows"]
    names = [r["name"] for r in rows]
    # The baseline and a gilfree engine ran and were summarised.
    base = next(r for r in rows if r["group"] == "baseline")
    assert base["rounds"] == 1 and base["median"] > 0 and base["min"] <= base["p95"]
    assert any(r["group"] == "gilfree" and "median" in r for r in rows)
    # Every row either ran or says why not: nothing is dropped silently.
    for r in rows:
        assert "median" in r or r.get("error"), r
    hn = [r for r in rows if r["group"] == "hypernodes"]
    assert hn and all("--no-hypernodes" in r["error"] for r in hn), names

    md = (tmp_path / "latest.md").read_text()
    assert "## W4" in md and "| candidate |" in md
    for name in names:
        assert name in md
    if data["workloads"]["W4"].get("plot"):
        assert (tmp_path / "W4.png").stat().st_size > 0
    else:
        assert "no plot" in md


@pytest.mark.timeout(300)
def test_run_py_only_w9_tiny(tmp_path):
    """W9 (streaming) at its tiny size: every row runs its call in a fresh interpreter
    and reports its throughput and its peak RSS above its baseline in its note; the sums
    and positions are checked (a wrong result would be the row's error)."""
    env = benchmark_env()
    done = subprocess.run(
        [sys.executable, str(RUN), "--only", "W9", "--rounds", "1", "--tiny",
         "--no-hypernodes", "--out", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    assert list(data["workloads"]) == ["W9"]
    rows = {r["label"]: r for r in data["workloads"]["W9"]["rows"]}
    assert len(rows) == 3, list(rows)
    for label, r in rows.items():
        if r.get("unavailable"):  # imap before it exists: says so
            assert "imap" in label and "imap" in r["error"], r
            continue
        assert r["rounds"] == 1 and not r.get("error"), r
        assert "items/s" in r["note"] and "MiB above its baseline" in r["note"], r
        assert r.get("rss_driver_mib", 1) > 0  # the child was sampled as the driver
    assert sum("median" in r for r in rows.values()) >= 2
    assert "## W9" in (tmp_path / "latest.md").read_text()


SOAK = ROOT / "benchmarks" / "soak.py"


@pytest.mark.timeout(300)
@pytest.mark.skipif(not SOAK.exists(), reason="no benchmarks/soak.py in this checkout")
def test_soak_py_runs_small(tmp_path):
    """``benchmarks/soak.py`` at a tiny size: every engine asked for runs its maps and the
    table and JSON say so.  Not a memory check: at this size the bar is trivially met."""
    env = benchmark_env()
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SOAK), "--items", "2000", "--repeats", "3",
         "--engines", "seq,thread,process", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["engine"] for r in data["runs"]] == ["SeqEngine", "ThreadEngine", "ProcessEngine"]
    for r in data["runs"]:
        assert [m["map"] for m in r["maps"]] == [1, 2, 3] and all(m["ok"] for m in r["maps"])
        assert r["passed"] and r["growth_mib"] is not None
    assert "| ProcessEngine | 3 |" in done.stdout


def test_only_selects_a_workload_and_its_lettered_parts(monkeypatch):
    monkeypatch.syspath_prepend(str(RUN.parent))
    import run

    assert [w for w in ("W1", "W10a", "W10b", "W10c", "W2", "W2b")
            if run.selected(w, {"W10"})] == ["W10a", "W10b", "W10c"]
    assert [w for w in ("W1", "W10a", "W2", "W2b") if run.selected(w, {"W2"})] == [
        "W2", "W2b"]
    assert [w for w in ("W1", "W10a", "W10b") if run.selected(w, {"W1", "W10B"})] == [
        "W1", "W10b"]
    assert run.selected("W9", set())  # no --only: every workload



def test_grid_sweeps_only_knobs_that_change_what_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(RUN.parent))
    import grid
    from gilfree import engines

    w4, _, _ = grid.workload("W4", "SeqEngine")
    w6, _, _ = grid.workload("W6", "ThreadEngine")
    plain, batched = grid.pipeline_of(w4), grid.pipeline_of(w6)
    assert plain is not None and batched is not None
    assert not grid.has_batch_node(plain) and grid.has_batch_node(batched)
    assert set(grid.idle_knobs(engines.ThreadEngine, plain)) == {"batch_size"}
    assert set(grid.idle_knobs(engines.SeqEngine, plain)) == {"batch_size", "max_concurrency"}
    assert grid.idle_knobs(engines.ThreadEngine, batched) == {}
    # ProcessEngine's batch_size is also how many items go to a worker at once.
    assert grid.idle_knobs(engines.ProcessEngine, plain) == {}


@pytest.mark.timeout(300)
def test_grid_py_pairs_the_best_point_with_auto_engine(tmp_path):
    env = benchmark_env()
    done = subprocess.run(
        [sys.executable, str(RUN.parent / "grid.py"), "--workload", "W4", "--engine",
         "SeqEngine,ThreadEngine", "--max-workers", "16", "--max-concurrency", "auto",
         "--rounds", "1", "--calls", "1", "--confirm", "2", "--tiny", "--out", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "grid-W4-SeqEngine+ThreadEngine.json").read_text())
    configs = [r["config"] for r in data["rows"]]
    # batch_size changes nothing without a DualNode: swept neither on SeqEngine nor on
    # ThreadEngine; the grid is SeqEngine, ThreadEngine(max_workers=16) and AutoEngine().
    assert all(c.get("batch_size") is None for c in configs), configs
    assert sorted(c["engine"] for c in configs) == ["AutoEngine", "SeqEngine", "ThreadEngine"]
    assert any("batch_size on ThreadEngine" in why for why in data["left_out"])
    paired = data["paired"]
    best = min((r for r in data["rows"] if r["config"]["engine"] != "AutoEngine"),
               key=lambda r: r["median"])
    assert paired["best"] == best["config"] and len(paired["ratios"]) == 2
    assert paired["ratio"] > 0 and paired["auto_median"] > 0
    md = (tmp_path / "grid-W4-SeqEngine+ThreadEngine.md").read_text()
    assert "**Paired (2 rounds" in md and "Not swept" in md
