"""``@node``: a plain function plus the names that wire it into a graph."""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any, Callable, Mapping

from .hashing import hash_value

#: Execution hints an engine may honour (engines.md, "Hints").
HINT_NAMES = ("batch_size", "max_concurrency", "executor", "timeout", "retries")
EXECUTORS = ("thread", "process", "async", "inline")


def validate_hints(owner: str, hints: Mapping[str, Any]) -> dict[str, Any]:
    """Check hint names and values; ``owner`` names the node in the messages."""
    unknown = sorted(set(hints) - set(HINT_NAMES))
    if unknown:
        raise TypeError(
            f"{owner}: unknown hint(s) {unknown}; known hints are {list(HINT_NAMES)}"
        )
    for name in ("batch_size", "max_concurrency"):
        v = hints.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{owner}: hint {name}={v!r} must be a positive integer")
    v = hints.get("retries")
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
        raise ValueError(f"{owner}: hint retries={v!r} must be an integer >= 0")
    v = hints.get("timeout")
    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
        raise ValueError(f"{owner}: hint timeout={v!r} must be a positive number of seconds")
    v = hints.get("executor")
    if v is not None and v not in EXECUTORS:
        raise ValueError(f"{owner}: hint executor={v!r} must be one of {list(EXECUTORS)}")
    return dict(hints)


def code_hash_of(*funcs: Callable) -> str:
    """SHA-256 of the functions' source and closure values (stable across processes)."""
    h = hashlib.sha256()
    for func in funcs:
        func = getattr(func, "__func__", func)  # bound methods hash their function
        try:
            h.update(inspect.getsource(func).encode())
        except (OSError, TypeError):
            code = getattr(func, "__code__", None)
            if code is not None:
                h.update(_code_fingerprint(code))
            h.update(getattr(func, "__qualname__", repr(func)).encode())
        for cell in getattr(func, "__closure__", None) or ():
            try:
                h.update(hash_value(cell.cell_contents).encode())
            except ValueError:  # an empty cell (recursive closure)
                h.update(b"<empty cell>")
            except Exception:
                h.update(type(cell.cell_contents).__qualname__.encode())
    return h.hexdigest()


def _code_fingerprint(code: Any) -> bytes:
    """Bytecode and constants, descending into nested code objects (whose repr holds a
    memory address)."""
    parts = [code.co_code, repr(code.co_names).encode()]
    for c in code.co_consts:
        parts.append(_code_fingerprint(c) if hasattr(c, "co_code") else repr(c).encode())
    return b"\0".join(parts)


def signature_info(func: Callable) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parameter names in order and the defaults of the optional ones."""
    params = inspect.signature(func).parameters
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(
                f"{getattr(func, '__name__', func)!r}: *args/**kwargs cannot be wired "
                "into a pipeline; name every input"
            )
    defaults = {n: p.default for n, p in params.items() if p.default is not p.empty}
    return tuple(params), defaults


class Node:
    """A function with an output name (or several) and execution hints."""

    def __init__(
        self,
        func: Callable,
        output_name: str | tuple[str, ...] | None = None,
        cache: bool = True,
        **hints: Any,
    ):
        if isinstance(func, Node):  # re-wrapping a node: wrap its function
            func = func.func
        # First: update_wrapper merges func.__dict__ into ours, it must not override
        # the fields set below.
        functools.update_wrapper(self, func)
        self.func = func
        self.name = func.__name__
        if output_name is None:
            output_name = self.name
        elif isinstance(output_name, list):
            output_name = tuple(output_name)
        if isinstance(output_name, tuple) and not all(isinstance(n, str) for n in output_name):
            raise TypeError(f"node {self.name!r}: output names must be strings")
        if not isinstance(output_name, (str, tuple)):
            raise TypeError(f"node {self.name!r}: output_name must be a str or a tuple of str")
        self.output_name = output_name
        self.cache = cache
        self.hints = validate_hints(f"node {self.name!r}", hints)
        self.root_args, self.defaults = signature_info(func)
        params = inspect.signature(func).parameters.values()
        self.keyword_only = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        self.positional_only = tuple(p.name for p in params if p.kind is p.POSITIONAL_ONLY)
        self.is_async = inspect.iscoroutinefunction(func)
        self._code_hash = code_hash_of(func)

    @property
    def code_hash(self) -> str:
        return self._code_hash

    @property
    def output_names(self) -> tuple[str, ...]:
        """Every output name, as a tuple (one element for a single-output node)."""
        n = self.output_name
        return n if isinstance(n, tuple) else (n,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Node({self.name}, output={self.output_name})"

    def __hash__(self) -> int:
        return hash((self.name, self.output_name))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Node)
            and self.name == other.name
            and self.output_name == other.output_name
        )


def node(
    output_name: str | tuple[str, ...] | Callable | None = None,
    *,
    cache: bool = True,
    **hints: Any,
) -> Any:
    """Make a function a pipeline node: ``@node``, ``@node()``, ``@node("out")``."""
    if callable(output_name) and not isinstance(output_name, (str, tuple)):
        return Node(output_name, None, cache=cache, **hints)
    validate_hints(f"@node({output_name!r})", hints)

    def decorate(func: Callable) -> Node:
        return Node(func, output_name, cache=cache, **hints)

    return decorate
