"""`har synth`: a small action dataset made here, with no download, in the UCF50 layout.

Each class is a temporal pattern of an object on a textured background. Classes come in pairs
made of the same frames in opposite order (Grow/Shrink, Brighten/Darken, CountUp/CountDown,
WarmUp/CoolDown), so a bag-of-frames model cannot tell a pair apart and a sequence model can.
The patterns change what a frozen CNN's globally pooled features see (size, brightness,
colour, count), not only where things are. A group shares its look (background, shape, colour,
camera offset), so a random split leaks appearance from train to test just as UCF50's does.

Its adapter (`load_synthetic`, registered in `datasets.DATASETS` as `synthetic`) reads the
folder as a class-per-folder tree and records the reversed pairs for the stores (`store_facts`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.core import outputs
from pipeline.core.files import replace_atomically
from pipeline.core.lineage import seed_for
from pipeline.datasets.folder import class_folders
from pipeline.datasets.index import DatasetError, DatasetIndex
from pipeline.decoding.video import write_video

# (name, pattern, reversed?) in the order `--classes N` takes them
CLASSES = (
    ("Grow", "size", False), ("Shrink", "size", True),
    ("Brighten", "brightness", False), ("Darken", "brightness", True),
    ("CountUp", "count", False), ("CountDown", "count", True),
    ("WarmUp", "colour", False), ("CoolDown", "colour", True),
    ("Pulse", "pulse", False), ("Blink", "blink", False),
)
SHAPES = ("disc", "square", "diamond", "ring")


@dataclass(frozen=True)
class SynthConfig:
    classes: int = 6         # how many of CLASSES, in order (pairs first)
    groups: int = 24         # appearance groups per class (_gGG_), as many as UCF50 has
    clips: int = 2           # clips per group (_cCC_)
    seed: int = 0
    frames: int = 50         # mean frames per clip (each clip varies by +-20%)
    width: int = 320
    height: int = 240
    fps: int = 25
    bit_rate: int = 1_200_000  # about UCF50's 1.2 Mbit/s Xvid
    gop: int = 12              # keyframe interval; Xvid's default allows up to 300 (one keyframe per clip)

    def validate(self) -> None:
        if not 1 <= self.classes <= len(CLASSES):
            raise ValueError(f"--classes {self.classes} is out of range; allowed: 1..{len(CLASSES)}")
        for name in ("groups", "clips", "frames", "width", "height", "fps", "gop"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)} must be >= 1")
        if self.frames < 8:
            raise ValueError(f"--frames {self.frames} is too short for a motion pattern; allowed: >= 8")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth coloured texture: a few random low-frequency waves per channel. (h, w, 3) float32."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(20, 110, 3).astype(np.float32)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    for _ in range(4):
        fy, fx = rng.uniform(0.005, 0.05, 2)
        ph = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(1, 4, 3).astype(np.float32)
        img += np.sin(fy * y + fx * x + ph)[..., None] * amp
    return img


def _shape_mask(shape: str, y: np.ndarray, x: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = np.abs(y - cy), np.abs(x - cx)
    if shape == "disc":
        return dy**2 + dx**2 <= r * r
    if shape == "square":
        return np.maximum(dy, dx) <= r * 0.85
    if shape == "diamond":
        return dy + dx <= r * 1.2
    d = np.sqrt(dy**2 + dx**2)
    return (d <= r) & (d >= r * 0.55)


def _pattern(kind: str, u: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame parameters for progress u in [0, 1] (already reversed for the reversed class)."""
    ones = np.ones_like(u)
    out = {"size": ones * 0.6, "bright": ones, "count": ones, "warm": ones * 0.5, "visible": ones > 0}
    if kind == "size":
        out["size"] = 0.25 + 0.85 * u
    elif kind == "brightness":
        out["bright"] = 0.15 + 1.0 * u
    elif kind == "count":
        out["count"] = 1 + np.floor(u * 4.999)
    elif kind == "colour":
        out["warm"] = u
    elif kind == "pulse":
        out["size"] = 0.6 + 0.35 * np.sin(2 * np.pi * 2 * u)
    elif kind == "blink":
        out["visible"] = (np.floor(u * 6) % 2) == 0
    return out


@dataclass(frozen=True)
class _Clip:
    """Everything drawn in one clip, frame by frame (before the reversal of a reversed class)."""
    kind: str
    reverse: bool
    n: int
    pattern: dict
    bg: np.ndarray
    shape: str
    colour: np.ndarray
    centres: np.ndarray        # (n, 2) object centre (y, x) per frame
    r0: float
    noise: np.random.Generator

    def spots(self, t: int, h: int, w: int) -> list[tuple[float, float, float]]:
        """(cy, cx, r) of every object drawn in frame t; none while it is hidden."""
        if not self.pattern["visible"][t]:
            return []
        r = self.r0 * self.pattern["size"][t] * (0.55 if self.kind == "count" else 1.0)
        cy, cx = self.centres[t]
        return [(cy + sy * h * 0.8, cx + sx * w * 0.8, r) for sy, sx in SPOTS[:int(self.pattern["count"][t])]]


SPOTS = [(0.0, 0.0), (-0.3, -0.3), (0.3, 0.3), (-0.3, 0.3), (0.3, -0.3)]
_EXTENT = {"disc": 1.0, "square": 0.85, "diamond": 1.2, "ring": 1.0}  # half-width of a shape of radius r, in r


def _clip(cfg: SynthConfig, class_i: int, group: int, clip: int) -> _Clip:
    _, kind, reverse = CLASSES[class_i]
    h, w = cfg.height, cfg.width
    g_rng = np.random.default_rng(seed_for(cfg.seed, "group", group))  # shared by every class
    bg = _background(g_rng, h, w)
    shape = SHAPES[int(g_rng.integers(len(SHAPES)))]
    colour = g_rng.uniform(190, 255, 3).astype(np.float32)  # light objects on darker textures: the change shows
    off_y, off_x = g_rng.uniform(-0.15, 0.15, 2) * (h, w)
    c_rng = np.random.default_rng(seed_for(cfg.seed, kind, group, clip))  # shared by a reversed pair
    n = max(8, int(round(cfg.frames * c_rng.uniform(0.8, 1.2))))
    u = np.linspace(0, 1, n, dtype=np.float32)
    scale = c_rng.uniform(0.85, 1.15)
    drift = c_rng.uniform(-0.1, 0.1, 2) * (h, w)
    u64 = u.astype(np.float64)  # the centres in float64 whatever numpy's promotion rules (1.x would keep float32)
    centres = np.stack([h / 2 + off_y + drift[0] * u64, w / 2 + off_x + drift[1] * u64], axis=1)
    return _Clip(kind, reverse, n, _pattern(kind, u), bg, shape, colour, centres, min(h, w) * 0.32 * scale, c_rng)


def render_clip(cfg: SynthConfig, class_i: int, group: int, clip: int) -> np.ndarray:
    """(n, H, W, 3) uint8 frames of one clip; a pure function of (cfg.seed, class, group, clip).

    The reversed class of a pair (Shrink for Grow) is exactly its partner's frames backwards.
    """
    c = _clip(cfg, class_i, group, clip)
    h, w = cfg.height, cfg.width
    p = c.pattern
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    warm, cool = np.array([255, 90, 40], np.float32), np.array([40, 110, 255], np.float32)
    frames = np.empty((c.n, h, w, 3), np.uint8)
    for t in range(c.n):
        img = c.bg.copy()
        col = c.colour * p["bright"][t]
        if c.kind == "colour":
            col = (warm * p["warm"][t] + cool * (1 - p["warm"][t])) * 0.8 + c.colour * 0.2
        for cy, cx, r in c.spots(t, h, w):
            img[_shape_mask(c.shape, y, x, cy, cx, r)] = col
        img += c.noise.normal(0, 3, (h, w, 1)).astype(np.float32)  # sensor noise
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames[::-1].copy() if c.reverse else frames


def object_boxes(cfg: SynthConfig, class_i: int, group: int, clip: int) -> list[list[list[float]]]:
    """Per frame of the clip (as render_clip orders them), the box [top, left, bottom, right] in
    pixels of every object drawn (the bounding box of its mask, inside the frame); [] while hidden."""
    c = _clip(cfg, class_i, group, clip)
    h, w = cfg.height, cfg.width
    out = []
    for t in range(c.n):
        boxes = []
        for cy, cx, r in c.spots(t, h, w):
            e = r * _EXTENT[c.shape]
            box = [max(0.0, cy - e), max(0.0, cx - e), min(float(h), cy + e + 1), min(float(w), cx + e + 1)]
            if box[0] < box[2] and box[1] < box[3]:
                boxes.append([round(float(v), 2) for v in box])
        out.append(boxes)
    return out[::-1] if c.reverse else out


def class_names(cfg: SynthConfig) -> list[str]:
    return [CLASSES[i][0] for i in range(cfg.classes)]


def reversed_classes(classes: list[str]) -> list[str]:
    """The classes of `classes` whose reversed partner is there too (Grow and Shrink, ...): the
    ones a bag-of-frames model cannot separate."""
    by_pattern: dict[str, list[str]] = {}
    for name, pattern, _rev in CLASSES:
        if pattern not in ("pulse", "blink"):
            by_pattern.setdefault(pattern, []).append(name)
    present = set(classes)
    return [c for pair in by_pattern.values() if set(pair) <= present for c in pair]


def generate(out: Path, cfg: SynthConfig, on_video=None, masks: bool = False, progress=None) -> list[Path]:
    """Write every clip as <out>/<Class>/v_<Class>_gGG_cCC.avi and <out>/synth.json, the manifest
    that lists every file written; with `masks` also <out>/masks.json: {"<Class>/v_...avi": per
    source frame, the [top, left, bottom, right] pixel box of every object} (the ground truth of a
    pointing game). `on_video(path)` and `progress(done, total)` are called after every clip.

    `out` is new, empty or har synth's own earlier output (`outputs.check_output`); anything else
    in it is refused before a byte is written, and only the files its synth.json lists are ever
    replaced or removed. A clip whose finished synth.json recorded the same config is kept (rerun =
    no-op); the clips of an earlier, larger config are removed. While it writes, synth.json says
    "complete": false and lists the old files and the new: a kill leaves a folder the next run
    finishes, and one the dataset reader refuses.
    """
    cfg.validate()
    out = Path(out)
    outputs.check_output(out, "synth", flag="OUT")
    owned = outputs.synth_files(out) if out.is_dir() else frozenset()
    old = _read_meta(out / MANIFEST) if MANIFEST in owned else {}
    clips = [(ci, g, c, f"{cname}/v_{cname}_g{g:02d}_c{c:02d}.avi") for ci, cname in enumerate(class_names(cfg))
             for g in range(1, cfg.groups + 1) for c in range(1, cfg.clips + 1)]
    files = [rel for *_, rel in clips] + ([MASKS] if masks else [])
    same = old.get("complete") is not False and old.get("config") == asdict(cfg)
    todo = [clip for clip in clips if not (same and (out / clip[3]).is_file())]
    stale = sorted(owned - set(files) - {MANIFEST})   # an earlier config's clips and masks.json, a kill's temporary files
    meta = {"generator": "har synth", "config": asdict(cfg), "classes": class_names(cfg), "masks": masks,
            "reversed_pairs": [[CLASSES[i][0], CLASSES[i + 1][0]] for i in range(0, cfg.classes - 1, 2)
                               if CLASSES[i + 1][2]]}
    out.mkdir(parents=True, exist_ok=True)
    if todo or stale or masks:  # a half-rewritten folder must never look finished, and stays ours
        _write_meta(out, {**meta, "complete": False, "files": sorted(owned - {MANIFEST} | set(files))})
    todo_set = {rel for *_, rel in todo}
    paths = []
    for ci, g, c, rel in clips:
        path = out / rel
        if rel in todo_set:
            path.parent.mkdir(exist_ok=True)
            replace_atomically(path, lambda tmp: write_video(
                tmp, render_clip(cfg, ci, g, c), fps=cfg.fps, codec="mpeg4", bit_rate=cfg.bit_rate,
                options={"threads": "1", "g": str(cfg.gop)}), path.with_name(path.stem + ".tmp.avi"))
        paths.append(path)
        if on_video:
            on_video(path)
        if progress:
            progress(len(paths), len(clips))
    _remove(out, stale)
    if masks:
        boxes = {rel: object_boxes(cfg, ci, g, c) for ci, g, c, rel in clips}
        replace_atomically(out / MASKS, lambda tmp: tmp.write_text(json.dumps(boxes, separators=(",", ":"))))
    _write_meta(out, {**meta, "complete": True, "files": files})
    return paths


MANIFEST, MASKS = outputs.SYNTH_MANIFEST, outputs.SYNTH_MASKS


def _write_meta(out: Path, meta: dict) -> None:
    replace_atomically(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))


def _read_meta(path: Path) -> dict:
    """synth.json as an object; {} when it is missing or not har's JSON."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _remove(out: Path, stale: list[str]) -> None:
    """Remove the files `stale` names (relative to `out`, each one synth.json listed) and the folders
    that leaves empty; never a symlink or a folder of someone else's."""
    for rel in stale:
        path = out / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
    for folder in sorted({p for rel in stale for p in Path(rel).parents if p != Path(".")}, key=lambda p: -len(p.parts)):
        if (out / folder).is_dir() and not (out / folder).is_symlink() and not any((out / folder).iterdir()):
            (out / folder).rmdir()


# ---- the dataset's adapter (datasets.DATASETS: synthetic) --------------------------------------

def store_facts(dataset: str, classes: list[str]) -> dict:
    """Facts of a dataset that its stores keep in their attrs for training to read: for the
    synthetic set `reversed_pairs`, the classes whose time-reversed twin is a class too (the ones
    a bag-of-frames model cannot tell apart); nothing for the others."""
    if dataset != "synthetic":
        return {}
    return {"reversed_pairs": reversed_classes(list(classes))}


def load_synthetic(root: Path) -> DatasetIndex:
    if not (root / "synth.json").exists():
        raise DatasetError(f"synthetic: no synth.json at {root}; make the dataset first with `har synth {root}`")
    if _synth_unfinished(root / "synth.json"):
        raise DatasetError(f"synthetic: {root} is half written (har synth did not finish); run the same "
                           f"`har synth {root}` again")
    index = class_folders("synthetic", root, "synthetic")
    return replace(index, attrs=store_facts("synthetic", index.classes))


def _synth_unfinished(manifest: Path) -> bool:
    """Whether har synth is writing this folder, or was killed while it did (synth.json "complete": false)."""
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("complete") is False
