"""Limits of a training run: the allowed range of every numeric setting, and whether the model
fits in the memory there is, checked before anything is built.

    >>> whole("epochs", 0, 1, 1_000_000)
    Traceback (most recent call last):
    ValueError: --epochs 0 must be >= 1 (allowed: 1..1000000)
    >>> real("lr", float("inf"), above=0)
    Traceback (most recent call last):
    ValueError: --lr inf is not a finite number; allowed: a finite number > 0
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass

from pipeline.core import resources

BYTES_PER_TRAINED_PARAM = 16   # fp32 weight + gradient + Adam's two moments
BYTES_PER_PARAM = 4            # fp32 weight alone (evaluation, prediction)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def whole(name: str, value, lo: int, hi: int) -> None:
    """ValueError unless `value` is an int in lo..hi (a bool is not a number here)."""
    allowed = f"allowed: {lo}..{hi}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_flag(name)} {value!r} is not a whole number; {allowed}")
    if value < lo:
        raise ValueError(f"{_flag(name)} {value} must be >= {lo} ({allowed})")
    if value > hi:
        raise ValueError(f"{_flag(name)} {value} must be <= {hi} ({allowed})")


def real(name: str, value, above: float | None = None, at_least: float | None = None,
         below: float | None = None) -> None:
    """ValueError unless `value` is a finite number with value > above, >= at_least and < below
    (each bound optional). nan and +-inf are never allowed."""
    bounds = ([f"> {above:g}"] if above is not None else []) + ([f">= {at_least:g}"] if at_least is not None else []) \
        + ([f"< {below:g}"] if below is not None else [])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{_flag(name)} {value!r} is not a finite number; allowed: a finite number "
                         + " and ".join(bounds))
    if not ((above is None or value > above) and (at_least is None or value >= at_least)
            and (below is None or value < below)):
        raise ValueError(f"{_flag(name)} {value!r} must be " + " and ".join(bounds))


def finite(cfg, prefix: str = "") -> None:
    """ValueError naming the first float field of the dataclass `cfg` (nested ones too) that is nan or +-inf."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            finite(value, prefix)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{_flag(prefix + f.name)} {value!r} is not a finite number; allowed: a finite number")


def available_bytes(device) -> int:
    """Memory a model may still take on `device` (a torch.device): free GPU memory on CUDA, else
    the host's available RAM (psutil)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        if torch.cuda.is_available():  # else loading onto it fails on its own, with its own message
            return int(torch.cuda.mem_get_info(device)[0])
    return resources.available_memory()


def check_fits(need: int, device, what: str, remedy: str, available: int | None = None) -> None:
    """ValueError when `need` bytes exceed what `device` has available: `what` needs X, the device
    has Y; `remedy`."""
    have = available_bytes(device) if available is None else available
    if need > have:
        raise resources.ResourceError(f"{what} needs about {resources.human(need)} of memory but "
                                      f"{getattr(device, 'type', device)} has {resources.human(have)} available; {remedy}")
