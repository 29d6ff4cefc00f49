"""Bounded resources: estimate what a step needs before allocating it, and refuse in one line.

A MemoryError half-way through leaves a partial output and a traceback; an estimate made from
the config alone costs nothing and leaves nothing behind.
"""
from __future__ import annotations


def available_memory() -> int:
    """Bytes the OS can give this process now without swapping (psutil's `available`)."""
    import psutil

    return int(psutil.virtual_memory().available)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


class ResourceError(ValueError):
    """A request that cannot fit in this machine's memory; the message says how much and why."""


def require_memory(needed: int, what: str, advice: str, available: int | None = None) -> None:
    """Raise ResourceError when `needed` bytes exceed what is available."""
    have = available_memory() if available is None else available
    if needed > have:
        raise ResourceError(f"{what} needs about {human(needed)} of memory, {human(have)} is available; {advice}")
