"""Loads the C++ extension ``gilfree._core``.

The extension links against ``libtbb.so.12`` from the ``tbb`` wheel, which pip installs
under ``<prefix>/lib``. The extension's RPATH (``$ORIGIN/../../..``) reaches it for the
usual layouts (venv, system, ``--user``); where it does not (the ``tbb`` wheel in a
different prefix than gilfree), we find the library through the ``tbb`` distribution's
file list, load it globally and import again. No LD_LIBRARY_PATH is ever needed.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

__all__ = ["core"]

_TBB_NAMES = ("libtbb.so.12", "libtbb.12.dylib", "tbb12.dll")

_lock = threading.Lock()
_core: ModuleType | None = None


def _preload_tbb() -> str | None:
    """Load libtbb from the installed ``tbb`` wheel; return its path, or None."""
    # Imported here, on the rare path: importlib.metadata alone costs ~15 ms at import,
    # paid by every worker process otherwise.
    import ctypes
    import importlib.metadata

    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name in _TBB_NAMES:
            path = f.locate().resolve()
            if path.exists():
                # RTLD_GLOBAL so the dynamic loader sees it when _core asks for it by soname.
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                return str(path)
    return None


def _load() -> ModuleType:
    try:
        return importlib.import_module("gilfree._core")
    except ImportError as first:
        missing_tbb = "tbb" in str(first)
        if missing_tbb and _preload_tbb() is not None:
            try:
                return importlib.import_module("gilfree._core")
            except ImportError as second:
                first = second
        hint = (
            "the oneTBB runtime was not found: run `pip install tbb`"
            if missing_tbb
            else "reinstall it from its checkout with `pip install --force-reinstall .` "
            "(building from source needs a C++17 compiler and CMake)"
        )
        raise ImportError(
            f"gilfree's native core (gilfree._core) could not be loaded: {first}; {hint}"
        ) from first


def core() -> ModuleType:
    """Return the ``gilfree._core`` extension module, importing it on first use."""
    global _core
    if _core is None:
        with _lock:
            if _core is None:
                _core = _load()
    return _core
