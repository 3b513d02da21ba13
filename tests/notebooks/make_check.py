"""Write check.ipynb, the notebook that tests/test_notebook.py runs headless.

Kept as a script so the notebook stays reviewable as code; rerun it after editing:
``python tests/notebooks/make_check.py``.  The cells print lines that the test reads
back (``name: value``), so an assertion failure shows what the kernel saw.
"""

from __future__ import annotations

import json
from pathlib import Path

CELLS = [
    # The kernel's own interpreter: the test checks it is the test environment's.
    '''import asyncio
import os
import sys

from gilfree import AsyncEngine, Pipeline, ProcessEngine, ProgressCallback, node, stateful

print("prefix:", sys.prefix)''',
    # A @stateful class and functions defined in cells: ProcessEngine must ship them
    # to its workers by value (they live in __main__, which the workers cannot import).
    '''@stateful
class Tokenizer:
    def __init__(self, lower):
        self.lower = lower

    def split(self, text):
        return (text.lower() if self.lower else text).split()


@node(output_name="words")
def tokenize(text, tokenizer):
    return tokenizer.split(text)


@node(output_name=("count", "pid"))
def count(words):
    return len(words), os.getpid()


pipeline = Pipeline([tokenize, count], name="words").bind(tokenizer=Tokenizer(lower=True))''',
    '''texts = ["A b", "c D e", "f", "g h i j"]
with ProcessEngine(workers=2, callbacks=[ProgressCallback()]) as engine:
    results = pipeline.map(inputs={"text": texts}, map_over="text", engine=engine)
print("counts:", [r["count"] for r in results])
print("in workers:", all(r["pid"] != os.getpid() for r in results))''',
    # Top-level await: the cell runs inside Jupyter's event loop.
    '''@node(output_name="doubled")
async def slow_double(x):
    await asyncio.sleep(0.01)
    return 2 * x


apipe = Pipeline([slow_double], name="async", engine=AsyncEngine())
out = await apipe.engine.amap(apipe, inputs={"x": [1, 2, 3]}, map_over="x")
print("amap:", [r["doubled"] for r in out])
print("loop running:", asyncio.get_running_loop().is_running())''',
    # A plain (blocking) map on AsyncEngine from a cell: Jupyter's loop is running on
    # this thread, so the engine must not call asyncio.run here.
    '''res = apipe.map(inputs={"x": [4, 5]}, map_over="x")
print("map:", [r["doubled"] for r in res])''',
    # The last expression displays inline: gilfree's drawing needs no Graphviz.
    '''pipeline.visualize()''',
]


def notebook() -> dict:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}",
              "metadata": {}, "outputs": [], "source": src.splitlines(keepends=True)}
             for i, src in enumerate(CELLS)]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"},
                         "language_info": {"name": "python"}}}


if __name__ == "__main__":
    path = Path(__file__).with_name("check.ipynb")
    path.write_text(json.dumps(notebook(), indent=1) + "\n")
    print(f"wrote {path}")
