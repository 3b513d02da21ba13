"""Deterministic, typed value hashing for cache keys.

The digest must be the same in every process and on every run, so nothing here uses
``id()``, ``hash()`` (salted for str) or memory addresses.  Every value is prefixed with
a type tag, so ``1``, ``1.0``, ``True`` and ``"1"`` all hash differently.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import types
import functools
from typing import Any

_MAX_DEPTH = 64


def hash_value(value: Any) -> str:
    """SHA-256 hex digest of ``value`` (see api.md section 6 for the order of rules)."""
    h = hashlib.sha256()
    _feed(h, value, 0)
    return h.hexdigest()


def hash_strings(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _type_tag(value: Any) -> bytes:
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}".encode()


def _feed(h: "hashlib._Hash", value: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("value is nested too deeply (or cyclic) to hash for the cache")
    key_fn = getattr(type(value), "__cache_key__", None)
    if key_fn is not None and not isinstance(value, type):
        h.update(b"K" + _type_tag(value) + b":")
        h.update(str(value.__cache_key__()).encode())
        return
    if value is None:
        h.update(b"N")
    elif isinstance(value, bool):  # before int: bool is an int subclass
        h.update(b"B1" if value else b"B0")
    elif isinstance(value, enum.Enum):
        h.update(b"E" + _type_tag(value) + b":" + value.name.encode() + b";")
        _feed(h, value.value, depth + 1)
    elif isinstance(value, (int, float, str, bytes)):
        # The base type's repr: a subclass may override __repr__, and its instance
        # __dict__ is usually empty, so neither can tell two values apart.
        base = next(b for b in (int, float, str, bytes) if isinstance(value, b))
        h.update(_type_tag(value) + b":" + base.__repr__(value).encode() + b";")
    elif isinstance(value, (list, tuple)):
        h.update(_type_tag(value) + b"[" + str(len(value)).encode() + b"]")
        for item in value:
            _feed(h, item, depth + 1)
    elif isinstance(value, dict):
        h.update(_type_tag(value) + b"{" + str(len(value)).encode() + b"}")
        for k in sorted(value, key=_sort_key):
            _feed(h, k, depth + 1)
            _feed(h, value[k], depth + 1)
    elif isinstance(value, (set, frozenset)):
        h.update(_type_tag(value) + b"<")
        for digest in sorted(hash_value(v) for v in value):
            h.update(digest.encode())
    elif _is_array(value) and getattr(value.dtype, "hasobject", False):
        # Object arrays hold pointers: hash the objects they point to.
        h.update(b"A" + str(value.shape).encode())
        _feed(h, value.tolist(), depth + 1)
    elif _is_array(value):
        h.update(b"A" + str(value.dtype).encode() + str(value.shape).encode())
        h.update(value.tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(b"D" + _type_tag(value))
        for f in dataclasses.fields(value):
            if not f.name.startswith("_"):
                h.update(f.name.encode())
                _feed(h, getattr(value, f.name), depth + 1)
    elif isinstance(value, (types.FunctionType, types.MethodType)):
        from .node import code_hash_of  # node imports this module

        h.update(b"F" + getattr(value, "__qualname__", "").encode() + b":")
        h.update(code_hash_of(value).encode())
        if isinstance(value, types.MethodType):
            _feed(h, value.__self__, depth + 1)
    elif isinstance(value, functools.partial):
        h.update(b"Q")
        _feed(h, value.func, depth + 1)
        _feed(h, value.args, depth + 1)
        _feed(h, value.keywords, depth + 1)
    elif hasattr(value, "__dict__") and not callable(value) and not isinstance(value, type):
        # Objects by their public attributes: private ones (caches, lazily built
        # models) must not change the key.
        h.update(b"O" + _type_tag(value))
        for name in sorted(vars(value)):
            if not name.startswith("_"):
                h.update(name.encode())
                _feed(h, vars(value)[name], depth + 1)
    else:
        from ..remote.transport import pickle_for_digest  # here: importing gilfree needs no cloudpickle

        h.update(b"P" + _type_tag(value))
        try:
            h.update(pickle_for_digest(value))
        except Exception:
            # Functions defined in __main__ or closures: their qualified name is the
            # most stable thing we have.
            h.update(getattr(value, "__qualname__", repr(value)).encode())


def _is_array(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tobytes")


def _sort_key(k: Any) -> tuple[str, str]:
    return (type(k).__name__, repr(k))
