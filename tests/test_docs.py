"""Every ```python block in docs/*.md runs, so the user guide cannot drift from the code.

For each page, its ```python blocks are joined in order and executed as one script,
the way a reader would paste them into a file and run it:

- in a fresh module installed as ``__main__`` (``__name__ == "__main__"``), so classes
  and functions defined in a page pickle by reference with the standard ``pickle``;
- in a temporary working directory, so caches and files a page writes go there;
- compiled with the page's path and each block at its own line number, so a failing
  example's traceback points at the line in the ``.md`` file.

Blocks fenced as ```python no-run (or in any other language, e.g. ```text) are shown,
not run.  Pages are discovered when the tests are collected: a new page is covered
without touching this file.  A page that needs an optional extra (Graphviz, Dask) that
is not installed is skipped with the reason; everything else must pass.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: Modules of optional extras (``gilfree[viz]``, ``gilfree[dask]``): a page whose
#: examples need one that is missing is skipped, not failed.
OPTIONAL_MODULES = {"graphviz", "dask", "distributed"}

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The runnable blocks of a Markdown page: (first code line, 0-based; code).

    A block runs when its info string's first word is ``python`` and no later word is
    ``no-run``.  Closing fences follow CommonMark: same character, at least as long.
    """
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m.group(1)[0] == "`" and "`" in m.group(2)):
            i += 1
            continue
        fence, words = m.group(1), m.group(2).split()
        start = i + 1
        j = start
        while j < len(lines):
            close = lines[j].strip()
            if close.startswith(fence) and set(close) == {fence[0]}:
                break
            j += 1
        if words[:1] == ["python"] and "no-run" not in words[1:]:
            blocks.append((start, "\n".join(lines[start:j])))
        i = j + 1
    return blocks


def page_script(text: str) -> str:
    """The page's runnable blocks as one script, each block at its own line numbers."""
    out: list[str] = []
    for start, code in python_blocks(text):
        out.extend([""] * (start - len(out)))
        out.extend(code.splitlines())
    return "\n".join(out) + "\n"


def doc_pages() -> list[Path]:
    # The README's example is the first code a newcomer runs: it is checked too.
    return sorted(DOCS.glob("*.md")) + [DOCS.parent / "README.md"]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.name)
def test_doc_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = page.read_text(encoding="utf-8")
    if not python_blocks(text):
        pytest.skip(f"{page.name} has no runnable python blocks")
    code = compile(page_script(text), str(page), "exec")

    monkeypatch.chdir(tmp_path)
    # Twice in the same folder, as a reader who runs the examples again: files a first
    # run leaves behind (a .cache) must not change what the second run asserts.
    for run in ("first", "second"):
        # A fresh __main__ with no __file__: pickle finds the page's classes in it, and
        # a spawned worker process does not try to re-run the .md file as its main module.
        main = types.ModuleType("__main__")
        monkeypatch.setitem(sys.modules, "__main__", main)
        try:
            exec(code, main.__dict__)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL_MODULES:
                pytest.skip(f"{page.name} needs the optional module {exc.name!r}")
            raise
        except Exception as exc:
            if type(exc).__name__ == "ExecutableNotFound":  # graphviz's `dot` is missing
                pytest.skip(f"{page.name} needs the Graphviz executables: {exc}")
            exc.add_note(f"in the {run} run of {page.name}'s examples in one folder")
            raise


def test_fence_parsing() -> None:
    """The page parser itself: which blocks run, and where their lines land."""
    page = "\n".join([
        "# Title",                # 0
        "```python",              # 1
        "a = 1",                  # 2
        "```",                    # 3
        "```python no-run",       # 4
        "raise SystemExit",       # 5
        "```",                    # 6
        "```text",                # 7
        "not python",             # 8
        "```",                    # 9
        "````python",             # 10
        "s = '''",                # 11
        "```",                    # 12  (inside a longer fence: not a close)
        "'''",                    # 13
        "````",                   # 14
    ])
    assert python_blocks(page) == [(2, "a = 1"), (11, "s = '''\n```\n'''")]
    script = page_script(page).splitlines()
    assert script[2] == "a = 1" and script[11] == "s = '''"
    namespace: dict = {}
    exec(page_script(page), namespace)
    assert namespace["a"] == 1 and namespace["s"] == "\n```\n"
