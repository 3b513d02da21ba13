"""Shared fixtures.  ``engine_factory`` lists every engine the contract suite runs on."""

from __future__ import annotations

import pytest

from gilfree import engines as _engines

ENGINE_NAMES = [n for n in ("SeqEngine", "ThreadEngine", "AsyncEngine") if hasattr(_engines, n)]


@pytest.fixture(params=ENGINE_NAMES)
def engine_factory(request):
    """Call with engine options (cache=, callbacks=, on_error=...); shut down after."""
    cls = getattr(_engines, request.param)
    made = []

    def make(**options):
        e = cls(**options)
        made.append(e)
        return e

    yield make
    for e in made:
        e.shutdown()


@pytest.fixture
def engine(engine_factory):
    return engine_factory()
