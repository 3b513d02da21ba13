"""Run the Python examples of HyperNodes' README and docs against gilfree (issue 18's check).

    python tests/compat/run_hypernodes_examples.py PATH/TO/hypernodes [--no-reference] [-v]

Needs Python >= 3.12 with gilfree installed; pyarrow, numpy, daft and dask let the pages
that use them run. Companion of run_hypernodes_tests.py, whose REWRITES it applies: the
import line is the only change a HyperNodes user makes.

For every page (README.md and each docs/**/*.md, *.mdx with code blocks) it extracts the
fenced code blocks and runs the page's runnable blocks in order in ONE namespace, as a
reader pasting them into a Python prompt would (a block that fails does not stop the
next), in a subprocess, in a fresh temporary folder, with a timeout per page.

A block is "not runnable" by these rules, applied in order; the reason is printed:
  1. not a ```python block (shell, install lines, pseudo-code without a language);
  2. not valid Python;
  3. a placeholder: ``...`` used as a value (``nodes=[...]``, ``run(...)``, ``{...}``);
  4. it imports a module that is not installed (e.g. logfire);
  5. when run it reads names that nothing on the page defines (builtins aside; function
     bodies are not counted, they run later): a fragment that leans on code the page
     never shows. Exception: if the only missing names are those
     of the PRELUDE (``pipeline``, ``node``, ``Pipeline``) the page gets the README's
     two-node pipeline prepended, shown as a "prelude" row, and the block runs.
  Blocks skipped by a rule are left out of the page, so later blocks that needed their
  names fall under rule 5 too.

The same blocks, unchanged, also run against HyperNodes itself (``src/`` of the checkout)
unless --no-reference: a block that fails there as well is an example that is broken on
its own (not a gilfree difference) and is reported as such. Exit status 1 when a block
fails on gilfree but passes on HyperNodes (or fails without a reference run).
Nothing here is collected by gilfree's own suite (the file name does not start with test_).
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_hypernodes_tests import rewrite  # noqa: E402  (the same REWRITES)

TIMEOUT_S = 180
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.S | re.M)
PRELUDE = '''\
from hypernodes import Pipeline, node

@node(output_name="cleaned_text")
def clean_text(passage: str) -> str:
    return passage.strip().lower()

@node(output_name="word_count")
def count_words(cleaned_text: str) -> int:
    return len(cleaned_text.split())

pipeline = Pipeline(nodes=[clean_text, count_words])
'''
PRELUDE_PROVIDES = {"pipeline", "node", "Pipeline"}

# Runs in the subprocess: exec each block in __main__'s own namespace (so functions
# defined by the examples pickle by reference, as they would in a pasted script).
RUNNER = r'''
import contextlib, io, json, re, sys, traceback
_gf_blocks = json.load(open(sys.argv[1]))
_gf_results = []
_gf_plain = (dict, list, tuple, int, float, str, bool, type(None))

def _gf_show(value):
    # What a reader sees, minus what differs between any two runs (addresses).
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", repr(value))

for _gf_label, _gf_code, _gf_names in _gf_blocks:
    print(f"----- {_gf_label}", flush=True)
    _gf_out = io.StringIO()
    try:
        with contextlib.redirect_stdout(_gf_out):
            exec(compile(_gf_code, _gf_label, "exec"), globals())
        _gf_seen = {n: _gf_show(globals()[n]) for n in _gf_names
                    if isinstance(globals().get(n), _gf_plain)}
        _gf_results.append([_gf_label, "pass", "", _gf_show(_gf_out.getvalue()), _gf_seen])
    except BaseException as _gf_exc:
        traceback.print_exc()
        _gf_line = traceback.format_exception_only(type(_gf_exc), _gf_exc)[-1].strip()
        _gf_results.append([_gf_label, "fail", _gf_line, "", {}])
    print(_gf_out.getvalue(), flush=True)
    with open(sys.argv[2], "w") as _gf_f:
        json.dump(_gf_results, _gf_f)
'''


def extract_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, line number, code) for each fenced block."""
    out = []
    for m in FENCE.finditer(text):
        lang = (m.group("info").strip().split() or [""])[0].lower()
        line = text.count("\n", 0, m.start()) + 1
        out.append((lang, line, textwrap.dedent(m.group("body"))))
    return out


def _bound_and_loaded(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound and read when the block runs at the prompt. Function and lambda bodies
    are not entered (they run later, if ever: ``load_heavy_model`` inside a method does
    not stop a class definition); decorators, defaults and annotations are."""
    bound, loaded = set(), set()

    def visit(n: ast.AST, top: bool) -> None:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if top:
                bound.add(n.name)
            parts = n.decorator_list + (n.bases + [k.value for k in n.keywords]
                                        if isinstance(n, ast.ClassDef) else [n.args, n.returns])
            for part in parts:
                if part is not None:
                    visit(part, top)
            if isinstance(n, ast.ClassDef):  # a class body runs now, in its own scope
                for stmt in n.body:
                    visit(stmt, False)
            return
        if isinstance(n, ast.arguments):  # defaults and annotations, not the names
            for a in n.posonlyargs + n.args + n.kwonlyargs + [n.vararg, n.kwarg]:
                if a is not None and a.annotation is not None:
                    visit(a.annotation, top)
            for d in n.defaults + [d for d in n.kw_defaults if d is not None]:
                visit(d, top)
            return
        if isinstance(n, ast.Lambda):
            visit(n.args, top)
            return
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, ast.Load):
                loaded.add(n.id)
            elif top:
                bound.add(n.id)
        elif isinstance(n, ast.alias) and top:
            bound.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.comprehension):
            bound.update(x.id for x in ast.walk(n.target) if isinstance(x, ast.Name))
        for child in ast.iter_child_nodes(n):
            visit(child, top)

    visit(tree, True)
    return bound, loaded


def _placeholder(tree: ast.AST) -> bool:
    """``...`` as a value; a ``...`` statement (a stub body) is fine."""
    stubs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return any(isinstance(n, ast.Constant) and n.value is Ellipsis and id(n) not in stubs
               for n in ast.walk(tree))


def _missing_modules(tree: ast.AST) -> list[str]:
    mods = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            mods.update(a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
            mods.add(n.module.split(".")[0])
    mods -= {"hypernodes", "gilfree"}
    return sorted(m for m in mods if importlib.util.find_spec(m) is None)


def _assigned(tree: ast.Module) -> set[str]:
    """Names a block's top-level statements assign: their values are compared."""
    names = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _difference(printed: str, values: dict, ref_printed: str, ref_values: dict) -> str:
    """What a reader would see differ between gilfree and HyperNodes ('' if nothing)."""
    for name in sorted(set(values) | set(ref_values)):
        if values.get(name) != ref_values.get(name):
            return f"{name} = {values.get(name)} (HyperNodes: {ref_values.get(name)})"
    if printed != ref_printed:
        return f"prints {printed!r} (HyperNodes: {ref_printed!r})"
    return ""


def plan_page(blocks: list[tuple[str, int, str]]) -> tuple[list, list]:
    """Rows (label, status, reason) and the runnable (label, code) list, prelude first."""
    rows, runnable, bound, use_prelude = [], [], set(dir(builtins)), False
    for i, (lang, line, code) in enumerate(blocks, 1):
        label = f"#{i} (line {line})"
        if lang not in ("python", "py"):
            rows.append((label, "not runnable", f"rule 1: ```{lang or '(no language)'} block"))
            continue
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            rows.append((label, "not runnable", f"rule 2: not valid Python ({exc.msg})"))
            continue
        if _placeholder(tree):
            rows.append((label, "not runnable", "rule 3: placeholder `...` used as a value"))
            continue
        missing_mods = _missing_modules(tree)
        if missing_mods:
            rows.append((label, "not runnable", f"rule 4: needs {', '.join(missing_mods)}"))
            continue
        b, loaded = _bound_and_loaded(tree)
        undefined = loaded - b - bound
        if undefined and not (undefined <= PRELUDE_PROVIDES):
            rows.append((label, "not runnable",
                         f"rule 5: uses names the page never defines: {', '.join(sorted(undefined))}"))
            continue
        if undefined:
            use_prelude = True
            bound |= _bound_and_loaded(ast.parse(PRELUDE))[0]
        bound |= b
        rows.append((label, "run", ""))
        runnable.append((label, code, sorted(_assigned(tree))))
    if use_prelude:
        rows.insert(0, ("prelude", "run", "README's two-node pipeline (rule 5's exception)"))
        runnable.insert(0, ("prelude", PRELUDE, []))
    return rows, runnable


def run_page(blocks: list[tuple[str, str, list]], env: dict, tmp: Path, tag: str) -> dict:
    """label -> (status, error line, printed output, {assigned name: repr})."""
    work = tmp / tag
    work.mkdir()
    (work / "_runner.py").write_text(RUNNER)
    (work / "_blocks.json").write_text(json.dumps(blocks))
    result_file = work / "_results.json"
    try:
        proc = subprocess.run([sys.executable, "_runner.py", "_blocks.json", str(result_file)],
                              cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        log = proc.stdout + proc.stderr
        crashed = proc.returncode != 0
    except subprocess.TimeoutExpired as exc:
        log, crashed = str(exc.stdout or "") + str(exc.stderr or ""), f"timeout after {TIMEOUT_S}s"
    (work / "_log.txt").write_text(log)
    done = json.loads(result_file.read_text()) if result_file.exists() else []
    results = {label: tuple(rest) for label, *rest in done}
    for label, *_ in blocks:  # blocks never reached: the process timed out or died
        results.setdefault(label, ("fail", crashed if isinstance(crashed, str)
                                   else "process died: " + (log.strip().splitlines() or [""])[-1],
                                   "", {}))
    return results


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    checkout = Path(argv[0]).resolve()
    reference = "--no-reference" not in argv and (checkout / "src" / "hypernodes").is_dir()
    verbose = "-v" in argv
    pages = [checkout / "README.md"] + sorted(
        p for p in (checkout / "docs").rglob("*") if p.suffix in (".md", ".mdx"))
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    gil_env = dict(base_env)
    ref_env = dict(base_env, PYTHONPATH=str(checkout / "src"))
    table, counts, regressions = [], {}, 0
    with tempfile.TemporaryDirectory(prefix="hypernodes-examples-") as tmp_name:
        tmp = Path(tmp_name)
        for n, page in enumerate(pages):
            blocks = extract_blocks(page.read_text())
            if not blocks:
                continue
            name = str(page.relative_to(checkout))
            rows, runnable = plan_page(blocks)
            ours = run_page([(lbl, rewrite(c), a) for lbl, c, a in runnable], gil_env, tmp, f"g{n}") \
                if runnable else {}
            ref = run_page(runnable, ref_env, tmp, f"h{n}") if runnable and reference else {}
            for label, status, reason in rows:
                if status == "run":
                    st, msg, printed, values = ours[label]
                    ref_st = ref.get(label, ("-",))[0]
                    if st == "pass" and ref_st == "pass":
                        diff = _difference(printed, values, *ref[label][2:])
                        if diff:
                            st, msg = "differs", diff
                            regressions += 1
                    if st == "fail" and ref_st == "fail":
                        st = "broken"
                        msg = f"fails on HyperNodes too ({ref[label][1]}); gilfree: {msg}"
                    elif st == "fail":
                        regressions += 1
                    elif ref_st == "fail":  # gilfree does better: say what HyperNodes said
                        msg = f"HyperNodes: {ref[label][1]}"
                    if label == "prelude":
                        msg = msg or reason
                    table.append((name, label, st, ref_st, msg))
                else:
                    table.append((name, label, status, "", reason))
                counts[table[-1][2]] = counts.get(table[-1][2], 0) + 1
            if verbose:
                for tag in (f"g{n}", f"h{n}"):
                    if (tmp / tag / "_log.txt").exists():
                        print(f"===== {name} [{tag}]\n" + (tmp / tag / "_log.txt").read_text())
    w = max(len(f"{p} {b}") for p, b, *_ in table)
    print(f"{'page / block':<{w}}  {'gilfree':<12}  {'HyperNodes':<10}  detail")
    for page, label, st, ref_st, msg in table:
        print(f"{page + ' ' + label:<{w}}  {st:<12}  {ref_st:<10}  {msg}")
    print("\n" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + ("" if reference else " (no HyperNodes reference run)"))
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
