"""Pictures of explanations (`har explain`): a heat-map overlay as an animated GIF, a PNG strip of
the T sampled frames with their maps and the per-frame importance as a timeline below, and
filter grids. Pure drawing: arrays in, files out, each written atomically (pipeline.core.files)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.core.files import replace_atomically
from trainers.runs.report import pyplot, save_figure


def overlay(frames: np.ndarray, maps: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 (T, H, W, 3): each frame blended with its map in the 'jet' colours (map 0: the frame)."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(maps, 0, 1))[..., :3] * 255          # (T, H, W, 3)
    a = (alpha * np.clip(maps, 0, 1) ** 0.5)[..., None]                   # weak evidence stays see-through
    return np.clip(frames * (1 - a) + heat * a, 0, 255).astype(np.uint8)


def write_gif(path: Path, frames: np.ndarray, fps: float = 5.0, scale: int = 0) -> None:
    """An animated GIF of uint8 (T, H, W, 3) frames, looping; small frames scaled up to ~256 px."""
    from PIL import Image

    k = scale or max(1, 256 // max(frames.shape[1:3]))
    images = [Image.fromarray(np.ascontiguousarray(f)).resize((f.shape[1] * k, f.shape[0] * k), Image.NEAREST)
              for f in frames]
    replace_atomically(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                       duration=int(1000 / max(fps, 0.5)), loop=0))


def strip(path: Path, frames: np.ndarray, maps: np.ndarray, importance: np.ndarray, title: str,
          frame_idx: list[int], importance_label: str) -> None:
    """PNG: the frames, the frames with their maps, and a bar per frame of its importance."""
    plt = pyplot()
    t = len(frames)
    cols = min(t, 16)
    step = math.ceil(t / cols)
    shown = list(range(0, t, step))
    cols = len(shown)
    h, w = frames.shape[1:3]
    cell = max(0.9, min(1.8, 16 / cols))
    fig = plt.figure(figsize=(cell * cols, cell * h / w * 2 + 2.0), layout="constrained")
    grid = fig.add_gridspec(3, cols, height_ratios=[h / w, h / w, 0.9])
    over = overlay(frames, maps)
    for j, i in enumerate(shown):
        for row, img in ((0, frames[i]), (1, over[i])):
            ax = fig.add_subplot(grid[row, j])
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"#{frame_idx[i]}", fontsize=7)
    ax = fig.add_subplot(grid[2, :])
    colours = ["#2a9d8f" if v >= 0 else "#e76f51" for v in importance]
    ax.bar(np.arange(t), importance, color=colours, width=0.8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlim(-0.5, t - 0.5)
    ax.set_xticks(np.arange(t))
    ax.set_xticklabels([str(v) for v in frame_idx], fontsize=6, rotation=90 if t > 16 else 0)
    ax.set_xlabel("source frame", fontsize=8)
    ax.set_ylabel(importance_label, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=9, wrap=True)
    save_figure(fig, path)


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n * 1.5))
    return math.ceil(n / cols), cols


def _unit_rgb(w: np.ndarray) -> np.ndarray:
    """One kernel (3, kh, kw) -> an (kh, kw, 3) image in [0, 1], centred on grey."""
    m = float(np.abs(w).max()) or 1.0
    return np.clip(0.5 + 0.5 * w.transpose(1, 2, 0) / m, 0, 1)


def filter_grid(path: Path, weight: np.ndarray, rgb: bool, title: str) -> None:
    """PNG: one tile per output filter of `weight` (O, I, kt, kh, kw). Colour kernels as RGB
    images (kt > 1: a strip of kt frames per filter); other kernels as heat maps, a t x 1 x 1
    (temporal) kernel as its inputs x time matrix, any other as the mean over inputs per frame."""
    plt = pyplot()
    o, i, kt, kh, kw = weight.shape
    rows, cols = _grid(o)
    temporal = not rgb and kh == kw == 1
    fig, axes = plt.subplots(rows, cols, figsize=(min(18, cols * (0.5 + 0.35 * kt)), rows * 0.9 + 0.8),
                             squeeze=False, layout="constrained")
    vmax = float(np.abs(weight).max()) or 1.0
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= o:
            ax.axis("off")
            continue
        f = weight[k]
        if rgb:
            img = np.concatenate([np.pad(_unit_rgb(f[:, s]), ((0, 0), (0, 1), (0, 0)), constant_values=1)
                                  for s in range(kt)], axis=1)
            ax.imshow(img, interpolation="nearest")
        elif temporal:
            ax.imshow(f[:, :, 0, 0], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        else:
            ax.imshow(np.concatenate(list(f.mean(0)), axis=1), cmap="RdBu_r", vmin=-vmax / 2, vmax=vmax / 2,
                      interpolation="nearest")
    fig.suptitle(title, fontsize=9, wrap=True)
    save_figure(fig, path)
