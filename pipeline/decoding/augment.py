"""Spatial views of a sample: the clean centre crop and seeded augmented copies.

Parameters are drawn once per (recipe seed, video, view) and applied identically to every frame
of the sample, so motion stays coherent and a rerun is bitwise identical. `params_for` is pure;
`apply` is a pure function of (frame, params, size).

An augmented view is a random resized crop, a coin-flip horizontal mirror and colour jitter
(brightness, contrast, saturation), and where the recipe asks for them a rotation drawn from
+-`rotate` degrees (one seed study's +-15) and a coin-flip vertical mirror (another's). Their draws
come after the others, so a recipe without them stores exactly what it stored before they existed.
The horizontal mirror can be turned off (recipe `hflip: false`) for datasets where left and right
are part of the label (Something-Something's "from left to right", a clockwise turn): its coin is
still drawn, so the crops and colours of those views are the ones a mirroring recipe draws.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.core.lineage import seed_for


@dataclass(frozen=True)
class ViewParams:
    top: float         # crop box as fractions of the source frame
    left: float
    height: float
    width: float
    flip: bool         # horizontal flip
    brightness: float  # multiplicative factors; 1.0 = unchanged
    contrast: float
    saturation: float
    rotation: float = 0.0  # degrees, counter-clockwise about the centre, after the crop
    vflip: bool = False    # vertical flip

    def __post_init__(self):
        # float32-representable, so the store's float32 `view_params` give back these exact values
        for f in FIELDS:
            if f not in ("flip", "vflip"):
                object.__setattr__(self, f, float(np.float32(getattr(self, f))))

    def as_dict(self) -> dict:
        return asdict(self)

    def as_array(self) -> np.ndarray:
        """float32 [10] in FIELDS order, as the store's `view_params` keeps it."""
        return np.array([getattr(self, f) for f in FIELDS], np.float32)


FIELDS = ("top", "left", "height", "width", "flip", "brightness", "contrast", "saturation", "rotation", "vflip")


def upright_hw(frame) -> tuple[int, int]:
    """(height, width) of a decoded frame as displayed (a 90-degree rotation swaps them)."""
    rot = int(getattr(frame, "rotation", 0) or 0) % 180
    return (frame.width, frame.height) if rot == 90 else (frame.height, frame.width)


def centre_crop(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> ViewParams:
    """The largest centred box with the output's aspect ratio (no distortion, nothing added)."""
    sh, sw = src_hw
    oh, ow = out_hw
    target = ow / oh
    if sw / sh > target:  # source wider: trim left and right
        w = sh * target / sw
        return ViewParams(0.0, (1 - w) / 2, 1.0, w, False, 1.0, 1.0, 1.0)
    h = sw / target / sh
    return ViewParams((1 - h) / 2, 0.0, h, 1.0, False, 1.0, 1.0, 1.0)


def random_view(src_hw: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator,
                scale: tuple[float, float] = (0.4, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                jitter: float = 0.3, rotate: float = 0.0, vflip: bool = False, hflip: bool = True) -> ViewParams:
    """Random resized crop (as torchvision's, in the output's aspect frame), flip (when `hflip`),
    colour jitter; a rotation uniform in +-`rotate` degrees and a coin-flip vertical mirror when asked
    (drawn last)."""
    sh, sw = src_hw
    oh, ow = out_hw
    area = sh * sw
    box = None
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = (ow / oh) * math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = math.sqrt(a * r)
        h = math.sqrt(a / r)
        if 1 <= w <= sw and 1 <= h <= sh:
            top = rng.uniform(0, sh - h)
            left = rng.uniform(0, sw - w)
            box = (top / sh, left / sw, h / sh, w / sw)
            break
    if box is None:
        c = centre_crop(src_hw, out_hw)
        box = (c.top, c.left, c.height, c.width)
    flip = bool(rng.random() < 0.5) and hflip   # drawn either way: the other draws stay the same
    b, c, s = (float(rng.uniform(1 - jitter, 1 + jitter)) for _ in range(3))
    angle = float(rng.uniform(-rotate, rotate)) if rotate > 0 else 0.0
    upside_down = bool(rng.random() < 0.5) if vflip else False
    return ViewParams(*box, flip, b, c, s, angle, upside_down)


def params_for(seed: int, video: str, view: int, src_hw: tuple[int, int],
               out_hw: tuple[int, int], rotate: float = 0.0, vflip: bool = False,
               hflip: bool = True) -> ViewParams:
    """View 0 is the clean centre crop; view v >= 1 is drawn from seed_for(seed, video, v)."""
    if view == 0:
        return centre_crop(src_hw, out_hw)
    return random_view(src_hw, out_hw, np.random.default_rng(seed_for(seed, video, "view", view)),
                       rotate=rotate, vflip=vflip, hflip=hflip)


def clean(frame, out_hw: tuple[int, int], reformatter=None) -> np.ndarray:
    """The clean view straight from a decoded av.VideoFrame: the centred crop of the output's
    aspect ratio, resized to out_hw, RGB.

    Shrinking a lot (UCF's 240 px to 112) goes through one swscale pass with area averaging:
    scale the whole frame so that the centred crop is out_hw, then slice; no aliasing, and about
    twice as fast as RGB conversion followed by a resize. A mild resize (240 to 224) converts to
    RGB and resizes bilinearly, which is as good there and three times faster than area
    averaging. Rotated streams go through `apply` on the upright RGB frame.
    """
    from pipeline.decoding.video import frame_rgb

    oh, ow = out_hw
    if int(getattr(frame, "rotation", 0) or 0) % 360:
        rgb = frame_rgb(frame)
        return apply(rgb, centre_crop(rgb.shape[:2], out_hw), out_hw)
    h, w = frame.height, frame.width
    s = max(oh / h, ow / w)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()
    if s >= MILD_SCALE:
        rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()  # reuses its swscale context
        return apply(rgb, centre_crop((h, w), out_hw), out_hw)
    sh, sw = max(oh, math.ceil(h * s - 1e-6)), max(ow, math.ceil(w * s - 1e-6))
    big = reformatter.reformat(frame, width=sw, height=sh, format="rgb24", interpolation="AREA").to_ndarray()
    y0, x0 = (sh - oh) // 2, (sw - ow) // 2
    return np.ascontiguousarray(big[y0:y0 + oh, x0:x0 + ow])


MILD_SCALE = 0.75  # output/input size above which bilinear resampling is as good as area averaging


def apply(rgb: np.ndarray, p: ViewParams, out_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (oh, ow, 3) uint8: crop, resize (area filter), rotate, flips, jitter."""
    import cv2

    sh, sw = rgb.shape[:2]
    y0 = int(round(p.top * sh))
    x0 = int(round(p.left * sw))
    y1 = max(y0 + 1, min(sh, int(round((p.top + p.height) * sh))))
    x1 = max(x0 + 1, min(sw, int(round((p.left + p.width) * sw))))
    crop = rgb[y0:y1, x0:x1]
    oh, ow = out_hw
    strong = oh < MILD_SCALE * crop.shape[0] or ow < MILD_SCALE * crop.shape[1]
    out = cv2.resize(crop, (ow, oh), interpolation=cv2.INTER_AREA if strong else cv2.INTER_LINEAR)
    if p.rotation:
        out = rotate(out, p.rotation)
    if p.flip:
        out = out[:, ::-1]
    if p.vflip:
        out = out[::-1]
    if (p.brightness, p.contrast, p.saturation) != (1.0, 1.0, 1.0):
        out = _jitter(out, p.brightness, p.contrast, p.saturation)
    return np.ascontiguousarray(out)


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """`img` turned `degrees` counter-clockwise about its centre, same size, bilinear; the corners
    the turn uncovers mirror the image (reflect-101) rather than going black, which would be a cue
    that only augmented views carry."""
    import cv2

    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _jitter(img: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    x = img.astype(np.float32) * brightness
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)
    x = grey.mean() + (x - grey.mean()) * contrast
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = grey[..., None] + (x - grey[..., None]) * saturation
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
