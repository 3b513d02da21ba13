"""What DaskEngine's driver sends to the workers and takes back, as bytes that Dask
carries: the remote layer's messages (``remote/messages.py``), pickled by the transport
module, in band (Dask has no memfds to pass). Anything that does not pickle is named
with its input, item and nodes, worded as on ProcessEngine (``remote/driver.py``).
Used by both cluster mode (``dask_engine.py``) and dask's local "processes" scheduler
(``_dask_local.py``)."""

from __future__ import annotations

from typing import Any

from ..run.execute import Runtime
from ..model.plan import Plan
from ..remote import driver
from ..remote.messages import RemoteOptions, Result
from ..run.stages import Skipped


class MapPayload:
    """What every batch of one map shares: its token (the map id workers know it by),
    the pickled Payload, the @stateful keys shipped, which nodes use each input."""

    def __init__(self, token: str, plan: Plan, base: dict, rows: list[dict], rt: Runtime):
        self.token = token
        self.options = RemoteOptions.of(rt)
        self.depth = len(self.options.path)
        self.keys: set[str] = set()
        self.blob, _ = driver.encode_payload(plan, base, self.options, shm=False,
                                             keys=self.keys)
        self.names = list(rows[0])
        self.users = driver.consumers(plan, self.names)

    def batch(self, rows: list[dict], first: int, skip: set[int] | None = None,
              at: int = 0) -> bytes:
        """Map items ``first, ...`` (``rows``) as a pickled Batch; ``skip``: the offsets
        (counted from ``at``, the offset of ``rows[0]`` in the map) of the items that
        failed in an earlier stage: placeholders the worker runs around."""
        failed = {i - at: Skipped() for i in skip or () if at <= i < at + len(rows)}
        body, _ = driver.encode_batch(self.token, rows, first, self.names, self.users,
                                      failed=failed, shm=False, keys=self.keys)
        return body


def answer(body: bytes, a: int, b: int) -> Result:
    """A batch's pickled Result (map items ``a`` to ``b - 1``), its exceptions rebuilt."""
    return driver.decode_result(body, [], a, b)


def identity(blob: bytes) -> Any:
    """The payload task: its bytes, fetched once by each worker that needs them."""
    return blob
