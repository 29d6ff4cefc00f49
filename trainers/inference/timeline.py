"""A long video as a timeline (`har predict --window S --stride S`, `har serve`).

Windows of `window` seconds start every `stride` seconds (converted to frames with the video's own
average frame rate); the last window ends at the last frame, so the end of the video is always
covered; a window spans at least MIN_WINDOW_FRAMES frames of its video (`check_window`: predict
and serve refuse a shorter one before decoding). Each window is sampled as the run's recipe
samples a whole video (its strategy, T frames, K clips, deterministic: the test-time choice),
scored, and its clip probabilities averaged. Decoding streams: frames are resized to the stored
size as they are decoded and only the windows still open are held, so memory is bounded by
window / stride windows of K x T stored frames, whatever the video's length.

Segments merge consecutive windows with the same top-1 class. A boundary between two windows
that disagree is put halfway between their centres (the windows overlap, so it falls inside
both); the first segment starts at 0 and the last ends at the video's duration.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.decoding import reader, sampling, video
from pipeline.decoding.recipe import Recipe

MAX_SECONDS = 3600.0  # one window or stride at most an hour
BATCH = 8             # windows scored together
MAX_OPEN = 64         # windows overlapping one frame (window / stride) at most
MIN_WINDOW_FRAMES = 8  # a window spans at least this many frames of its video: shorter ones say nothing
                       # of motion and multiply the work (one window per frame and more)
ASSUMED_FPS = 25.0     # a stream without a frame rate: as players assume


@dataclass(frozen=True)
class Timing:
    """Window and stride in seconds, checked."""
    window: float
    stride: float | None = None  # default: half the window

    def validate(self) -> None:
        for name, v in (("window", self.window), ("stride", self.stride)):
            if v is not None and not (0 < v <= MAX_SECONDS):  # also refuses nan
                raise ValueError(f"--{name} {v} seconds is out of range; allowed: > 0 and <= {MAX_SECONDS:g}")
        if self.stride is not None and not self.window / MAX_OPEN <= self.stride <= self.window:
            raise ValueError(f"--stride {self.stride} is out of range for --window {self.window}; allowed: from "
                             f"window / {MAX_OPEN} (at most {MAX_OPEN} windows overlap, each held in memory) to "
                             "the window (a longer stride would leave parts of the video unseen)")

    @property
    def step(self) -> float:
        return self.stride if self.stride is not None else self.window / 2


def window_frames(timing: Timing, fps: float) -> int:
    """The window's length in frames of a video at `fps` (rounded half up; no rate: ASSUMED_FPS)."""
    return int(timing.window * (fps if fps > 0 else ASSUMED_FPS) + 0.5)


def check_window(timing: Timing, fps: float, video: str) -> int:
    """The window's length in frames of `video` (a name for the message) at `fps` (no rate:
    ASSUMED_FPS); ValueError naming the window, the video's frame period and the shortest window
    allowed when it spans fewer than MIN_WINDOW_FRAMES frames. For example 0.1 s at 25 fps is 2.5
    frames: refused, allowed 0.32 s or more."""
    rate = fps if fps > 0 else ASSUMED_FPS
    if timing.window * rate < MIN_WINDOW_FRAMES - 1e-6:  # the tolerance: 0.32 s x 25 fps is 8 frames
        raise ValueError(f"a window of {timing.window:g} s is {timing.window * rate:.3g} frames of {video} (one frame "
                         f"every {1 / rate:.4g} s at {rate:.4g} fps{'' if fps > 0 else ', assumed'}); allowed: at "
                         f"least {MIN_WINDOW_FRAMES} frames, {MIN_WINDOW_FRAMES / rate:.4g} s or more")
    return window_frames(timing, fps)


def window_count(n: int, fps: float, timing: Timing) -> int:
    """len(plan(n, fps, timing)), counted without listing the windows (a server checks a request's
    budget with it before any list is made)."""
    if n < 1:
        return 0
    fps = fps if fps > 0 else ASSUMED_FPS
    wf = max(1, int(timing.window * fps + 0.5))
    if n <= wf:
        return 1
    step = max(timing.step * fps, 1.0)
    k = int((n - wf) / step + 1e-9) + 1
    return k + (int((k - 1) * step + 0.5) + wf < n)


def plan(n: int, fps: float, timing: Timing) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the windows of a video of n frames at fps frames per second."""
    if n < 1:
        return []
    fps = fps if fps > 0 else ASSUMED_FPS
    wf = max(1, window_frames(timing, fps))
    if n <= wf:
        return [(0, n)]
    # start k at k * stride seconds, rounded half up: no drift over an hour at 12.5 frames a stride
    step = max(timing.step * fps, 1.0)
    starts = [int(k * step + 0.5) for k in range(int((n - wf) / step + 1e-9) + 1)]
    if starts[-1] + wf < n:
        starts.append(n - wf)
    return [(s, s + wf) for s in starts]


def window_indices(recipe: Recipe, start: int, end: int) -> np.ndarray:
    """(K, T) source frames of one window: the recipe's test-time sampling of its end - start frames."""
    idx = sampling.sample_indices(recipe.sampling, end - start, recipe.frames, recipe.clips, recipe.stride, None)
    return idx.astype(np.int64) + start


def frame_count(path: Path) -> int:
    """The frames to plan on: located by one demux pass when packets stand for frames
    (video.packet_plan), else the packets counted (no decoding); headers lie."""
    packets = video.packet_plan(path)
    if packets is not None:
        return packets.frames
    return video.count_packets(path) or max(1, video.probe(path).frames_estimate)


def stream(path: Path, recipe: Recipe, timing: Timing, seen: dict | None = None, n: int | None = None
           ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Decode `path` once; yield (start, end, frames (K, T, H, W, 3) uint8) per window as soon as its
    last sampled frame is decoded. Windows are planned on `n` frames (default: frame_count).
    `seen` receives "planned", "frames" (decoded), "fps", "fps_assumed", and "times": the
    presentation time in seconds of each window's first frame and of the frame after its end
    (so a variable-frame-rate video gets its real times), "end": the time the last frame ends.
    Raises video.VideoError for an unreadable file or one that decodes to far fewer frames than
    planned (truncated, as `har predict` without a window refuses it)."""
    seen = {} if seen is None else seen
    info = video.probe(path)
    n = frame_count(path) if n is None else n
    fps = info.fps if info.fps > 0 else ASSUMED_FPS
    windows = plan(n, fps, timing)
    seen.update(fps=fps, fps_assumed=not info.fps > 0, frames=0, planned=n, times={})
    bounds = {s for s, _ in windows} | {e for _, e in windows}
    needs: dict[int, list[tuple[int, int, int]]] = {}  # source frame -> [(window, clip, t)]
    last = []
    for w, (s, e) in enumerate(windows):
        ix = window_indices(recipe, s, e)
        last.append(int(ix.max()))
        for (k, t), f in np.ndenumerate(ix):
            needs.setdefault(int(f), []).append((w, k, t))
    out_hw = (recipe.height, recipe.width)
    held: dict[int, np.ndarray] = {}  # the windows still open: at most about window / stride
    f, t_last, dt = 0, None, 1 / fps
    for f, when, img in reader.clean_frames(path, out_hw, needs.__contains__):  # img: the clean view if needed
        t = when if when is not None else f / fps
        if t_last is not None and t > t_last:
            dt = t - t_last
        t_last = t
        if f in bounds:
            seen["times"][f] = t
        finished = []
        if f in needs:
            for w, k, i in needs.pop(f):
                if w not in held:
                    held[w] = np.empty((recipe.clips, recipe.frames, *out_hw, 3), np.uint8)
                held[w][k, i] = img
                if f == last[w] and w not in finished:  # a short window samples a frame twice
                    finished.append(w)
        seen["frames"] = f + 1
        for w in finished:
            yield windows[w][0], windows[w][1], held.pop(w)
    f = seen["frames"]  # decoded; a truncated or damaged container ends early, judged below
    seen["end"] = (t_last if t_last is not None else 0.0) + dt
    if f == 0:
        raise video.VideoError("no decodable video frames", permanent=True)
    announced = max(n, info.frames_estimate)  # the header's count too: a cut-off file's packets end early
    if f < announced - max(2, announced // 20):
        raise video.VideoError(f"truncated or damaged: the container announces {announced} frames, only {f} decode",
                               permanent=True)


def segments(starts: np.ndarray, ends: np.ndarray, labels: list[str], probs: np.ndarray, duration: float) -> list[dict]:
    """Merge consecutive windows with the same top-1 label: [{"label", "start", "end", "probability"
    (the mean of that label's probability over its windows), "windows"}]."""
    if not labels:
        return []
    centres = (np.asarray(starts, float) + np.asarray(ends, float)) / 2
    out: list[dict] = []
    first = 0
    for i in range(1, len(labels) + 1):
        if i < len(labels) and labels[i] == labels[first]:
            continue
        start = 0.0 if first == 0 else float((centres[first - 1] + centres[first]) / 2)
        end = duration if i == len(labels) else float((centres[i - 1] + centres[i]) / 2)
        out.append({"label": labels[first], "start": round(start, 3), "end": round(end, 3),
                    "probability": float(np.mean(probs[first:i])), "windows": i - first})
        first = i
    return out


def csv_header(top: int, windows: bool) -> list[str]:
    """The columns of `har predict --csv`: one row per video, or per window with --window."""
    base = ["video", "start", "end", "error"] if windows else ["video", "clips", "error"]
    return base + [f"{p}{i}" for i in range(1, top + 1) for p in ("class", "probability")]


def csv_rows(result: dict, top: int, windows: bool) -> list[list]:
    """The rows of one video's result (a failed video: one row with its error)."""
    def tops(t: list[dict]) -> list:
        cells = []
        for i in range(top):
            cells += [t[i]["class"], f"{t[i]['probability']:.6f}"] if i < len(t) else ["", ""]
        return cells

    if "error" in result:
        return [[result["video"], *([""] * (2 if windows else 1)), result["error"], *([""] * 2 * top)]]
    if not windows:
        return [[result["video"], result["clips"], "", *tops(result["top"])]]
    return [[result["video"], f"{w['start']:.3f}", f"{w['end']:.3f}", "", *tops(w["top"])] for w in result["windows"]]


def write(folder: Path, stem: str, result: dict, probs: np.ndarray, classes: list[str], top: int) -> dict:
    """<stem>.timeline.json / .csv / .png in `folder` (a checked timeline folder); the file names."""
    import json

    from pipeline.core.files import replace_atomically

    files = {x: str(folder / f"{stem}.timeline.{x}") for x in ("json", "csv", "png")}

    def rows(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(csv_header(top, True))
            w.writerows(csv_rows(result, top, True))
    replace_atomically(Path(files["csv"]), rows)
    plot(Path(files["png"]), result, probs, classes)
    replace_atomically(Path(files["json"]), lambda tmp: tmp.write_text(json.dumps({**result, "files": files}, indent=2)))
    return files


def plot(path: Path, result: dict, probs: np.ndarray, classes: list[str], shown: int = 5) -> None:
    """The probability of the `shown` most likely classes over time (window centres), the segments
    as a coloured band below."""
    from trainers.runs.report import pyplot, save_figure

    plt = pyplot()
    wins = result["windows"]
    t = np.array([(w["start"] + w["end"]) / 2 for w in wins])
    order = np.argsort(-probs.max(0), kind="stable")[:shown]
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 4), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(order)}
    for c in order:
        a.plot(t, probs[:, c], marker="o" if len(t) < 60 else None, ms=3, color=colours[c], label=classes[c])
    a.set_ylim(0, 1.02)
    a.set_ylabel("probability")
    a.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    a.set_title(f"{Path(result['video']).name}: window {result['window']:g} s, stride {result['stride']:g} s")
    index = {c: i for i, c in enumerate(classes)}
    for s in result["segments"]:
        ci = index[s["label"]]
        b.axvspan(s["start"], s["end"], color=colours.get(ci, "0.7"), alpha=0.8)
        b.text((s["start"] + s["end"]) / 2, 0.5, s["label"], ha="center", va="center", fontsize=7, clip_on=True)
    b.set_yticks([])
    b.set_xlabel("seconds")
    b.set_xlim(0, max(result["duration"], 1e-3))
    save_figure(fig, path)
