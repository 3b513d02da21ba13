"""The HyperNodes library as a peer, run in its own Python (>= 3.12) virtual environment.

    driver (run.py, this Python)                    server (benchmarks/.venv-hypernodes)
      hypernodes_rows("W1", items) ── creates the venv once, pip install hypernodes ...
      Candidate.make  ── {"op": "setup", ...} ──────▶ builds pipeline, inputs, engine
      Candidate.run   ── {"op": "run", "id"} ───────▶ times pipeline.map, checks the result
                      ◀── {"seconds", "ok"} ───────── (the driver records these seconds)
      Candidate.close ── {"op": "close", "id"} ─────▶ drops it

One JSON line each way per request.  The server is a long-lived child process, so the
HyperNodes rows take part in the interleaved rounds like every other candidate, and the
resource sampler watches the server's process tree for them.  The kernels (the node
bodies: sleeps, arithmetic, the model) are read from the workload modules' source
(``ast``), so both sides run the same code without importing gilfree on the server side.

This file is both the driver-side helper (imported by the workload modules) and the
server (``python hypernodes_peer.py serve``): keep its top-level imports stdlib-only.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-hypernodes"
#: HyperNodes, plus what its DaskEngine and DualNode batches need.
PACKAGES = ["hypernodes", "dask", "numpy", "pyarrow", "cloudpickle"]
MARKER = VENV / ".installed"
#: Set by ``run.py --no-hypernodes``: the rows are listed with this reason.
SKIP: str | None = None


# ======================================================================================
# driver side
# ======================================================================================
def _version_ok(python: str) -> bool:
    try:
        out = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "True"


def find_python() -> str | None:
    """A Python >= 3.12: $GILFREE_HYPERNODES_PYTHON, this one, PATH, pyenv, uv."""
    seen = []
    env = os.environ.get("GILFREE_HYPERNODES_PYTHON")
    if env:
        seen.append(env)
    seen.append(sys.executable)
    for name in ("python3.12", "python3.13", "python3.14"):
        path = shutil.which(name)
        if path:
            seen.append(path)
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    seen += sorted(glob.glob(f"{root}/versions/3.1[2-9]*/bin/python3"))
    seen += sorted(glob.glob("/usr/bin/python3.1[2-9]")) + sorted(
        glob.glob("/usr/local/bin/python3.1[2-9]"))
    uv = shutil.which("uv")
    if uv:
        try:
            found = subprocess.run([uv, "python", "find", ">=3.12"], capture_output=True,
                                   text=True, timeout=30).stdout.strip()
            if found:
                seen.append(found)
        except (OSError, subprocess.SubprocessError):
            pass
    return next((p for p in seen if _version_ok(p)), None)


def ensure_venv() -> Path:
    """The venv's python, creating the venv and installing HyperNodes on first use."""
    python = VENV / "bin" / "python"
    if MARKER.exists() and python.exists() and MARKER.read_text().split() == PACKAGES:
        return python
    base = find_python()
    if base is None:
        raise RuntimeError("no Python >= 3.12 found (HyperNodes rows need one; set "
                           "GILFREE_HYPERNODES_PYTHON=/path/to/python3.12)")
    print(f"    creating {VENV} with {base}, pip install {' '.join(PACKAGES)} ...", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    steps = [[base, "-m", "venv", str(VENV)],
             [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              *PACKAGES]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise RuntimeError(f"`{' '.join(cmd[-3:])}` failed: {tail[0][:200]}")
    MARKER.write_text(" ".join(PACKAGES))
    return python


class Server:
    """The child process and its one-line-per-request protocol."""

    def __init__(self, python: Path):
        # This Python's PYTHONPATH (gilfree's source tree, built for another Python) is
        # not the venv's business.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen([str(python), str(Path(__file__).resolve()), "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=str(HERE), bufsize=1, env=env)
        self.pid = self.proc.pid
        self.hello = self.request({"op": "hello"})

    def request(self, msg: dict) -> dict:
        if self.proc.poll() is not None:
            raise RuntimeError(f"HyperNodes server exited with {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"HyperNodes server died (exit {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request({"op": "quit"})
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_SERVER: Server | None = None
_REASON: str | None = None


def server() -> Server:
    """The shared server, started once per run (its failure is remembered)."""
    global _SERVER, _REASON
    if _REASON is not None:
        raise RuntimeError(_REASON)
    if _SERVER is None:
        try:
            _SERVER = Server(ensure_venv())
        except Exception as exc:
            _REASON = f"{exc}"
            raise
        import atexit

        atexit.register(_SERVER.close)
    return _SERVER


def versions() -> dict[str, str]:
    return dict(_SERVER.hello["versions"]) if _SERVER is not None else {}


def hypernodes_rows(wid: str, items: int, *, engines: tuple[str, ...] | None = None,
                    slow: tuple[str, ...] = (), skip_quick: dict[str, str] | None = None
                    ) -> list:
    """Candidates timing HyperNodes' engines on workload ``wid`` with ``items`` items.
    ``slow`` engines (e.g. a 10 s sequential run) get no warm-up call; ``skip_quick``
    maps an engine to why ``--quick`` leaves it out."""
    from harness import Candidate, Timed

    spec = SCENARIOS[wid]
    engines = engines or spec["engines"]
    reason = SKIP
    srv = None
    if reason is None:
        try:
            srv = server()
        except Exception as exc:
            reason = f"HyperNodes venv unavailable: {exc}"
    ver = srv.hello["versions"] if srv else {}
    tag = f"HyperNodes {ver.get('hypernodes', '')} ".replace("  ", " ")
    py = f" (Py {ver['python']})" if ver else ""
    rows = []
    for engine in engines:
        def make(engine=engine):
            return srv.request({"op": "setup", "wid": wid, "engine": engine, "items": items,
                                "module": spec["module"], "names": spec["names"]})["id"]

        def run(handle):
            r = srv.request({"op": "run", "id": handle})
            return Timed(r["seconds"], ok=r["ok"])

        label = f"{tag}{engine}{spec.get('suffix', '')}{py}"
        rows.append(Candidate(label, "hypernodes", run, make=make,
                              close=lambda h: srv.request({"op": "close", "id": h}), mode="-",
                              pid=lambda _: srv.pid, unavailable=reason,
                              warmup=False if engine in slow else None,
                              skip_quick=(skip_quick or {}).get(engine)))
    return rows


# ======================================================================================
# server side (runs in the venv's Python; stdlib + hypernodes + dask only)
# ======================================================================================
_KEEP_IMPORTS = {"time", "os", "asyncio", "math", "random", "hashlib", "numpy", "__future__"}


def load_kernels(module: str, names: list[str]) -> types.ModuleType:
    """The named top-level definitions (and stdlib imports) of a workload module, executed
    in a fresh module: the same node bodies as the gilfree side, without gilfree."""
    path = HERE / module
    tree = ast.parse(path.read_text(), str(path))
    keep = []
    for st in tree.body:
        if isinstance(st, ast.Import) and all(a.name.split(".")[0] in _KEEP_IMPORTS
                                              for a in st.names):
            keep.append(st)
        elif isinstance(st, ast.ImportFrom) and (st.module or "").split(".")[0] in _KEEP_IMPORTS:
            keep.append(st)
        elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and st.name in names:
            st.decorator_list = []
            keep.append(st)
        elif isinstance(st, (ast.Assign, ast.AnnAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            found = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if found & set(names):
                keep.append(st)
    mod = types.ModuleType(f"hn_kernels_{path.stem}")
    mod.__file__ = str(path)
    sys.modules[mod.__name__] = mod
    exec(compile(ast.Module(keep, []), str(path), "exec"), mod.__dict__)
    try:  # dask's process schedulers cannot import this module: ship it by value
        import cloudpickle

        cloudpickle.register_pickle_by_value(mod)
    except Exception:
        pass
    return mod


def _w1(hn, k, n):
    @hn.node(output_name="page")
    def fetch(url: int) -> int:
        return k.fetch_one(url)
    xs = list(range(n))
    return hn.Pipeline(nodes=[fetch]), {"url": xs}, "url", [{"page": x} for x in xs]


def _w2(hn, k, n):
    @hn.node(output_name="page")
    async def fetch(url: int) -> int:
        return await k.fetch_one(url)
    xs = list(range(n))
    return hn.Pipeline(nodes=[fetch]), {"url": xs}, "url", [{"page": x} for x in xs]


def _w3(hn, k, n):
    @hn.node(output_name="y")
    def crunch(x: int) -> int:
        return k.burn(x)
    xs = list(range(n))
    return hn.Pipeline(nodes=[crunch]), {"x": xs}, "x", _sampled(n, lambda i: {"y": k.burn(i)})


def _w4(hn, k, n, chain=False):
    @hn.node(output_name="y")
    def inc(x):
        return x + 1

    @hn.node(output_name="z")
    def inc2(y):
        return y + 1

    @hn.node(output_name="w")
    def inc3(z):
        return z + 1
    xs = list(range(n))
    if chain:
        return (hn.Pipeline(nodes=[inc, inc2, inc3]), {"x": xs}, "x",
                [{"y": x + 1, "z": x + 2, "w": x + 3} for x in xs])
    return hn.Pipeline(nodes=[inc]), {"x": xs}, "x", [{"y": x + 1} for x in xs]


def _w5(hn, k, n):
    @hn.stateful
    class StatefulModel(k.Model):
        pass

    @hn.node(output_name="y")
    def predict(x: int, model) -> int:
        return model.predict(x)
    xs = list(range(n))
    ref = k.Model(7)
    return (hn.Pipeline(nodes=[predict]), {"x": xs, "model": StatefulModel(7)}, "x",
            _sampled(n, lambda i: {"y": ref.predict(i)}))


def _sampled(n: int, expected_at):
    """A check of ``n`` results against the expected value of a few of them (items are
    0..n-1), for kernels too slow to run twice."""
    picks = sorted({0, 1, n // 3, n // 2, n - 2, n - 1} & set(range(n)))

    def check(res):
        return len(res) == n and all(dict(res[i]) == expected_at(i) for i in picks)
    return check


def _as_list(v):
    return v.to_pylist() if hasattr(v, "to_pylist") else list(v)


def _w6(hn, k, n):
    node = hn.DualNode(output_name="embedding", singular=k.encode_one,
                       batch=lambda passage: k.encode_batch(_as_list(passage)))
    ps = [f"passage number {i}" for i in range(n)]
    return hn.Pipeline(nodes=[node]), {"passage": ps}, "passage", \
        [{"embedding": len(p)} for p in ps]


def _w7(hn, k, n):
    @hn.node(output_name="a")
    def produce(x: int):
        return k.make_array(x)
    xs = list(range(n))

    def check(res):
        arrays = [r["a"] for r in res]
        return len(arrays) == n and all(a[0] == x and a.size == k.FLOATS
                                        for x, a in zip(xs, arrays))
    return hn.Pipeline(nodes=[produce]), {"x": xs}, "x", check


def _w8(hn, k, n):
    @hn.node(output_name="page")
    def fetch(url: int) -> str:
        return k.fetch_page(url)

    @hn.node(output_name="text")
    def parse(page: str) -> str:
        return k.parse_page(page)
    encode = hn.DualNode(output_name="embedding", singular=k.encode_text,
                         batch=lambda text: k.encode_texts(_as_list(text)))
    def expected(i):
        page = k.page_of(i)
        text = k.parse_page(page)
        return {"page": page, "text": text, "embedding": len(text)}
    return (hn.Pipeline(nodes=[fetch, parse, encode]), {"url": list(range(n))}, "url",
            _sampled(n, expected))


#: workload id -> module its kernels come from, the names to take, builder, engines.
SCENARIOS: dict[str, dict[str, Any]] = {
    "W1": {"module": "w1_blocking_io.py", "names": ["SLEEP", "fetch_one"], "build": "_w1",
           "engines": ("SeqEngine", "DaskEngine")},
    "W2": {"module": "w2_async_io.py", "names": ["SLEEP", "fetch_one"], "build": "_w2",
           "engines": ("SeqEngine", "DaskEngine")},
    "W3": {"module": "w3_cpu_bound.py", "names": ["ITERATIONS", "burn"], "build": "_w3",
           "engines": ("SeqEngine", "DaskEngine", "DaskEngine(processes)")},
    "W4": {"module": "w4_dispatch.py", "names": [], "build": "_w4",
           "engines": ("SeqEngine", "DaskEngine")},
    "W4-chain": {"module": "w4_dispatch.py", "names": [], "build": "_w4_chain",
                 "engines": ("SeqEngine", "DaskEngine"), "suffix": ", 3-node chain"},
    "W5": {"module": "w5_stateful.py",
           "names": ["INIT_SECONDS", "CALL_ITERATIONS", "BUILDS", "Model"], "build": "_w5",
           # DaskEngine's default threads cannot beat the GIL here (and take ~20 s):
           # processes are what its docs advise for CPU-bound work.
           "engines": ("SeqEngine", "DaskEngine(processes)")},
    "W6": {"module": "w6_batch_encoding.py",
           "names": ["CALL", "PER_ITEM", "encode_one", "encode_batch"], "build": "_w6",
           "engines": ("SeqEngine", "DaskEngine")},
    # W7 is about results coming back from worker processes: its in-process engines
    # would only restate the in-process floor.
    "W7": {"module": "w7_large_results.py", "names": ["FLOATS", "make_array"], "build": "_w7",
           "engines": ("DaskEngine(processes)",)},
    "W8": {"module": "w8_mixed.py",
           "names": ["FETCH_S", "PARSE_ITERATIONS", "CALL", "PER_ITEM", "page_of",
                     "fetch_page", "parse_page", "encode_text", "encode_texts"],
           "build": "_w8",
           "engines": ("SeqEngine", "DaskEngine")},
}


def _w4_chain(hn, k, n):
    return _w4(hn, k, n, chain=True)


def _engine(name: str):
    if name == "SeqEngine":
        from hypernodes import SeqEngine

        return SeqEngine()
    from hypernodes.engines import DaskEngine

    if name == "DaskEngine":
        return DaskEngine()
    if name == "DaskEngine(processes)":
        return DaskEngine(scheduler="processes")
    raise ValueError(f"unknown engine {name!r}")


def _hello() -> dict:
    import platform
    from importlib import metadata

    vs = {"python": platform.python_version()}
    for pkg in ("hypernodes", "dask", "numpy", "pyarrow"):
        try:
            vs[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"versions": vs, "pid": os.getpid()}


def serve() -> None:
    import hypernodes as hn

    out = sys.stdout
    sys.stdout = sys.stderr  # prints from the library must not corrupt the protocol
    jobs: dict[int, dict] = {}
    kernels: dict[tuple, types.ModuleType] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            op = msg["op"]
            if op == "quit":
                break
            if op == "hello":
                reply = _hello()
            elif op == "setup":
                key = (msg["module"], tuple(msg["names"]))
                if key not in kernels:
                    kernels[key] = load_kernels(msg["module"], msg["names"])
                build = globals()[SCENARIOS[msg["wid"]]["build"]]
                pipeline, inputs, over, expected = build(hn, kernels[key], msg["items"])
                jid = len(jobs) + 1
                jobs[jid] = {"pipeline": pipeline, "inputs": inputs, "over": over,
                             "expected": expected, "engine": _engine(msg["engine"]),
                             "checked": False}
                reply = {"id": jid}
            elif op == "run":
                j = jobs[msg["id"]]
                t0 = time.perf_counter()
                res = j["pipeline"].map(inputs=j["inputs"], map_over=j["over"],
                                        engine=j["engine"])
                seconds = time.perf_counter() - t0
                ok = True
                if not j["checked"]:
                    exp = j["expected"]
                    ok = bool(exp(res)) if callable(exp) else [dict(r) for r in res] == exp
                    j["checked"] = True
                reply = {"seconds": seconds, "ok": ok}
            elif op == "close":
                jobs.pop(msg["id"], None)
                reply = {}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:
            import traceback

            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        print(json.dumps({"python": find_python(), "venv": str(ensure_venv())}))
