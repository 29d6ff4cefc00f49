"""Which device a stage runs on: one rule for every command (features, training, predict)."""
from __future__ import annotations

from pipeline.core.registry import Registry

DEVICES = Registry.of("device", {"auto": "cuda when present, else cpu", "cpu": "the CPU", "cuda": "the GPU"})


def resolve(name: str) -> str:
    """auto -> "cuda" when a CUDA device is visible, else "cpu"; "cpu"; "cuda" (ValueError when
    none is visible). Anything else: ValueError naming the allowed values."""
    import torch

    if name not in DEVICES:
        raise ValueError(f"--device {name!r} is not supported; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible here; use --device cpu or auto")
    return name
