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


def callable_name(func: Callable) -> str:
    """A node's default name: the function's, a partial's wrapped function's, or the
    class name of a callable instance."""
    name = getattr(func, "__name__", None)
    if isinstance(name, str):
        return name
    if isinstance(func, functools.partial):
        return callable_name(func.func)
    return type(func).__name__


def _is_plain_function(func: Any) -> bool:
    return inspect.isfunction(func) or inspect.ismethod(func) or inspect.isbuiltin(func)


def code_hash_of(*funcs: Callable) -> str:
    """SHA-256 of the functions' source and closure values (stable across processes)."""
    h = hashlib.sha256()
    for func in funcs:
        if isinstance(func, functools.partial):
            # The wrapped function's code plus the arguments bound to it.
            h.update(code_hash_of(func.func).encode())
            h.update(_value_hash((func.args, sorted(func.keywords.items()))).encode())
            continue
        if not _is_plain_function(func) and not isinstance(func, type) and callable(func):
            # A callable instance: its class's code and its attributes.
            h.update(code_hash_of(type(func).__call__).encode())
            h.update(type(func).__qualname__.encode())
            h.update(_value_hash(getattr(func, "__dict__", None)).encode())
            continue
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


def _value_hash(value: Any) -> str:
    try:
        return hash_value(value)
    except Exception:  # unhashable: the code alone identifies the node
        return type(value).__qualname__


def _code_fingerprint(code: Any) -> bytes:
    """Bytecode and constants, descending into nested code objects (whose repr holds a
    memory address)."""
    parts = [code.co_code, repr(code.co_names).encode()]
    for c in code.co_consts:
        parts.append(_code_fingerprint(c) if hasattr(c, "co_code") else repr(c).encode())
    return b"\0".join(parts)


def signature_info(func: Callable) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parameter names in order and the defaults of the optional ones."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{callable_name(func)!r}: its parameters cannot be read "
                        f"({exc}), so they cannot be wired into a pipeline") from None
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(
                f"{callable_name(func)!r}: *args/**kwargs cannot be wired "
                "into a pipeline; name every input"
            )
    defaults = {n: p.default for n, p in params.items() if p.default is not p.empty}
    return tuple(params), defaults


class Outputs:
    """What every node kind (Node, DualNode) answers the same way."""

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

    def _read_signature(self, func: Callable) -> None:
        """The inputs the node takes (``root_args``), their defaults, and which of them
        must be passed by keyword or by position (plan.py calls accordingly)."""
        self.root_args, self.defaults = signature_info(func)
        params = inspect.signature(func).parameters.values()
        self.keyword_only = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        self.positional_only = tuple(p.name for p in params if p.kind is p.POSITIONAL_ONLY)


class Node(Outputs):
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
        if not callable(func):
            raise TypeError(f"a node wraps a function or another callable; "
                            f"{type(func).__name__} {func!r:.60} is not callable")
        # First: update_wrapper merges func.__dict__ into ours, it must not override
        # the fields set below. A callable instance's attributes are its own state,
        # not the function's metadata: they stay on it.
        functools.update_wrapper(self, func, updated=() if not _is_plain_function(func)
                                 else functools.WRAPPER_UPDATES)
        self.func = func
        self.name = callable_name(func)
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
        self._read_signature(func)
        self.is_async = inspect.iscoroutinefunction(func) or (
            not _is_plain_function(func) and not isinstance(func, functools.partial)
            and inspect.iscoroutinefunction(getattr(type(func), "__call__", None)))
        self._code_hash = code_hash_of(func)

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
    if output_name is not None and not isinstance(output_name, (str, tuple, list)):
        raise TypeError(f"@node(output_name={output_name!r}): output_name must be a str or "
                        f"a tuple of str; {type(output_name).__name__} is not callable "
                        "either, so it is not a function to decorate")
    validate_hints(f"@node({output_name!r})", hints)

    def decorate(func: Callable) -> Node:
        return Node(func, output_name, cache=cache, **hints)

    return decorate
