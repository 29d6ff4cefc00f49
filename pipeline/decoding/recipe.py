"""A recipe: every parameter that changes the stored bytes (its fingerprint names the store
version), the named recipes of data_manifest.yaml, and which frames of a video a recipe stores
(`sample_plan`: a pure function of the recipe, the video's name and its frame count).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.datasets import datasets
from pipeline.core import lineage
from pipeline.core.registry import Registry
from pipeline.decoding import sampling


@dataclass(frozen=True)
class Recipe:
    """Every parameter that changes the stored bytes; its fingerprint names the store version."""
    sampling: str = "uniform"  # uniform | random-uniform | clip | multiclip (docs/design.md)
    frames: int = 16           # T frames per sample
    clips: int = 1             # K clips per video (multiclip only)
    stride: int = 1            # frame step inside a clip (clip, multiclip)
    height: int = 112          # stored frame size; the clean view is the centred crop of this aspect
    width: int = 112
    views: int = 0             # augmented copies stored besides the clean view
    seed: int = 0              # seeds random-uniform, random clip starts and the views
    lossy: bool = False        # JPEG-coded frames (q95): several times smaller, PSNR about 40 dB
    rotate: float = 0.0        # augmented views: a rotation uniform in +-rotate degrees (0: none)
    vflip: bool = False        # augmented views: a coin-flip vertical mirror
    hflip: bool = True         # augmented views: a coin-flip horizontal mirror (off where left/right is the label)

    @property
    def samples(self) -> int:
        return self.clips * (1 + self.views)

    def validate(self) -> None:
        if self.sampling not in sampling.STRATEGIES:
            raise ValueError(f"unknown sampling {self.sampling!r}; allowed: {', '.join(sampling.STRATEGIES)}")
        for name, lo in (("frames", 1), ("clips", 1), ("stride", 1), ("height", 8), ("width", 8), ("views", 0)):
            if getattr(self, name) < lo:
                raise ValueError(f"--{name} {getattr(self, name)} is out of range; allowed: >= {lo}")
        if self.clips != 1 and self.sampling != "multiclip":
            raise ValueError(f"--clips {self.clips} needs --sampling multiclip; {self.sampling!r} stores one clip")
        if isinstance(self.rotate, bool) or not isinstance(self.rotate, (int, float)) or not 0 <= self.rotate <= 180:
            raise ValueError(f"--rotate {self.rotate!r} is out of range; allowed: 0 to 180 degrees")
        for name in ("vflip", "hflip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"--{name} {getattr(self, name)!r} is not supported; allowed: true, false")
        if max(self.height, self.width) > 4096:
            raise ValueError(f"--size {self.height}x{self.width} is too large; allowed: up to 4096")

    # fields added after stores existed, at the value that stores what stores held before them: left
    # out of the fingerprint there, so an earlier store of the same recipe stays up to date
    ADDED_LATER = {"rotate": 0.0, "vflip": False, "hflip": True}

    def fingerprint_dict(self) -> dict:
        """The fields that name this recipe's stores: all but those added later at their neutral value."""
        return {k: v for k, v in asdict(self).items() if not (k in self.ADDED_LATER and v == self.ADDED_LATER[k])}

    def fingerprint(self) -> str:
        return lineage.fingerprint(self.fingerprint_dict())

    @property
    def bytes_per_video(self) -> int:
        """Bytes of one video's S samples of T frames (uint8 RGB)."""
        return self.samples * self.frames * self.height * self.width * 3


# the named recipes of data_manifest.yaml (har extract --recipe): name -> its fields
RECIPES: Registry[dict] = Registry("recipe")
for _name, _spec in datasets.manifest()["recipes"].items():
    RECIPES.add(_name, _spec, ", ".join(f"{k} {v}" for k, v in _spec.items()))
del _name, _spec


def named_recipe(name: str, **overrides) -> Recipe:
    """A recipe from data_manifest.yaml, with single fields overridden (None = keep)."""
    spec = dict(RECIPES.get(name))
    size = spec.pop("size")
    spec["height"], spec["width"] = parse_size(size) if isinstance(size, str) else (size, size)
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return Recipe(**spec)


def parse_size(text: str) -> tuple[int, int]:
    """'112' -> (112, 112); '128x171' -> (128, 171) as height x width."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8 or max(parts) > 4096:
        raise ValueError(f"--size {text!r} is not a size; allowed: PX or HxW, each 8..4096 (e.g. 112, 128x171)")
    return parts[0], parts[1]


def sample_plan(recipe: Recipe, rel: str, n: int) -> np.ndarray:
    """(S, T) source frame indices for a video of n frames; sample s = view * K + clip."""
    rows = []
    for v in range(1 + recipe.views):
        randomised = recipe.sampling == "random-uniform" or (recipe.sampling == "clip" and v > 0)
        seed = lineage.seed_for(recipe.seed, rel, "time", v) if randomised else None
        rows.append(sampling.sample_indices(recipe.sampling, n, recipe.frames, recipe.clips, recipe.stride, seed))
    return np.concatenate(rows).astype(np.int32)


def sample_axes(recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """clip_index and view_index of the S samples, (S,) int16 each."""
    s = np.arange(recipe.samples)
    return (s % recipe.clips).astype(np.int16), (s // recipe.clips).astype(np.int16)
