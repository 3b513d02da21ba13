"""Shared fixtures.  ``engine_factory`` lists every engine the contract suite runs on."""

from __future__ import annotations

import importlib.util
import signal

import pytest

from gilfree import engines as _engines
from mixed_engines import CYCLES, mixed

#: DaskEngine runs when dask.distributed is installed (``pip install "dask[distributed]"``).
_HAS_DASK = importlib.util.find_spec("distributed") is not None
ENGINE_NAMES = [n for n in ("SeqEngine", "ThreadEngine", "AsyncEngine", "ProcessEngine",
                            "AutoEngine", "DaftEngine", "DaskEngine")
                if hasattr(_engines, n) and (n != "DaskEngine" or _HAS_DASK)]


# A shell that starts the tests in the background leaves SIGINT ignored, and every child
# process inherits that: the Ctrl-C tests' children would never see KeyboardInterrupt.
# Restore Python's handler, as in a terminal: children started from here then get the
# default disposition back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def dask_client():
    """One LocalCluster (2 worker processes x 1 thread) for the whole session: starting
    one costs ~1 s, so DaskEngines in tests share it through ``client=``."""
    if not _HAS_DASK:
        pytest.skip("dask.distributed is not installed (pip install 'dask[distributed]')")
    from distributed import Client, LocalCluster

    # No dashboard, and the scheduler's small HTTP server (/health) on a free loopback
    # port: nothing beyond loopback, and no clash with 8787.
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = Client(cluster, set_as_default=False)
    yield client
    client.close(timeout=10)
    cluster.close(timeout=10)


# Mixed-executor variants of the local engines (mixed_engines.py): every contract test
# also runs as a map of several stages.
ENGINE_NAMES += [f"{name}+mixed" for name in CYCLES if name in ENGINE_NAMES]


@pytest.fixture(params=ENGINE_NAMES)
def engine_factory(request):
    """Call with engine options (cache=, callbacks=, on_error=...); shut down after."""
    name, _, variant = request.param.partition("+")
    cls = getattr(_engines, name)
    if variant:
        cls = mixed(cls)
    if request.param == "DaskEngine":
        cls = _shared_cluster(cls, request.getfixturevalue("dask_client"))
    made = []

    def make(**options):
        e = cls(**options)
        made.append(e)
        return e

    yield make
    for e in made:
        e.shutdown()


def _shared_cluster(cls, client):
    def make(**options):
        return cls(client=client, **options)
    return make


@pytest.fixture
def engine(engine_factory):
    return engine_factory()
