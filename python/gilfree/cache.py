"""``DiskCache``: node results on disk, keyed by signature.

Writes go to a temporary file in the same directory and are then renamed over the
target (``os.replace`` is atomic on POSIX), so concurrent writers, threads or
processes, never leave a torn entry: a reader sees the old entry, the new one, or none.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

_MAGIC = "gilfree-cache-v1"
_MISSING = object()


class DiskCache:
    """A directory of pickled node outputs; ``None`` is a value like any other."""

    def __init__(self, path: str | os.PathLike = ".cache"):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, signature: str) -> Path:
        return self.path / signature[:2] / f"{signature}.pkl"

    def get(self, signature: str, default: Any = None) -> Any:
        """The stored value, or ``default`` when there is none (or it is unreadable)."""
        from .remote import transport  # here: cloudpickle is imported when first needed

        try:
            with open(self._file(signature), "rb") as f:
                tag, value = transport.load_file(f)
        except FileNotFoundError:
            return default
        except Exception:
            return default  # a truncated or foreign file counts as a miss; put() repairs it
        return value if tag == _MAGIC else default

    def has(self, signature: str) -> bool:
        return self.get(signature, _MISSING) is not _MISSING

    def put(self, signature: str, value: Any) -> None:
        from .remote import transport

        target = self._file(signature)
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}."
                               f"{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                transport.dump_file((_MAGIC, value), f)
            os.replace(tmp, target)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            warnings.warn(f"DiskCache could not store a result ({type(exc).__name__}: "
                          f"{exc}); it will be computed again next time", RuntimeWarning)

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r})"
