"""A run's chain as one differentiable function of its input frames, for `har explain`.

`har predict` scores uint8 clips with gradients off; an explanation needs the same chain with
gradients on and with its layers reachable. Each kind of task builds its `Chain`
(`TaskKind.chain`): the stored clip is cut to the model's input geometry (`to_input`: the video
model's centre crop, or the backbone's own resize and crop), then `model` maps float pixels
(0..255, (1, 3, T, h, w)) to logits with the normalisation inside, so gradients and maps are in
pixel space. `window` says which part of the stored frame that input covers, so a map drawn on
the input goes back onto the stored frame. A head chain also exposes its two halves (`encode`:
pixels -> the (1, T, D) features the head reads; `head`), for attribution over time.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Chain:
    model: nn.Module                                   # float (1, 3, T, h, w) pixels -> (1, C) logits
    to_input: Callable[[np.ndarray], torch.Tensor]     # uint8 (T, H, W, 3) stored clip -> float (1, 3, T, h, w)
    window: Callable[[int, int], tuple[float, float, float, float]]  # stored (H, W) -> (top, left, height, width) px
    classes: list[str]
    kind: str                                          # the task kind ("head", "video-model")
    encode: nn.Module | None = None                    # head runs: pixels -> (1, T, D) features
    head: nn.Module | None = None                      # head runs: (1, T, D) features -> (1, C) logits
    spread: Callable[[np.ndarray, int], np.ndarray] | None = None  # a video backbone's T' positions -> T stored frames


def to_channels_first(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (1, 3, T, H, W)."""
    return frames.permute(3, 0, 1, 2).unsqueeze(0).float()


class PerFrame(nn.Module):
    """A 2D network over every frame of (B, 3, T, H, W) -> (B, T, ...)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        b, _, t = x.shape[:3]
        y = self.net(x.transpose(1, 2).flatten(0, 1))
        return y.view(b, t, *y.shape[1:])


class Normalised(nn.Module):
    """Pixels 0..255 -> (x - mean) / std per channel -> `net`. mean, std: (3,) in 0..1 units."""

    def __init__(self, net: nn.Module, mean, std, dims: int = 5):
        super().__init__()
        shape = (1, 3) + (1,) * (dims - 2)
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(shape) * 255)
        self.register_buffer("inv_std", 1 / (torch.as_tensor(std, dtype=torch.float32).view(shape) * 255))

    def forward(self, x):
        return self.net((x - self.mean) * self.inv_std)


class Float16Rounded(nn.Module):
    """Features rounded to float16 in the forward pass as the feature store holds them (so the
    chain's logits are the stored chain's), gradients passed straight through."""

    def forward(self, x):
        return x + (x.half().float() - x).detach()


class Sequential2(nn.Module):
    """encode then head, both kept reachable by name (`encode.*`, `head.*`)."""

    def __init__(self, encode: nn.Module, head: nn.Module):
        super().__init__()
        self.encode, self.head = encode, head

    def forward(self, x):
        return self.head(self.encode(x))


def resize_matrix(n_in: int, n_out: int, mode: str, antialias: bool) -> torch.Tensor:
    """(n_out, n_in) weights of torch's 1-D resize from n_in to n_out samples (align_corners
    False, as torchvision resizes tensors), read off torch itself by resizing unit vectors.

    The probe is 2 wide, not 1: torch 2.14's antialiased kernel returns zeros for a one-pixel-wide
    image (a 4x1 column resized to 6x1 gives 0, 0, 0, 0, 0, 0)."""
    if n_in == n_out and mode in ("bilinear", "bicubic"):
        return torch.eye(n_in)
    probe = torch.eye(n_in).view(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2).contiguous()
    corners = False if mode in ("bilinear", "bicubic") else None
    out = torch.nn.functional.interpolate(probe, size=(n_out, 2), mode=mode, align_corners=corners, antialias=antialias)
    return out[:, 0, :, 0].t().contiguous()
