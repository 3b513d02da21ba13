"""The package's public surface, and what importing it costs (checked in fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import gilfree
import gilfree.engines


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_every_public_name_resolves():
    for name in gilfree.__all__:
        assert getattr(gilfree, name) is not None, name
    for name in gilfree.engines.__all__:
        assert isinstance(getattr(gilfree.engines, name), type), name
    assert set(gilfree.__all__) <= set(dir(gilfree))


def test_star_import_gives_the_public_api():
    namespace: dict = {}
    exec("from gilfree import *", namespace)
    assert {"Pipeline", "node", "stateful", "DualNode", "SeqEngine"} <= set(namespace)


def test_decorators_are_not_shadowed_by_their_modules():
    # gilfree.node and gilfree.stateful are both a function and a submodule name.
    import gilfree.node  # noqa: F401
    import gilfree.stateful  # noqa: F401

    assert callable(gilfree.node) and callable(gilfree.stateful)


def test_unknown_names_raise_attribute_error():
    for module in (gilfree, gilfree.engines):
        try:
            module.NoSuchThing  # noqa: B018
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise AssertionError("expected AttributeError")


def test_import_gilfree_loads_no_engine_and_no_asyncio():
    loaded = _modules_after("import gilfree")
    heavy = {"asyncio", "gilfree.engines.aio", "gilfree.engines.processes",
             "gilfree.engines.threads", "gilfree.engines.dask_engine", "gilfree.cache",
             "importlib.metadata", "cloudpickle"}
    assert not loaded & heavy, loaded & heavy


def test_a_worker_process_loads_only_what_it_runs():
    # What the forkserver imports before forking workers (see _zygote.zygote_main).
    loaded = _modules_after("import gilfree.remote.zygote\n"
                            "from gilfree import callbacks, engines\n"
                            "from gilfree.model import batch, pipeline\n"
                            "from gilfree.remote import transport\n"
                            "from gilfree.run import execute")
    assert not loaded & {"asyncio", "gilfree.engines.aio", "gilfree.engines.processes",
                         "gilfree.engines.threads", "gilfree.engines.dask_engine",
                         "gilfree.cache", "importlib.metadata", "gilfree.run.progress"}


def test_engines_load_on_first_use():
    loaded = _modules_after("from gilfree.engines import ThreadEngine")
    assert "gilfree.engines.threads" in loaded
    assert not loaded & {"gilfree.engines.processes", "gilfree.engines.dask_engine"}


def test_every_engine_is_exported_at_the_top_level():
    # The quickstart imports SeqEngine from gilfree; every other engine works the same.
    for name in gilfree.engines.__all__:
        assert getattr(gilfree, name) is getattr(gilfree.engines, name)
        assert name in gilfree.__all__


@pytest.mark.parametrize("name", ["SeqEngine", "ThreadEngine", "AsyncEngine",
                                  "ProcessEngine", "DaskEngine"])
def test_a_misspelt_engine_option_names_the_engine_and_the_fix(name):
    cls = getattr(gilfree, name)
    with pytest.raises(TypeError) as info:
        cls(on_eror="collect")
    msg = str(info.value)
    assert msg.startswith(f"{name}: unknown option 'on_eror' (did you mean 'on_error'?)")
    assert "Engine.__init__" not in msg
