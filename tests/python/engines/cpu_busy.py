"""Pure-Python CPU work for the engine tests (it holds the GIL: worker processes pay)."""


def spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i % 7
    return s


class Unlocked:
    """A context manager that pickles (a lock stand-in that worker processes can take)."""

    def __enter__(self) -> "Unlocked":
        return self

    def __exit__(self, *exc: object) -> None:
        return None
