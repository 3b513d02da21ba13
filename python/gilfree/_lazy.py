"""Names of a package imported on first use (PEP 562), for ``gilfree`` and
``gilfree.engines``: ``import gilfree`` stays cheap, which every worker process pays."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_names(package: str, namespace: dict[str, Any], table: dict[str, str],
               public: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name in ``table`` (name -> relative
    module) is imported on first access and then kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = namespace[name] = getattr(import_module(module, package), name)
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
