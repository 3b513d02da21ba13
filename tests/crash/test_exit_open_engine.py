"""Crash matrix: the interpreter exits with an engine left open (no shutdown()).  Every
engine: the script ends without hanging, with exit code 0, no process of it is left, and
nothing of it is left in /dev/shm or in its temporary directory."""

from __future__ import annotations

import os

import pytest

from crash_helpers import ALL, SPAWN, results, wait_gone


@pytest.mark.parametrize("engine_name", [*ALL, SPAWN])
def test_interpreter_exit_with_an_open_engine(start_case, engine_name, tmp_path):
    before = set(os.listdir("/dev/shm"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = start_case("""
        import numpy as np
        @node(output_name="a")
        def big(x):
            return np.full(200_000, x, dtype=np.float64)  # 1.6 MB: shared memory, if any

        engine = make_engine()
        out = Pipeline([big]).map({"x": list(range(20))}, map_over="x", engine=engine)
        assert all(r["a"][0] == i for i, r in enumerate(out))
        report(procs=descendants())
        # no shutdown: the interpreter exits with the engine open
    """, env={"TMPDIR": str(tmp)})
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert wait_gone(results(stdout)["procs"]) == []
    # Large results may travel in anonymous memfd segments, which cannot outlive the
    # processes; nothing of ours may appear in /dev/shm (other programs' may come and go).
    assert [n for n in set(os.listdir("/dev/shm")) - before
            if "gilfree" in n or n.startswith(("psm_", "wnsm_"))] == []
    # Dask's workspace keeps two lock files of fixed names there, shared by every run
    # (the same two after one run or a hundred); its per-worker directories must go.
    shared = {"dask-scratch-space/global.lock", "dask-scratch-space/purge.lock"}
    left = [os.path.relpath(os.path.join(d, f), tmp) for d, _, files in os.walk(tmp)
            for f in files]
    assert set(left) - shared == set(), left
