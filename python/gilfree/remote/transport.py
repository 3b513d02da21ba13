"""Everything that crosses a process boundary goes through here: the one module that pickles.

    driver                                   frame                          worker
    dumps(obj) ── cloudpickle, protocol 5 ──▶ body: buffer table + pickle ──▶ loads(body, fds)
                  buffers >= 64 KiB out of    fds:  one memfd holding the       maps the memfd,
                  band, copied once into a          large buffers (numpy           arrays are views
                  memfd (not through a pipe)        arrays, bytes)                 of it: no copy

- cloudpickle, so that functions, lambdas and classes defined in ``__main__`` or a notebook
  travel by value; everything importable still goes by reference. Code sent by value
  keeps its file name (``Pickler``), so a worker's traceback names the file and line.
- Protocol 5 out-of-band buffers: a large numpy array or bytes object is copied once,
  into an anonymous ``memfd`` segment, whose descriptor rides with the frame (SCM_RIGHTS,
  see cpp/include/gilfree/frame.hpp). The receiver maps it and unpickles views of it.
  A memfd has no name: nothing can leak in /dev/shm, whoever dies when.
- ``@stateful`` objects travel as (key, pickle); a worker resolves the key to the one
  instance it keeps for it, so a model is built at most once per worker process, across
  batches and across calls (the registry of ``remote/session.py``).
- What the remote engines send is named in ``remote/messages.py``; this module only
  pickles. It is also the only one that does for anyone else: DiskCache's files
  (``dump_file``/``load_file``), DaskEngine's cluster host (the same), stateful keys.
- Engines (``pipeline.engine``) stay behind: a worker has no use for the driver's pool.
- Exceptions travel boxed (``box_exception``): the original type with the remote
  traceback as ``__cause__`` when it pickles both ways, else a ``RemoteError`` carrying
  the type name, message, notes and traceback as text. Never a hang, never a lost error.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import pickle
import struct
import sys
import threading
import traceback
import types
import uuid
import weakref
from collections import ChainMap
from typing import Any, Callable, Iterable

import cloudpickle

from ..errors import ExecutionError, SerializationError
from ..model.stateful import is_stateful

#: Buffers at least this large go through shared memory; smaller ones stay in the pickle
#: (a memfd costs a few syscalls, a copy of a small buffer costs less).
SHM_THRESHOLD = 64 * 1024
_PAGE = mmap.PAGESIZE
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # pre-fault in one call, not page by page


class RemoteError(ExecutionError):
    """An exception raised in a worker process that could not be rebuilt in the driver
    (it did not pickle, or not unpickle); its type, message and traceback as text."""


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of a re-raised worker exception: the traceback in the worker."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# -- pickling ---------------------------------------------------------------------------
_CLASS_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stateful_key(obj: Any) -> str:
    """Worker-side identity of a @stateful object: its class object (a class redefined in
    a notebook is new code) and its constructor arguments, not the object's identity:
    re-running the cell that creates ``Model("x")`` must not build it again."""
    cid = _CLASS_IDS.setdefault(type(obj), uuid.uuid4().hex)
    args = pickle_by_value((obj._init_args, obj._init_kwargs))
    return hashlib.blake2b(cid.encode() + args, digest_size=16).hexdigest()


#: cloudpickle's reduction of a code object (a function's body sent by value).
_cloudpickle_code = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _reduce_code(code: types.CodeType) -> tuple:
    """cloudpickle's reduction, plus the code's file name: cloudpickle 3.1.3 writes
    ``<dynamic-code>`` instead (for payloads that do not depend on where a function was
    defined), and a worker's traceback then lost the file and source line of every frame
    of a function defined in ``__main__`` or a notebook."""
    rebuild, args = _cloudpickle_code(code)
    return _code_in_file, (rebuild, args, code.co_filename)


def _code_in_file(rebuild: Callable, args: tuple, filename: str) -> types.CodeType:
    code = rebuild(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


class Pickler(cloudpickle.Pickler):
    """cloudpickle, with code sent by value keeping its file name. What every engine
    that sends work to other processes pickles with."""

    dispatch_table = ChainMap({types.CodeType: _reduce_code},
                              cloudpickle.Pickler.dispatch_table)


def pickle_by_value(obj: Any) -> bytes:
    """``obj`` pickled with ``Pickler`` (protocol 5, buffers in band)."""
    out = io.BytesIO()
    Pickler(out, protocol=5).dump(obj)
    return out.getvalue()


class _Pickler(Pickler):
    """``Pickler`` with the remote rules: large buffers out of band (``buffers``),
    @stateful objects as keys (collected in ``keys`` when given: what a driver shipped,
    to release at shutdown), engines left behind."""

    def __init__(self, file: Any, buffers: list | None, keys: set[str] | None = None):
        # The callback is not a bound method of this pickler: that made each pickler a
        # reference cycle, freed only by the cyclic GC, and until then its memo held the
        # rows it pickled and its file their pickle (a process stage of 1 MiB items: ~50
        # dead picklers, 250 MiB of the driver's memory, at read_ahead=16).
        super().__init__(file, protocol=5,
                         buffer_callback=None if buffers is None else _taker(buffers))
        self._keys = keys

    def reducer_override(self, obj: Any) -> Any:
        # Called for non-builtin objects only: lists of ints and dicts cost nothing here.
        if is_stateful(obj):
            from .session import stateful_instance

            key = stateful_key(obj)
            if self._keys is not None:
                self._keys.add(key)
            return stateful_instance, (key, pickle_by_value(obj))
        if _is_engine(obj):
            return _no_engine, ()
        return super().reducer_override(obj)


def _taker(buffers: list) -> Callable[[pickle.PickleBuffer], bool]:
    """A pickler's ``buffer_callback``: large contiguous buffers go out of band (into
    ``buffers``), the rest in band."""
    def take(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: let it go in band
            return True
        if raw.nbytes < SHM_THRESHOLD:
            return True
        buffers.append(raw)
        return False
    return take


def _is_engine(obj: Any) -> bool:
    # A class attribute, not isinstance: this layer sits below the engines.
    return getattr(type(obj), "_gilfree_engine", False) is True


def _no_engine() -> None:
    return None


# -- files ----------------------------------------------------------------------------
def dump_file(obj: Any, file: Any) -> None:
    """Write ``obj`` to a binary file (DiskCache's entries, DaskEngine's cluster options):
    the standard pickle when it can (classes by reference, so a later run of the same
    code reads them back as its own classes), else ``Pickler`` (lambdas, code defined in
    ``__main__`` or a notebook: by value)."""
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data = pickle_by_value(obj)
    file.write(data)


def load_file(file: Any) -> Any:
    """The object ``dump_file`` wrote to ``file`` (reads exactly that much)."""
    return pickle.load(file)


def pickle_for_digest(value: Any) -> bytes:
    """``value`` as the standard pickle (protocol 4, classes by reference): bytes for a
    cache key's digest (hashing.py), the same in every process and run."""
    return pickle.dumps(value, protocol=4)


_TABLE = struct.Struct("<I")
_ENTRY = struct.Struct("<QQ")


class Spill:
    """Large buffers of one frame, appended to one memfd as objects are pickled.

    A worker pickles its results part by part (``part``) as sub-batches finish, so a
    result's arrays are copied out and freed while the next ones are computed: the
    process reuses the same memory instead of faulting in fresh pages for a whole batch.
    """

    def __init__(self, shm: bool = True) -> None:
        self.fd: int | None = None
        self.size = 0
        self.shm = shm  # False: everything in band (bytes that travel alone, e.g. Dask's)

    def body(self, obj: Any, shm: bool | None = None,
             keys: set[str] | None = None) -> bytes:
        """``obj`` pickled: a buffer table (offsets into the memfd), then the pickle."""
        buffers: list[memoryview] | None = [] if (self.shm if shm is None else shm) else None
        out = io.BytesIO()
        _Pickler(out, buffers, keys).dump(obj)
        table = [_TABLE.pack(len(buffers or ()))]
        for b in buffers or ():
            table.append(_ENTRY.pack(self._write(b), b.nbytes))
        return b"".join(table) + out.getbuffer()

    def part(self, obj: Any) -> "_Part":
        """``obj`` pickled now, to be embedded in the frame's main object."""
        return _Part(self.body(obj))

    def _write(self, b: memoryview) -> int:
        if self.fd is None:
            self.fd = os.memfd_create("gilfree-buffers", os.MFD_CLOEXEC)
        off = self.size
        n = b.nbytes
        # pwrite, not mmap + memcpy: the kernel copies straight into fresh shmem pages,
        # which it then need not zero, and this process takes no page faults (measured:
        # half the time of a MAP_POPULATE'd mapping for 250 MiB).
        done = 0
        while done < n:
            done += os.pwrite(self.fd, b[done:], off + done)
        self.size = off + -(-n // _PAGE) * _PAGE  # page-aligned: views map cleanly
        return off

    def fds(self) -> list[int]:
        """The memfd (ownership passes to the caller), if any buffer was written."""
        if self.fd is None:
            return []
        os.ftruncate(self.fd, self.size)
        fd, self.fd = self.fd, None
        return [fd]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Part:
    """A pickle inside a pickle, whose buffers live in the frame's memfd."""

    __slots__ = ("body",)

    def __init__(self, body: bytes):
        self.body = body

    def __reduce__(self) -> tuple:
        return (_load_part, (self.body,))


_mapping = threading.local()  # the memfd mapping of the frame being unpickled


def _load_part(body: bytes) -> Any:
    return _unpickle(body, getattr(_mapping, "view", None))


class _Unpickler(pickle.Unpickler):
    """pickle's (C) unpickler, with the names of globals interned.

    Why: CPython (3.11) keeps a reference to the name of each attribute lookup in its
    type attribute cache (4096 slots, chosen by the name string's address), and
    ``pickle.loads`` makes a fresh name string for each global of each frame
    (``_load_part``, a result's class). So batches' results left ~60-byte strings alive,
    each in whatever 1 MiB pymalloc arena it was allocated among a batch's results: a
    ProcessEngine driver mapping 1M items grew ~10 MiB per map, map after map (issue 14,
    defect 9; 114 -> 227 MiB from the 2nd to the 14th map). An interned name is the same
    object each time: one slot, nothing pinned (now flat). The file-based unpickler
    reads a BytesIO over bytes (shared, not copied) as fast as ``pickle.loads``
    (a list of 1M ints: 30 ms either way).
    """

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(sys.intern(module), sys.intern(name))


def unpickle(data: bytes, buffers: Iterable[Any] | None = None, start: int = 0) -> Any:
    """``pickle.loads(data[start:], buffers=buffers)`` without pinning memory (see
    ``_Unpickler``): what a driver that unpickles many frames from workers should use."""
    f = io.BytesIO(data)
    f.seek(start)
    return _Unpickler(f, buffers=buffers).load()


def _unpickle(body: bytes, view: memoryview | None) -> Any:
    (count,) = _TABLE.unpack_from(body, 0)
    start = _TABLE.size + count * _ENTRY.size
    bufs = []
    for k in range(count):
        off, n = _ENTRY.unpack_from(body, _TABLE.size + k * _ENTRY.size)
        bufs.append(view[off:off + n])
    # The views keep the mapping alive as long as any unpickled array uses it.
    return unpickle(body, bufs, start)


def dumps(obj: Any, shm: bool = True, spill: Spill | None = None,
          keys: set[str] | None = None) -> tuple[bytes, list[int]]:
    """``obj`` as (frame body, memfd descriptors; none when not ``shm``): raises whatever
    pickling raises. ``keys`` collects the keys of the @stateful objects in ``obj``."""
    spill = spill or Spill(shm)
    try:
        body = spill.body(obj, shm if spill.shm else False, keys)
    except BaseException:
        spill.close()
        raise
    return body, spill.fds()


def loads(body: bytes, fds: list[int]) -> Any:
    """Inverse of ``dumps``; takes ownership of (closes) ``fds``."""
    try:
        view = None
        if fds:
            size = os.fstat(fds[0]).st_size
            if size:
                view = memoryview(mmap.mmap(fds[0], size, flags=mmap.MAP_SHARED | _POPULATE))
        saved = getattr(_mapping, "view", None)
        _mapping.view = view
        try:
            return _unpickle(body, view)
        finally:
            _mapping.view = saved
    finally:
        for fd in fds:
            os.close(fd)


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)


def content_key(body: bytes, fds: list[int]) -> bytes:
    """A digest of a frame's content (body and shared-memory buffers): equal payloads are
    shipped to a worker once, however often a notebook cell re-runs the map."""
    h = hashlib.blake2b(body, digest_size=16)
    for fd in fds:
        size = os.fstat(fd).st_size
        if size:
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mm:
                h.update(mm)
    return h.digest()


class _Discard:
    """A file that keeps nothing: pickling only to see whether something pickles."""

    def write(self, data: Any) -> int:
        return len(data)


def find_unpicklable(parts: Callable[[], dict[str, Any]]) -> str | None:
    """The label of the first part that does not pickle, with the reason. (Nothing is
    kept, and large buffers are not copied: cheap for big arrays too.)"""
    for label, value in parts().items():
        try:
            _Pickler(_Discard(), []).dump(value)
        except Exception as why:
            return f"{label} ({type(value).__name__}: {type(why).__name__}: {why})"
    return None


def serialization_error(what: str, direction: str, exc: BaseException) -> SerializationError:
    err = SerializationError(
        f"cannot send {what} {direction}. Worker processes receive everything by pickle: "
        "pass picklable values, or create the object inside a node or a @stateful class")
    err.__cause__ = exc
    return err


def output_error(bad: dict, producer: dict[str, str], item: int) -> SerializationError:
    """The error of a map item whose outputs do not pickle (``bad``: output name, or None
    for a whole result, -> the pickling error), naming each output, the node that
    produced it and the item; every worker runtime words it so."""
    from ..errors import annotate

    what = " and ".join(
        "the result" if o is None else
        f"output {o!r} of node {producer[o]!r}" if o in producer else f"output {o!r}"
        for o in bad)
    why = next(iter(bad.values()))
    err = SerializationError(
        f"cannot send {what} (map item {item}) back to the driver (worker -> driver): "
        f"{type(why).__name__}: {why}. Return picklable values, or keep such objects "
        "inside a node or a @stateful class")
    first_bad = next(iter(bad))
    if first_bad in producer:
        annotate(err, producer[first_bad], item)
    err.nodes = tuple(dict.fromkeys(producer[o] for o in bad if o in producer))
    err.value = "output"
    err.what = (" and ".join("its result" if o is None else f"its output {o!r}" for o in bad)
                + f" (map item {item}: {type(why).__name__}: {why})")
    return err


# -- exceptions -------------------------------------------------------------------------
class BoxedException:
    """An exception on its way to the driver (see the module docstring)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self) -> tuple:
        exc = self.exc
        tb = "".join(traceback.format_exception(exc))
        notes = list(getattr(exc, "__notes__", ()))
        try:
            blob = pickle_by_value(exc)
        except Exception:
            blob = None
        return (_rebuild_exception, (blob, type(exc).__qualname__, str(exc), notes, tb))


def box_exception(exc: BaseException) -> BoxedException:
    return BoxedException(exc)


def _rebuild_exception(blob: bytes | None, type_name: str, message: str, notes: list,
                       tb: str) -> BaseException:
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if exc is None:
        exc = RemoteError(f"{type_name}: {message} (the exception could not be rebuilt in "
                          "the driver; the remote traceback follows)")
        for n in notes:
            exc.add_note(n)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc
