"""Importable ``@stateful`` classes for the pickling tests (standard ``pickle`` needs the
class to be importable by module and qualified name).

Constructions are counted in ``EVENTS`` (a module-level counter, so that tests read it
without going through the wrapper class) and also in a class attribute ``builds``.
"""

from __future__ import annotations

import collections

from gilfree import stateful

EVENTS: collections.Counter = collections.Counter()


@stateful
class Encoder:
    """A stand-in for an expensive model."""

    builds = 0
    heavy_marker = "HEAVY-STATE-NEVER-PICKLED"

    def __init__(self, scale: int = 1, *, tag: str = "t"):
        EVENTS["Encoder.build"] += 1
        type(self).builds += 1
        self.scale = scale
        self.tag = tag
        # What a real model would hold; it must never travel in a pickle.
        self.weights = self.heavy_marker * 10

    def encode_one(self, x):
        EVENTS["Encoder.encode_one"] += 1
        return x * self.scale

    def encode_many(self, x):
        EVENTS["Encoder.encode_many"] += 1
        return [v * self.scale for v in x]

    def __call__(self, x):
        return x * self.scale

    @classmethod
    def describe(cls):
        return f"{cls.__name__} model"


@stateful
class KeyedEncoder:
    """Defines its own cache key."""

    def __init__(self, version: str, noise: int = 0):
        EVENTS["KeyedEncoder.build"] += 1
        self.version = version
        self.noise = noise

    def __cache_key__(self):
        return f"keyed-{self.version}"


@stateful
class WithTeardown:
    def __init__(self):
        EVENTS["WithTeardown.build"] += 1

    def __teardown__(self):
        EVENTS["WithTeardown.teardown"] += 1

    def ping(self):
        return "pong"
