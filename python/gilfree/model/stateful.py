"""``@stateful``: expensive objects (models) built lazily, once per worker.

The wrapper stores only the constructor arguments.  The real instance is built on the
first public attribute access or call, under a lock (threads of one engine share it),
and is never pickled: a copy in another process builds its own instance lazily.

Method access does not build: ``model.encode`` returns a small bound proxy that builds
on call.  That keeps ``DualNode(singular=model.encode_one, ...)`` lazy and cheap to ship
to worker processes.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import threading
from typing import Any

#: Marker attribute engines look for (HyperNodes' name kept so existing checks work).
STATEFUL_MARKER = "__hypernode_stateful__"


#: The engine calls (``run``/``map``) in progress in this process, by number. Inside
#: one, a constructor failure is remembered for that call only, so a model whose load
#: failed is not loaded again for every item, while the next map tries once more.
#: Outside any (0), nothing is remembered: direct use retries on the next access.
_map_counter = itertools.count(1)
_active_maps: set[int] = set()
_current_map = 0


def new_map() -> int:
    """An engine call starts in this process (a worker: a new map reaches it)."""
    global _current_map
    _current_map = next(_map_counter)
    _active_maps.add(_current_map)
    return _current_map


def end_map(number: int) -> None:
    """The engine call ``number`` (from ``new_map``) is over."""
    global _current_map
    _active_maps.discard(number)
    if number == _current_map:
        _current_map = max(_active_maps, default=0)


def is_stateful(obj: Any) -> bool:
    return getattr(type(obj), STATEFUL_MARKER, False) is True


def _rebuild(wrapper_cls: type, args: tuple, kwargs: dict) -> Any:
    return wrapper_cls(*args, **kwargs)


class _LazyMethod:
    """``wrapper.method`` before (or regardless of) the instance being built."""

    __slots__ = ("_owner", "_name")

    def __init__(self, owner: "StatefulBase", name: str):
        self._owner = owner
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._owner._gilfree_instance(), self._name)(*args, **kwargs)

    @property
    def __self__(self) -> "StatefulBase":
        return self._owner

    @property
    def __func__(self) -> Any:
        return getattr(self._owner.__wrapped__, self._name)

    @property
    def __name__(self) -> str:
        return self._name

    @property
    def __signature__(self) -> inspect.Signature:
        # The method's signature without ``self``, read from the class (no build).
        sig = inspect.signature(getattr(self._owner.__wrapped__, self._name))
        return sig.replace(parameters=list(sig.parameters.values())[1:])

    def __reduce__(self) -> tuple:
        return (getattr, (self._owner, self._name))

    def __repr__(self) -> str:
        return f"<lazy method {type(self._owner).__name__}.{self._name}>"


class _Forward:
    """A public method of the wrapped class, declared on the wrapper class.

    Without it, ``model.predict(x)`` on a built wrapper first fails the ordinary lookup
    (an AttributeError raised and caught) and then calls ``__getattr__``: 0.63 us per
    call against 0.05 us on the plain instance, 0.18 us with it (best of 5 x 1M calls);
    about 1 % of W5's 60 us model call. It still looks the name up on every access, so
    the instance's own attribute of that name, or a method replaced on the class later,
    is what a call gets, as before.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:  # Model.predict: the wrapped class's function
            return getattr(owner.__wrapped__, self.name)
        inst = obj._instance
        if inst is not None:
            return getattr(inst, self.name)
        return obj.__getattr__(self.name)  # not built: a lazy method, no build


class _StatefulMeta(type):
    """Class-level attribute access on the wrapper reaches the wrapped class.

    Inside the class body's methods the class's own name refers to the wrapper, so
    ``Model.instances += 1`` or ``Model.CONSTANT`` must work on it as on the class.
    """

    def __getattr__(cls, name: str) -> Any:
        wrapped = type.__getattribute__(cls, "__dict__").get("__wrapped__")
        if wrapped is None:
            for base in type.__getattribute__(cls, "__mro__"):
                wrapped = base.__dict__.get("__wrapped__")
                if wrapped is not None:
                    break
        if wrapped is None:
            raise AttributeError(name)
        return getattr(wrapped, name)

    def __setattr__(cls, name: str, value: Any) -> None:
        wrapped = cls.__dict__.get("__wrapped__")
        # A _Forward is the wrapper's own (cloudpickle sets them back when it rebuilds a
        # class by value): on the wrapped class it would forward the instance to itself.
        if (wrapped is not None and not name.startswith("__") and hasattr(wrapped, name)
                and not isinstance(value, _Forward)):
            setattr(wrapped, name, value)
        else:
            type.__setattr__(cls, name, value)


class StatefulBase(metaclass=_StatefulMeta):
    """Base of every ``@stateful`` wrapper class."""

    __hypernode_stateful__ = True
    __gilfree_stateful__ = True
    __wrapped__: type

    def __init__(self, *args: Any, **kwargs: Any):
        object.__setattr__(self, "_init_args", args)
        object.__setattr__(self, "_init_kwargs", kwargs)
        object.__setattr__(self, "_instance", None)
        object.__setattr__(self, "_lock", threading.Lock())
        # (map number, exception) of the last failed build; see _gilfree_instance.
        object.__setattr__(self, "_failure", None)

    # -- building ---------------------------------------------------------------------
    def _gilfree_instance(self) -> Any:
        inst = self._instance
        if inst is None:
            # Double-checked: many threads may race to the first call; one builds.
            with self._lock:
                inst = self._instance
                if inst is None:
                    inst = self._build()
        return inst

    def _build(self) -> Any:
        # A constructor that failed is not run again in the same map: a model load that
        # fails after 30 s must not be retried once per item. Every later use in this
        # map fails with a copy of the same error (its cause: the original, with the
        # constructor's traceback); the next map (new_map) tries once more.
        failure, current = self._failure, _current_map
        if failure is not None and current and failure[0] == current:
            raise _repeat_failure(type(self).__name__, failure[1])
        try:
            inst = self.__wrapped__(*self._init_args, **self._init_kwargs)
        except Exception as exc:
            if current:
                object.__setattr__(self, "_failure", (current, exc))
            raise
        object.__setattr__(self, "_failure", None)
        object.__setattr__(self, "_instance", inst)
        return inst

    def _gilfree_new_map(self) -> None:
        """Forget a remembered constructor failure: the next use builds again."""
        object.__setattr__(self, "_failure", None)

    @property
    def _is_built(self) -> bool:
        return self._instance is not None

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found on the wrapper itself.
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        inst = self._instance
        if inst is not None:  # the per-call path once built: no inspect (~15 us) per call
            return getattr(inst, name)
        static = inspect.getattr_static(self.__wrapped__, name, None)
        if inspect.isfunction(static) and self._instance is None:
            return _LazyMethod(self, name)
        return getattr(self._gilfree_instance(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._gilfree_instance(), name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inst = self._gilfree_instance()
        if not callable(inst):
            raise TypeError(f"{type(self).__name__} object is not callable")
        return inst(*args, **kwargs)

    def __teardown__(self) -> None:
        """Engines call this at worker shutdown; forwards to the class's own hook."""
        inst = self._instance
        hook = getattr(inst, "__teardown__", None)
        if hook is not None:
            hook()

    def _gilfree_release(self) -> None:
        """Tear the built instance down and forget it (a later use builds it again)."""
        with self._lock:
            if self._instance is None:
                return
            try:
                self.__teardown__()
            finally:
                object.__setattr__(self, "_instance", None)

    # -- identity for caches and pickling ---------------------------------------------
    def __cache_key__(self) -> str:
        own = getattr(self.__wrapped__, "__cache_key__", None)
        if own is not None:
            return str(self._gilfree_instance().__cache_key__())
        from .hashing import hash_value

        h = hashlib.sha256(self.__wrapped__.__qualname__.encode())
        h.update(hash_value(self._init_args).encode())
        h.update(hash_value(self._init_kwargs).encode())
        return h.hexdigest()

    def __reduce__(self) -> tuple:
        # The class travels by reference (module.qualname resolves to this wrapper) or,
        # for __main__/notebook classes, by value through cloudpickle; never the instance.
        return (_rebuild, (type(self), self._init_args, self._init_kwargs))

    def __repr__(self) -> str:
        if self._instance is None:
            return f"<{type(self).__name__} (not initialized)>"
        return repr(self._instance)


def _repeat_failure(name: str, exc: Exception) -> Exception:
    """A fresh exception equal to ``exc`` (same type and arguments), for the next item
    that needs an object whose constructor already failed; the same object raised
    again would grow its traceback and notes with every item."""
    try:
        again = copy.copy(exc)
    except Exception:  # an exception type that cannot be rebuilt from its args
        return exc
    if type(again) is not type(exc):
        return exc
    again.__traceback__ = None
    again.__cause__ = exc
    # Not "gilfree: ...": errors.annotate adds the node and item note after this one.
    again.__notes__ = [f"@stateful {name}: its constructor already failed in this "
                       "process during this map (the cause above); not run again"]
    return again


def stateful(cls: type) -> type:
    """Wrap ``cls`` so that constructing it is free and building happens on first use."""
    if not isinstance(cls, type):
        raise TypeError(f"@stateful decorates a class, not {type(cls).__name__}")
    namespace: dict[str, Any] = {
        "__wrapped__": cls,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    for name in dir(cls):
        # Public plain methods only (what __getattr__ would forward); names that type or
        # the wrapper itself answer stay theirs.
        if name.startswith("_") or hasattr(StatefulBase, name) or hasattr(type, name):
            continue
        if inspect.isfunction(inspect.getattr_static(cls, name, None)):
            namespace[name] = _Forward(name)
    return _StatefulMeta(cls.__name__, (StatefulBase,), namespace)
