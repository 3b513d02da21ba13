"""Run HyperNodes' own engine-agnostic tests against gilfree (issue 18's check).

    python tests/compat/run_hypernodes_tests.py PATH/TO/hypernodes [--daft] [pytest args...]

Needs Python >= 3.12 (HyperNodes' tests use 3.12 f-strings) with gilfree installed,
pytest, and pyarrow + numpy (else the DualNode format tests skip). ``--daft`` adds its
DaftEngine tests (they skip unless daft is installed).

Copies the listed test files from a HyperNodes checkout into a temporary folder,
rewrites their imports to gilfree (the one change a HyperNodes user makes) and runs
pytest on them. The tests stay in HyperNodes; nothing here is collected by gilfree's
own suite (the file name does not start with ``test_``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: HyperNodes' tests that use only its public, engine-agnostic API.
ENGINE_AGNOSTIC = ["construction", "execution", "map", "nested_pipelines", "output_mapping",
                   "selective_inputs", "bind", "caching", "callbacks", "progress", "stateful",
                   "dual_node", "pyarrow_contract"]
#: Its DaftEngine tests that use only the public API (need daft installed).
DAFT = ["daft_bound_inputs", "daft_caching", "daft_progress_parity", "daft_optimizations"]

#: Module paths, most specific first: what a HyperNodes user changes in their imports.
REWRITES = [
    ("hypernodes.sequential_engine", "gilfree.engines"),
    ("hypernodes.pipeline_node", "gilfree"),
    ("hypernodes.telemetry", "gilfree.telemetry"),
    ("hypernodes", "gilfree"),
]


def rewrite(source: str) -> str:
    for old, new in REWRITES:
        source = re.sub(rf"\b{re.escape(old)}\b", new, source)
    return source


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    checkout = Path(argv[0]).resolve()
    names = ENGINE_AGNOSTIC + (DAFT if "--daft" in argv else [])
    extra = [a for a in argv[1:] if a != "--daft"]
    with tempfile.TemporaryDirectory(prefix="hypernodes-tests-") as tmp:
        for name in names:
            src = checkout / "tests" / f"test_{name}.py"
            if not src.exists():
                print(f"missing: {src}", file=sys.stderr)
                return 2
            (Path(tmp) / src.name).write_text(rewrite(src.read_text()))
        conftest = checkout / "tests" / "conftest.py"
        if conftest.exists():
            (Path(tmp) / "conftest.py").write_text(rewrite(conftest.read_text()))
        shutil.copy(__file__, Path(tmp) / "README_compat.txt")
        # A module that fails to import (a missing gilfree name) is reported as an error
        # and the other modules still run: the count then shows everything at once.
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", tmp,
               "-o", "addopts=", "--continue-on-collection-errors", tmp, *extra]
        return subprocess.call(cmd, cwd=tmp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
