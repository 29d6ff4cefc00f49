"""How a network's weights want a frame, as data: the input policy of each backbone's registry
entry (`pipeline.stages.backbones`), and what follows from it.

- `InputPolicy`: the shorter side resized (or the whole frame to a square), the centre square cut,
  the interpolation, the value range the pixels are scaled to, mean/std per channel, colour order.
  A feature store records it (attrs `input`), a run's card carries it, and `from_dict` reads such
  a record back (a file: checked, one error naming what is wrong).
- `Preprocess`: a policy applied to a uint8 batch with torchvision's resize and centre crop, the
  value range and normalisation fused into one pass: what features, `har predict`, `explain` and
  `serve` run.
- `input_geometry`: the same policy as numbers (the resized size and the crop, and the part of the
  stored frame the crop covers), for the two that need it as numbers: explain (a map goes back
  onto the stored frame) and export (the cut traced into the graph).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch  # imported only by the stages that run a network, never by `har --help`

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")
COLOURS = ("RGB",)  # the channel orders a network here reads; stored frames are RGB
# the geometries: the shorter side resized (aspect kept), or the whole frame resized to a square
# (squashed, as a processor with size {"height": s, "width": s} does); then the centre square cut
SHORTER_SIDE, SQUARE = "resize shorter side, centre crop", "resize to a square, centre crop"
RULES = (SHORTER_SIDE, SQUARE)
# where a centre crop starts when the margin is odd: torchvision's round((n - c) / 2), half to even,
# or transformers' processors' int((n - c) / 2) (a pixel apart for a margin of 11, 15, ...)
CROP_OFFSETS = ("round", "floor")
MAX_SIZE = 8192     # the largest input side a recorded policy may ask for


@dataclass(frozen=True)
class InputPolicy:
    """How the weights want a frame, as data: the stored RGB frame's shorter side is resized to
    `resize` (antialiased `interpolation`; whole pixels, as torchvision resizes uint8; with rule
    SQUARE the whole frame to `resize` x `resize`), the centre `size` x `size` square is cut; pixel values 0..255 are mapped linearly onto `value_range`, then
    (x - mean) / std per channel, in `value_range` units. E.g. TensorFlow's EfficientNet-Lite:
    value_range (0, 255), mean 127, std 128: a pixel of 255 becomes 1.0, one of 0 becomes -0.99."""
    size: int                                      # the square side the network sees
    resize: int                                    # the shorter side (SQUARE: both sides) before the centre crop
    interpolation: str = "bilinear"                # bilinear | bicubic
    value_range: tuple[float, float] = (0.0, 1.0)  # what 0..255 pixels are scaled to
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    colour: str = "RGB"                            # channel order the network reads
    rule: str = SHORTER_SIDE                       # RULES: every registered entry uses the shorter side
    crop_offset: str = "round"                     # CROP_OFFSETS: torchvision's round, transformers' floor

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"input interpolation {self.interpolation!r} is not supported; allowed: "
                             f"{', '.join(INTERPOLATIONS)}")
        if self.colour not in COLOURS:
            raise ValueError(f"input colour order {self.colour!r} is not supported; allowed: {', '.join(COLOURS)}")
        if self.crop_offset not in CROP_OFFSETS:
            raise ValueError(f"input crop offset {self.crop_offset!r} is not supported; allowed: {', '.join(CROP_OFFSETS)}")
        if self.rule not in RULES:
            raise ValueError(f"input rule {self.rule!r} is not supported; allowed: {', '.join(map(repr, RULES))}")
        lo, hi = self.value_range
        if not 0 < self.size <= self.resize or not hi > lo \
                or min(self.std) <= 0 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"input policy {self} is not usable: sizes > 0, crop <= resize, a range low < high, "
                             f"three means and three positive stds")

    def pixel_units(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as (3,) float32 tensors in 0..255 pixel units: (x - mean) / std on raw pixels
        equals this policy. For value_range (0, 1) the same float32 ops torchvision's constants
        took (mean * 255), so stores made before this class existed keep their bits."""
        lo, hi = self.value_range
        to_pixels = 255.0 / (hi - lo)
        mean = (torch.tensor(self.mean, dtype=torch.float32) - lo) * to_pixels
        return mean, torch.tensor(self.std, dtype=torch.float32) * to_pixels

    def as_dict(self) -> dict:
        """The record (lists for tuples); the crop offset only when not torchvision's, so that the
        records, and fingerprints, of stores made before it existed stay as they were."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if not (k == "crop_offset" and v == "round")}

    @classmethod
    def from_dict(cls, d: dict) -> InputPolicy:
        """The policy a store or run recorded (a file: checked, one ValueError naming what is wrong):
        whole sizes up to 8192 px, three finite means and stds (positive, also in float32 pixel
        units), a finite range, known names."""
        names = {f.name for f in fields(cls)}
        where = f"recorded input policy {str(d)[:200]!r}"
        if not isinstance(d, dict) or set(d) - names or not {"size", "resize"} <= set(d):
            raise ValueError(f"{where} is not one; its fields are {', '.join(sorted(names))}")

        def real(x) -> bool:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                return False
            try:
                return math.isfinite(x)
            except OverflowError:  # an int past float's range
                return False

        kw = dict(d)
        for k, n in (("value_range", 2), ("mean", 3), ("std", 3)):
            if k in kw:
                v = kw[k]
                if not isinstance(v, (list, tuple)) or len(v) != n or not all(real(x) for x in v):
                    raise ValueError(f"{where}: {k} must be {n} finite numbers")
                kw[k] = tuple(float(x) for x in v)
        for k in ("size", "resize"):
            if isinstance(kw[k], bool) or not isinstance(kw[k], int) or not 1 <= kw[k] <= MAX_SIZE:
                raise ValueError(f"{where}: {k} must be a whole number of pixels, 1 to {MAX_SIZE}")
        for k in ("interpolation", "colour", "rule", "crop_offset"):
            if k in kw and not isinstance(kw[k], str):
                raise ValueError(f"{where}: {k} must be a name")
        try:
            policy = cls(**kw)
            mean, std = policy.pixel_units()
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{where} is not usable ({e})") from None
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and torch.isfinite(1 / std).all()):
            raise ValueError(f"{where}: its mean and std are not finite in pixel units")
        return policy


class Preprocess:
    """An input policy on a uint8 (B, 3, H, W) batch: resize the shorter side, centre crop (both
    torchvision's, on whole pixels), then the value range and normalisation fused into one pass
    ((x - mean) * inv_std in pixel units: 20 % less time on a CPU than two passes)."""

    def __init__(self, policy: InputPolicy, resize: bool = True):
        from torchvision.transforms import InterpolationMode

        self.policy, self.resize = policy, resize
        self.resize_size, self.crop_size = resize_size(policy), [policy.size, policy.size]
        self.interpolation, self.antialias = InterpolationMode(policy.interpolation), True
        mean, std = policy.pixel_units()
        self.mean = mean.view(1, 3, 1, 1)
        self.inv_std = 1 / std.view(1, 3, 1, 1)

    def __call__(self, x):
        if self.resize:
            x = self.cut(x)
        mean, inv_std = self.mean.to(x.device), self.inv_std.to(x.device)
        return (x.float() - mean) * inv_std

    def cut(self, x):
        """The policy's resize and centre crop of a (..., H, W) batch (torchvision's resize and crop;
        a crop offset of "floor" starts the crop where transformers' processors do)."""
        import torchvision.transforms.functional as F

        x = F.resize(x, self.resize_size, interpolation=self.interpolation, antialias=self.antialias)
        if self.policy.crop_offset == "round":
            return F.center_crop(x, self.crop_size)
        (h, w), c = x.shape[-2:], self.crop_size[0]
        top, left = crop_start(h, c, "floor"), crop_start(w, c, "floor")
        return x[..., top:top + c, left:left + c]

    def __repr__(self):
        if not self.resize:
            return "Preprocess(stored size, scale and normalise only)"
        return f"Preprocess(resize={self.resize_size}, crop={self.crop_size}, {self.interpolation.value})"


def resized_size(h: int, w: int, size: list[int]) -> tuple[int, int]:
    """(height, width) torchvision's resize gives: [s] scales the shorter side to s (the longer
    truncated), [h, w] is exact."""
    if len(size) == 2:
        return size[0], size[1]
    if h <= w:
        return size[0], int(size[0] * w / h)
    return int(size[0] * h / w), size[0]


@dataclass(frozen=True)
class Geometry:
    """How a stored frame becomes a backbone's input under its policy: resized to `resized`, then
    the centred `crop` cut: the numbers `Preprocess` resizes and crops by (torchvision's own
    resize and crop), computed once by `input_geometry` for the two that need them as numbers,
    explain's chain (where a map goes back on the frame) and export (the traced cut)."""
    stored: tuple[int, int]    # (height, width) of the stored frame
    resized: tuple[int, int]   # after the resize: the shorter side at the policy's `resize`
    crop: tuple[int, int]      # the centre crop cut from the resized frame

    @property
    def window(self) -> tuple[float, float, float, float]:
        """The part of the stored frame the crop covers: (top, left, height, width) in stored
        pixels, unrounded (where a map drawn on the input goes back onto the stored frame)."""
        (h, w), (rh, rw), (ch, cw) = self.stored, self.resized, self.crop
        sy, sx = rh / h, rw / w
        return (rh - ch) / 2 / sy, (rw - cw) / 2 / sx, ch / sy, cw / sx


def input_geometry(policy: InputPolicy, h: int, w: int) -> Geometry:
    """The geometry of `policy` on stored (h, w) frames: the shorter side resized to
    `policy.resize` (torchvision's sizes: `resized_size`), the centre `policy.size` square. E.g.
    resize 256, size 224 on 240 x 320 frames: resized (256, 341), crop (224, 224), covering
    (15.0, 54.9, 210.0, 210.2) of the stored frame."""
    return Geometry((h, w), resized_size(h, w, resize_size(policy)), (policy.size, policy.size))


def crop_start(n: int, crop: int, offset: str = "round") -> int:
    """Where a centre crop of `crop` starts in `n` samples (crop <= n): torchvision's round((n - crop)
    / 2), half to even, or transformers' int((n - crop) / 2). E.g. n=43, crop=32: 6 or 5."""
    return round((n - crop) / 2.0) if offset == "round" else int((n - crop) / 2.0)


def resize_size(policy: InputPolicy) -> list[int]:
    """torchvision's resize argument for a policy: [s] scales the shorter side, [s, s] squashes."""
    return [policy.resize] if policy.rule == SHORTER_SIDE else [policy.resize, policy.resize]
