"""``python -m gilfree demo``: one pipeline on every engine, timed side by side.

The pipeline is a small version of the seed workloads: fetch a page (blocking I/O),
parse it (pure Python), score it with a ``@stateful`` model that is expensive to build.
Each engine runs the same map twice: cold (new engine, pools and model start-up
included) and warm (the same engine again, as a notebook re-running a cell would).
"""

from __future__ import annotations

import time

from . import engines as engines_module
from .model.node import node
from .model.pipeline import Pipeline
from .model.stateful import stateful

ITEMS = 64
FETCH_SECONDS = 0.005
MODEL_BUILD_SECONDS = 0.1


@stateful
class KeywordModel:
    """Stands in for a model: slow to build, cheap to call."""

    builds = 0

    def __init__(self, keywords: tuple[str, ...]):
        time.sleep(MODEL_BUILD_SECONDS)  # loading weights
        KeywordModel.builds += 1
        self.keywords = set(keywords)

    def score(self, tokens: list[str]) -> int:
        return sum(t in self.keywords for t in tokens)


@node(output_name="page")
def fetch(url: str) -> str:
    time.sleep(FETCH_SECONDS)  # a network round trip
    n = int(url.rsplit("/", 1)[-1])
    return " ".join(f"word{(n * k) % 37}" for k in range(200))


@node(output_name="tokens")
def parse(page: str) -> list[str]:
    return [w.upper() for w in page.split() if not w.endswith("7")]


@node(output_name="score")
def score(tokens: list[str], model: KeywordModel) -> int:
    return model.score(tokens)


def build_pipeline() -> Pipeline:
    return Pipeline([fetch, parse, score], name="demo")


def available_engines() -> list[str]:
    order = ["SeqEngine", "ThreadEngine", "AsyncEngine", "ProcessEngine", "AutoEngine",
             "DaskEngine"]
    return [n for n in order if hasattr(engines_module, n)]


def run_demo(items: int = ITEMS) -> list[dict]:
    urls = [f"https://example.invalid/page/{i}" for i in range(items)]
    pipeline = build_pipeline()
    rows, reference = [], None
    for name in available_engines():
        try:
            engine = getattr(engines_module, name)()
        except Exception as exc:  # an optional extra that is not installed
            rows.append({"engine": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        with engine:
            model = KeywordModel(("WORD3", "WORD5", "WORD11"))
            inputs = {"url": urls, "model": model}
            builds_before = KeywordModel.builds
            timings = []
            for _ in range(2):
                t0 = time.perf_counter()
                out = pipeline.map(inputs, map_over="url", engine=engine)
                timings.append(time.perf_counter() - t0)
            scores = [r["score"] for r in out]
            if reference is None:
                reference = scores
            rows.append({
                "engine": name, "cold": timings[0], "warm": timings[1],
                "same": scores == reference,
                "builds": KeywordModel.builds - builds_before,
            })
    return rows


def format_table(rows: list[dict], items: int) -> str:
    base = next((r["warm"] for r in rows if r.get("engine") == "SeqEngine" and "warm" in r), None)
    lines = [f"{items} items: fetch ({FETCH_SECONDS * 1e3:.0f} ms I/O) -> parse -> "
             f"score (@stateful model, {MODEL_BUILD_SECONDS * 1e3:.0f} ms to build)", "",
             f"{'engine':<14}{'cold (s)':>10}{'warm (s)':>10}{'speedup':>9}"
             f"{'model builds*':>15}{'same result':>13}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['engine']:<14}  unavailable: {r['error']}")
            continue
        speedup = f"{base / r['warm']:.1f}x" if base else "-"
        builds = "per worker" if r["engine"] in ("ProcessEngine", "DaskEngine") else r["builds"]
        lines.append(f"{r['engine']:<14}{r['cold']:>10.3f}{r['warm']:>10.3f}{speedup:>9}"
                     f"{builds!s:>15}{'yes' if r['same'] else 'NO':>13}")
    lines += ["", "* builds counted in this process, over both runs (cold + warm).",
              "  speedup = SeqEngine warm time / engine warm time."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gilfree demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=ITEMS, help="map size (default %(default)s)")
    args = parser.parse_args(argv)
    print(_core_line())
    print(format_table(run_demo(args.items), args.items))
    return 0


def _core_line() -> str:
    try:
        from ._native import core

        c = core()
        return f"gilfree C++ core loaded (oneTBB {c.tbb_version()}, {c.hardware_concurrency()} hardware threads)\n"
    except Exception as exc:
        return f"gilfree C++ core NOT available: {exc}\n"
