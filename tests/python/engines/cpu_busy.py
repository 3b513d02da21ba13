"""Pure-Python CPU work for the engine tests (it holds the GIL: worker processes pay)."""


def spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i % 7
    return s
