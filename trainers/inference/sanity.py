"""Sanity checks of explanations, from the literature: tests and benchmarks/explain_sanity.py score
`har explain`'s maps with them.

- `randomised`: the model randomisation test (Adebayo et al. 2018): a map that survives
  re-initialising every layer shows the input, not what the model learnt; `rank_correlation`
  compares the two maps.
- `pointing_hits`: the pointing game (Zhang et al. 2018): does a map's maximum fall on the object?
  `boxes_on_stored` carries source-pixel boxes onto the stored frames.
- `shuffle_change`: how much the target probability moves when chosen frames swap places (the
  frames a temporal attribution ranks first should matter more than its last).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from trainers.models.chain import Chain


def randomised(chain: Chain, seed: int = 0) -> Chain:
    """A copy of `chain` with every layer re-initialised (Adebayo et al. 2018's model randomisation:
    a map that survives it shows the input, not what the model learnt)."""
    model = copy.deepcopy(chain.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
        if callable(reset):
            reset()
    with torch.no_grad():  # parameters no reset reaches (a transformer's positions): drawn afresh
        for n, p in model.named_parameters():
            if torch.equal(p, before[n]) and p.numel() > 1:
                p.normal_(0, 0.02)
    parts = dict(model.named_children())
    return replace(chain, model=model, encode=parts.get("encode") if chain.encode is not None else None,
                   head=parts.get("head") if chain.head is not None else None)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (any shape, compared position by position)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map (all zero after the ReLU) ranks nothing: no correlation
    rho = spearmanr(np.ravel(a), np.ravel(b)).statistic
    return 0.0 if np.isnan(rho) else float(rho)


def pointing_hits(maps: np.ndarray, boxes: list[list[list[float]]], tolerance: float = 0.0) -> list[bool]:
    """Per frame with an object: does the map's maximum fall inside one of its boxes ([top, left,
    bottom, right] in the map's pixels, widened by `tolerance` px)? (Zhang et al. 2018's pointing game)"""
    hits = []
    for m, frame_boxes in zip(maps, boxes):
        if not frame_boxes:
            continue
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        y, x = y + 0.5, x + 0.5
        hits.append(any(t - tolerance <= y <= b + tolerance and le - tolerance <= x <= r + tolerance
                        for t, le, b, r in frame_boxes))
    return hits


def boxes_on_stored(boxes: list[list[float]], src_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[list[float]]:
    """Source-pixel boxes -> the stored frame's pixels, through the clean view's centre crop."""
    from pipeline.decoding import augment

    v = augment.centre_crop(src_hw, out_hw)
    sy, sx = out_hw[0] / (v.height * src_hw[0]), out_hw[1] / (v.width * src_hw[1])
    oy, ox = v.top * src_hw[0], v.left * src_hw[1]
    return [[(t - oy) * sy, (le - ox) * sx, (b - oy) * sy, (r - ox) * sx] for t, le, b, r in boxes]


def shuffle_change(chain: Chain, frames: np.ndarray, target: int, steps: np.ndarray, rng: np.random.Generator,
                   tries: int = 8) -> float:
    """Mean |change| of the target probability when the frames at `steps` swap places among
    themselves (a random derangement each try)."""
    x = chain.to_input(frames)
    steps = np.unique(steps)
    with torch.no_grad():
        p0 = torch.softmax(chain.model(x), 1)[0, target].item()
        changes = []
        for _ in range(tries):
            perm = np.arange(x.shape[2])
            order = rng.permutation(steps)
            perm[order] = np.roll(order, 1)  # a random cycle: every chosen frame moves
            p = torch.softmax(chain.model(x[:, :, perm]), 1)[0, target].item()
            changes.append(abs(p - p0))
    return float(np.mean(changes))
