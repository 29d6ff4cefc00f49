"""Motion-pairs: a synthetic video dataset of time-reversed class pairs, in har's `folder` layout.

    .venv/bin/python benchmarks/motion_pairs.py ROOT [--groups 12] [--clips 3] [--seed 0] [--size 160x120]
                                                     [--verbs expand,spin,rise,fade] [--same-draw]

What it makes
-------------
Each clip shows one textured object over a background doing one motion "verb". Every verb comes in
two directions and the second direction of a class is made by rendering the first one and playing
the frames backwards, so the two classes of a pair (the "twins") hold the same frames in
distribution: a model that looks at frames without their order (a bag of frames, a mean over time)
cannot tell twins apart and is capped at half of the pair's accuracy; only the change over time
separates them.

Verbs (forward class / its time reverse):

    expand  Expand / Contract       the object's scale grows from 0.3-0.5 to 0.95-1.25 of its size
    spin    SpinCW / SpinCCW        the object turns by 90-240 degrees (clockwise on screen)
    rise    Rise / Fall             the object moves up by 35-60 % of the frame height
    fade    FadeIn / FadeOut        the object's opacity goes from 0-0.15 to 0.9-1 over the background
    slide   SlideRight / SlideLeft  (not in the default set) moves right by 35-60 % of the width
    focus   Focus / Defocus         (not in the default set) blur sigma goes from 3.5-6 px to 0

The default is the first four verbs: 8 classes, chance 1/8.

Appearance groups (`--groups`, default 12): a group fixes the look that all classes of the group
share: shape (star, cross, C-ring, polygon, letter, crescent, blob), texture in object coordinates
(stripes, checker, smooth noise, linear gradient, dots, solid with an off-centre band; none of them
rotation-symmetric, so spinning is visible on every shape), object and background palette,
background pattern (flat, gradient, checker, smooth noise, stripes, vignette), 0-2 static distractor
shapes, the object size range, the frame rate (12, 15, 20, 24, 25 or 30 fps), sensor noise,
brightness flicker and camera shake. Shapes, textures, backgrounds and frame rates are dealt out
in seeded rounds (each option once per round of consecutive groups, never the same option in two
neighbouring groups), so 12 groups use them all;
the rest of a look is drawn at random per group. Test groups under a group-disjoint split are therefore looks
that training never saw.

Clips (`--clips`, default 3 per class and group) vary within the group: duration 1.5-4 s, object
size within the group's range, position, start angle, hue/brightness jitter, background phase, the
distractors' places, a small random drift (random sign, so symmetric under reversal), the easing
of the motion (linear, smooth, ease-in, ease-out; reversal swaps in and out) and short holds at
the start and/or the end. Noise, flicker and shake are drawn independently per frame.

By default every clip of every class is its own random draw; `--same-draw` makes clip cMM of the
reverse class the exact reverse of clip cMM of the forward class (identical frame sets, for a
cleanest possible twin test).

Files: `ROOT/<Class>/v_<Class>_gNN_cMM.avi` (MJPG in AVI; NN the 1-based group, MM the 1-based
clip), which har reads with `har extract folder --root ROOT` (the `_gNN_` token gives the groups of
the group-disjoint split), and `ROOT/pairs.json` with the twin pairs, the settings, the seed and a
summary of every group's look. The output is a pure function of the settings and `--seed`.
Frames are 160x120 by default (`--size WxH`).
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

VERSION = 2  # bumped whenever the same settings make different videos
SPRITE = 128  # object sprite side, in object coordinates
FPS_CHOICES = (12, 15, 20, 24, 25, 30)
VERBS = {  # verb -> (forward class, reversed class)
    "expand": ("Expand", "Contract"),
    "spin": ("SpinCW", "SpinCCW"),
    "rise": ("Rise", "Fall"),
    "fade": ("FadeIn", "FadeOut"),
    "slide": ("SlideRight", "SlideLeft"),
    "focus": ("Focus", "Defocus"),
}
DEFAULT_VERBS = ("expand", "spin", "rise", "fade")
SHAPES = ("star", "cross", "cring", "polygon", "letter", "crescent", "blob")
TEXTURES = ("stripes", "checker", "noise", "gradient", "dots", "band")
BACKGROUNDS = ("flat", "gradient", "checker", "noise", "stripes", "vignette")
EASINGS = ("linear", "smooth", "in", "out")
LETTERS = "FGJKLPRZ4"


# ---- small helpers --------------------------------------------------------------------------

def rng_for(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], (h, w)."""
    small = rng.random((max(2, cells), max(2, cells))).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    big -= big.min()
    return big / max(float(big.max()), 1e-6)


def mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours a, b (3,) by t (h, w) -> (h, w, 3)."""
    t = t[..., None]
    return a[None, None] * (1 - t) + b[None, None] * t


def ease(kind: str, p: np.ndarray) -> np.ndarray:
    if kind == "smooth":
        return p * p * (3 - 2 * p)
    if kind == "in":
        return p ** 1.7
    if kind == "out":
        return 1 - (1 - p) ** 1.7
    return p


# ---- shapes (alpha masks in sprite coordinates) ---------------------------------------------

def shape_mask(kind: str, params: dict) -> np.ndarray:
    """(SPRITE, SPRITE) float alpha in [0, 1], the shape filling most of the sprite, centred."""
    up = 4  # draw at 4x and downscale: anti-aliased edges
    n = SPRITE * up
    m = np.zeros((n, n), np.uint8)
    c = n / 2
    r = n * 0.46
    if kind == "star":
        k, inner = params["points"], params["inner"]
        ang = np.arange(2 * k) * math.pi / k - math.pi / 2
        rad = np.where(np.arange(2 * k) % 2 == 0, r, r * inner)
        pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [pts.astype(np.int32)], 255)
    elif kind == "polygon":
        k = params["sides"]
        ang = np.arange(k) * 2 * math.pi / k + params["phase"]
        pts = np.stack([c + r * np.cos(ang), c + r * np.sin(ang)], 1)
        cv2.fillPoly(m, [pts.astype(np.int32)], 255)
    elif kind == "cross":
        a = r * params["arm"]
        long_arm = r * params["long"]  # one arm longer: no 90-degree symmetry
        cv2.rectangle(m, (int(c - r), int(c - a)), (int(c + r), int(c + a)), 255, -1)
        cv2.rectangle(m, (int(c - a), int(c - long_arm)), (int(c + a), int(c + r)), 255, -1)
    elif kind == "cring":
        thick = r * params["thick"]
        cv2.circle(m, (int(c), int(c)), int(r - thick / 2), 255, int(thick))
        gap = params["gap"]  # degrees of opening
        pts = [(c, c)] + [(c + 2 * r * math.cos(math.radians(a)), c + 2 * r * math.sin(math.radians(a)))
                          for a in np.linspace(-gap / 2, gap / 2, 8)]
        cv2.fillPoly(m, [np.array(pts, np.int32)], 0)
    elif kind == "letter":
        font, text, thick = cv2.FONT_HERSHEY_SIMPLEX, params["letter"], int(n * 0.09)
        (tw, th), base = cv2.getTextSize(text, font, 1.0, thick)
        scale = 0.85 * n / max(tw, th + base)
        thick = max(2, int(thick * scale))
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        cv2.putText(m, text, (int(c - tw / 2), int(c + th / 2)), font, scale, 255, thick, cv2.LINE_AA)
    elif kind == "crescent":
        cv2.circle(m, (int(c), int(c)), int(r), 255, -1)
        off = r * params["offset"]
        cv2.circle(m, (int(c + off), int(c - off * 0.4)), int(r * params["bite"]), 0, -1)
    elif kind == "blob":
        k = 48
        ang = np.linspace(0, 2 * math.pi, k, endpoint=False)
        rad = np.ones(k)
        for f, amp, ph in params["harmonics"]:
            rad += amp * np.cos(f * ang + ph)
        rad = r * rad / rad.max()
        pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [pts.astype(np.int32)], 255)
    else:
        raise ValueError(kind)
    return cv2.resize(m, (SPRITE, SPRITE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def draw_shape_params(rng: np.random.Generator, kind: str) -> dict:
    if kind == "star":
        return {"points": int(rng.integers(4, 8)), "inner": float(rng.uniform(0.35, 0.6))}
    if kind == "polygon":
        return {"sides": int(rng.integers(3, 7)), "phase": float(rng.uniform(0, math.pi))}
    if kind == "cross":
        return {"arm": float(rng.uniform(0.18, 0.32)), "long": float(rng.uniform(0.4, 0.7))}
    if kind == "cring":
        return {"thick": float(rng.uniform(0.3, 0.5)), "gap": float(rng.uniform(50, 100))}
    if kind == "letter":
        return {"letter": str(rng.choice(list(LETTERS)))}
    if kind == "crescent":
        return {"offset": float(rng.uniform(0.3, 0.5)), "bite": float(rng.uniform(0.7, 0.85))}
    if kind == "blob":
        return {"harmonics": [(int(f), float(rng.uniform(0.08, 0.22)), float(rng.uniform(0, 2 * math.pi)))
                              for f in rng.choice(np.arange(2, 6), size=3, replace=False)]}
    raise ValueError(kind)


# ---- textures and backgrounds ---------------------------------------------------------------

def texture(kind: str, p: dict, c1: np.ndarray, c2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(SPRITE, SPRITE, 3) float RGB in object coordinates; none of them rotation-symmetric."""
    n = SPRITE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    if kind == "stripes":
        a = p["angle"]
        t = (np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) * p["freq"] + p["phase"]) > 0)
        return mix(c1, c2, t.astype(np.float32))
    if kind == "checker":
        k = p["cells"]
        t = ((np.floor(xx * k) + np.floor(yy * k)) % 2).astype(np.float32)
        t[: n // 4, : n // 4] = 1.0  # one marked corner: no 90-degree symmetry
        return mix(c1, c2, t)
    if kind == "noise":
        return mix(c1, c2, smooth_noise(rng, n, n, p["cells"]))
    if kind == "gradient":
        a = p["angle"]
        t = np.clip(xx * math.cos(a) + yy * math.sin(a), 0, None)
        return mix(c1, c2, t / max(float(t.max()), 1e-6))
    if kind == "dots":
        k = p["cells"]
        fx, fy = (xx * k) % 1 - 0.5, (yy * k) % 1 - 0.5
        t = (fx * fx + fy * fy < 0.09).astype(np.float32)
        t[:, : n // 3] *= 0.0  # dots on two thirds only
        t[:, : n // 3] += 0.35
        return mix(c1, c2, np.clip(t, 0, 1))
    if kind == "band":
        t = ((xx > p["lo"]) & (xx < p["lo"] + 0.2) | (yy > 0.7)).astype(np.float32)
        return mix(c1, c2, t)
    raise ValueError(kind)


def draw_texture_params(rng: np.random.Generator, kind: str) -> dict:
    return {"angle": float(rng.uniform(0, math.pi)), "freq": float(rng.uniform(3, 6)),
            "phase": float(rng.uniform(0, 2 * math.pi)), "cells": int(rng.integers(3, 7)),
            "lo": float(rng.uniform(0.1, 0.4))}


def background(kind: str, p: dict, c1: np.ndarray, c2: np.ndarray, h: int, w: int,
               rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    if kind == "flat":
        return mix(c1, c2, np.full((h, w), 0.15, np.float32))
    if kind == "gradient":
        a = p["angle"] + rng.uniform(-0.3, 0.3)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return mix(c1, c2, t)
    if kind == "checker":
        k, ox, oy = p["cells"], rng.uniform(0, 1), rng.uniform(0, 1)
        t = ((np.floor(xx * k * w / h + ox) + np.floor(yy * k + oy)) % 2).astype(np.float32)
        return mix(c1, c2, t * 0.6)
    if kind == "noise":
        return mix(c1, c2, smooth_noise(rng, h, w, p["cells"] + 2))
    if kind == "stripes":
        a, ph = p["angle"], rng.uniform(0, 2 * math.pi)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) * p["freq"] + ph)
        return mix(c1, c2, t * 0.7)
    if kind == "vignette":
        cx, cy = 0.5 + rng.uniform(-0.15, 0.15), 0.5 + rng.uniform(-0.15, 0.15)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / 0.75
        return mix(c1, c2, np.clip(t, 0, 1))
    raise ValueError(kind)


# ---- groups, clips, rendering ---------------------------------------------------------------

def dealt(seed: int, key: int, rnd: int, n: int) -> np.ndarray:
    """Seeded order of n options in round rnd; a round never starts with the option the previous one ended on."""
    perm = rng_for(seed, 3, key, rnd).permutation(n)
    if rnd > 0 and n > 1 and perm[0] == dealt(seed, key, rnd - 1, n)[-1]:
        perm[[0, 1]] = perm[[1, 0]]
    return perm


def cycled(seed: int, key: int, g: int, options: tuple):
    """Option of group g: every run of len(options) consecutive groups (1-7, 8-14, ...) holds each
    option once, in a seeded order, and no two consecutive groups share one, so a dozen groups cover
    every shape, texture, background and rate."""
    return options[int(dealt(seed, key, g // len(options), len(options))[g % len(options)])]


def make_group(seed: int, g: int, size: tuple[int, int]) -> dict:
    """The appearance of group g (0-based): everything the clips of all classes share."""
    rng = rng_for(seed, 1, g)
    w, h = size
    shape, tex, bg = (cycled(seed, k, g, opts) for k, opts in enumerate((SHAPES, TEXTURES, BACKGROUNDS)))
    bg_v = float(rng.uniform(0.15, 0.85))
    obj_v = bg_v + (1 if bg_v < 0.5 else -1) * float(rng.uniform(0.25, 0.45))  # contrast against the bg
    hue_bg, hue_obj = float(rng.random()), float(rng.random())
    lo = float(rng.uniform(0.22, 0.38)) * h
    return {
        "group": g + 1, "shape": shape, "shape_params": draw_shape_params(rng, shape),
        "texture": tex, "texture_params": draw_texture_params(rng, tex),
        "background": bg, "background_params": {"angle": float(rng.uniform(0, math.pi)),
                                                "cells": int(rng.integers(2, 7)),
                                                "freq": float(rng.uniform(1, 4))},
        "bg_colors": [hsv(hue_bg, rng.uniform(0, 0.6), bg_v).tolist(),
                      hsv(hue_bg + rng.uniform(-0.2, 0.2), rng.uniform(0, 0.6),
                          bg_v + rng.uniform(-0.12, 0.12)).tolist()],
        "obj_colors": [hsv(hue_obj, rng.uniform(0.3, 1), obj_v).tolist(),
                       hsv(hue_obj + rng.uniform(0.15, 0.5), rng.uniform(0.2, 1),
                           obj_v + rng.uniform(-0.25, 0.25)).tolist()],
        "size_px": [round(lo, 1), round(lo + float(rng.uniform(8, 16)) * h / 120, 1)],
        "fps": int(cycled(seed, 3, g, FPS_CHOICES)),
        "distractors": int(rng.integers(0, 3)),
        "distractor_shape": SHAPES[int(rng.integers(len(SHAPES)))],
        "noise_sigma": float(rng.uniform(0, 5)),
        "flicker": float(rng.uniform(0, 0.03)),
        "shake_px": float(rng.choice([0.0, 0.0, 0.7, 1.5])),
    }


def verb_track(verb: str, p: np.ndarray, rng: np.random.Generator, w: int, h: int) -> dict:
    """Per-frame state (arrays over frames) of the forward direction of `verb` at eased progress p."""
    n = len(p)
    st = {"scale": np.ones(n), "angle": np.zeros(n), "dx": np.zeros(n), "dy": np.zeros(n),
          "opacity": np.ones(n), "blur": np.zeros(n)}
    if verb == "expand":
        s0, s1 = rng.uniform(0.3, 0.5), rng.uniform(0.95, 1.25)
        st["scale"] = s0 + (s1 - s0) * p
    elif verb == "spin":  # cv2 angles are counter-clockwise on screen: clockwise = decreasing
        st["angle"] = -rng.uniform(90, 240) * p
    elif verb == "rise":
        travel = rng.uniform(0.35, 0.6) * h
        st["dy"] = travel / 2 - travel * p
    elif verb == "slide":
        travel = rng.uniform(0.35, 0.6) * w
        st["dx"] = -travel / 2 + travel * p
    elif verb == "fade":
        o0, o1 = rng.uniform(0, 0.15), rng.uniform(0.9, 1.0)
        st["opacity"] = o0 + (o1 - o0) * p
    elif verb == "focus":
        st["blur"] = rng.uniform(3.5, 6) * (1 - p)
    else:
        raise ValueError(verb)
    return st


def place(img: np.ndarray, sprite_rgb: np.ndarray, sprite_a: np.ndarray, cx: float, cy: float,
          diameter: float, angle: float, opacity: float, blur: float) -> np.ndarray:
    h, w = img.shape[:2]
    s = diameter / SPRITE
    m = cv2.getRotationMatrix2D((SPRITE / 2, SPRITE / 2), angle, s)
    m[0, 2] += cx - SPRITE / 2
    m[1, 2] += cy - SPRITE / 2
    prem = cv2.warpAffine(sprite_rgb * sprite_a[..., None], m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = cv2.warpAffine(sprite_a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if blur > 0.3:
        prem = cv2.GaussianBlur(prem, (0, 0), blur)
        a = cv2.GaussianBlur(a, (0, 0), blur)
    return img * (1 - opacity * a[..., None]) + opacity * prem


def render_clip(group: dict, verb: str, rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Frames (T, H, W, 3) uint8 RGB of one clip of the forward direction of `verb`, and its draw."""
    w, h = size
    fps = group["fps"]
    duration = float(rng.uniform(1.5, 4.0))
    n = max(8, int(round(duration * fps)))
    # progress with optional holds at either end, then eased
    hold0, hold1 = (float(rng.uniform(0, 0.15)) if rng.random() < 0.5 else 0.0 for _ in range(2))
    t = np.linspace(0, 1, n)
    p = np.clip((t - hold0) / max(1 - hold0 - hold1, 0.5), 0, 1)
    easing = EASINGS[int(rng.integers(len(EASINGS)))]
    p = ease(easing, p)
    st = verb_track(verb, p, rng, w, h)

    # appearance with per-clip jitter
    def jitter(c):
        r, g, b = c
        hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)
        return hsv(hh + rng.uniform(-0.03, 0.03), ss * rng.uniform(0.85, 1.1), vv * rng.uniform(0.9, 1.1))

    obj1, obj2 = (jitter(c) for c in group["obj_colors"])
    bg1, bg2 = (jitter(c) for c in group["bg_colors"])
    mask = shape_mask(group["shape"], group["shape_params"])
    tex = texture(group["texture"], group["texture_params"], obj1, obj2, rng)
    bg = background(group["background"], group["background_params"], bg1, bg2, h, w, rng)
    for _ in range(group["distractors"]):  # static: no motion cue
        dm = shape_mask(group["distractor_shape"], draw_shape_params(rng, group["distractor_shape"]))
        dcol = hsv(rng.random(), rng.uniform(0, 0.5), float(np.mean(bg1)) + rng.uniform(-0.2, 0.2))
        bg = place(bg, np.broadcast_to(dcol, (SPRITE, SPRITE, 3)).astype(np.float32), dm,
                   rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h, rng.uniform(0.12, 0.22) * h,
                   rng.uniform(0, 360), rng.uniform(0.5, 0.9), 0.0)
    diameter = float(rng.uniform(*group["size_px"]))
    cx = float(rng.uniform(0.35, 0.65)) * w
    cy = float(rng.uniform(0.4, 0.6)) * h if verb != "rise" else h / 2 + float(rng.uniform(-0.05, 0.05)) * h
    if verb == "slide":
        cx = w / 2 + float(rng.uniform(-0.05, 0.05)) * w
    angle0 = float(rng.uniform(0, 360))
    drift = rng.uniform(-8, 8, size=2) * h / 120  # px over the clip, random sign
    flicker = 1 + group["flicker"] * rng.standard_normal(n)
    shake = group["shake_px"] * rng.standard_normal((n, 2))

    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = place(bg, tex, mask, cx + st["dx"][i] + drift[0] * t[i], cy + st["dy"][i] + drift[1] * t[i],
                    diameter * st["scale"][i], angle0 + st["angle"][i], float(st["opacity"][i]), float(st["blur"][i]))
        if shake[i].any():
            m = np.float32([[1, 0, shake[i, 0]], [0, 1, shake[i, 1]]])
            img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        img = img * 255 * flicker[i]
        if group["noise_sigma"] > 0:
            img = img + rng.normal(0, group["noise_sigma"], img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    draw = {"frames": n, "duration_s": round(n / fps, 2), "easing": easing, "holds": [round(hold0, 3), round(hold1, 3)],
            "diameter_px": round(diameter, 1)}
    return frames, draw


def write_video(path: Path, frames: np.ndarray, fps: int, fourcc: str = "MJPG") -> None:
    h, w = frames.shape[1:3]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {fourcc} to {path}")
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()


def settings(groups: int, clips: int, seed: int, size: tuple[int, int], verbs: list[str], same_draw: bool) -> dict:
    return {"version": VERSION, "groups": groups, "clips": clips, "seed": seed, "size": f"{size[0]}x{size[1]}",
            "verbs": list(verbs), "same_draw": same_draw, "fourcc": "MJPG", "container": "avi"}


def class_names(verbs: list[str]) -> list[str]:
    return [name for v in verbs for name in VERBS[v]]


def generate(root: Path, groups: int = 12, clips: int = 3, seed: int = 0, size: tuple[int, int] = (160, 120),
             verbs: list[str] = list(DEFAULT_VERBS), same_draw: bool = False, quiet: bool = False) -> dict:
    """Write the dataset to root (replacing the class folders this generator owns); returns pairs.json's content."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in class_names(verbs):
        if (root / name).exists():
            shutil.rmtree(root / name)
        (root / name).mkdir()
    (root / "pairs.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    group_info, videos, frames_total = [], 0, 0
    for g in range(groups):
        grp = make_group(seed, g, size)
        group_info.append(grp)
        for verb in verbs:
            verb_id = list(VERBS).index(verb)
            for c in range(clips):
                for direction, name in enumerate(VERBS[verb]):
                    draw_dir = 0 if same_draw else direction
                    frames, _ = render_clip(grp, verb, rng_for(seed, 2, g, verb_id, c, draw_dir), size)
                    if direction == 1:
                        frames = frames[::-1]
                    write_video(root / name / f"v_{name}_g{g + 1:02d}_c{c + 1:02d}.avi", frames, grp["fps"])
                    videos += 1
                    frames_total += len(frames)
        if not quiet:
            print(f"group {g + 1}/{groups}: {grp['shape']}/{grp['texture']}/{grp['background']} {grp['fps']} fps "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    info = {"generator": "benchmarks/motion_pairs.py", "settings": settings(groups, clips, seed, size, verbs, same_draw),
            "classes": sorted(class_names(verbs)), "pairs": [list(VERBS[v]) for v in verbs],
            "chance": 1 / len(class_names(verbs)), "videos": videos, "frames": frames_total,
            "groups": group_info}
    (root / "pairs.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def parse_wh(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    if min(w, h) < 16:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WxH, each >= 16")
    return w, h


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="output folder (class folders + pairs.json)")
    ap.add_argument("--groups", type=int, default=12, help="appearance groups (default 12)")
    ap.add_argument("--clips", type=int, default=3, help="clips per (class, group) (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=parse_wh, default=(160, 120), help="frame size WxH (default 160x120)")
    ap.add_argument("--verbs", default=",".join(DEFAULT_VERBS),
                    help=f"comma-separated verbs out of {', '.join(VERBS)} (default {','.join(DEFAULT_VERBS)})")
    ap.add_argument("--same-draw", action="store_true",
                    help="make each reversed-class clip the exact reverse of the forward clip with the same number")
    a = ap.parse_args(argv)
    verbs = [v.strip() for v in a.verbs.split(",") if v.strip()]
    unknown = [v for v in verbs if v not in VERBS]
    if unknown or not verbs or len(set(verbs)) != len(verbs):
        ap.error(f"--verbs {a.verbs!r}: allowed (each once) {', '.join(VERBS)}")
    if a.groups < 1 or a.groups > 99 or a.clips < 1 or a.clips > 99:
        ap.error("--groups and --clips: 1..99")
    info = generate(a.root, a.groups, a.clips, a.seed, a.size, verbs, a.same_draw)
    print(json.dumps({k: info[k] for k in ("classes", "pairs", "videos", "frames")} | {"root": str(a.root)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
