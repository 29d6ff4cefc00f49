"""A long video as a timeline (`har predict --window S --stride S`, `har serve`).

Windows of `window` seconds start every `stride` seconds (converted to frames with the video's own
average frame rate); the last window ends at the last frame, so the end of the video is always
covered. Each window is sampled as the run's recipe samples a whole video (its strategy, T
frames, K clips, deterministic: the test-time choice), scored, and its clip probabilities
averaged. Decoding streams: frames are resized to the stored size as they are decoded and only
the windows still open are held, so memory is bounded by window / stride windows of K x T stored
frames, whatever the video's length.

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

from pipeline import sampling, video
from pipeline.recipe import Recipe

MAX_SECONDS = 3600.0  # one window or stride at most an hour
BATCH = 8             # windows scored together


@dataclass(frozen=True)
class Timing:
    """Window and stride in seconds, checked."""
    window: float
    stride: float | None = None  # default: half the window

    def validate(self) -> None:
        for name, v in (("window", self.window), ("stride", self.stride)):
            if v is not None and not (0 < v <= MAX_SECONDS):  # also refuses nan
                raise ValueError(f"--{name} {v} seconds is out of range; allowed: > 0 and <= {MAX_SECONDS:g}")

    @property
    def step(self) -> float:
        return self.stride if self.stride is not None else self.window / 2


def plan(n: int, fps: float, timing: Timing) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the windows of a video of n frames at fps frames per second."""
    if n < 1:
        return []
    fps = fps if fps > 0 else 25.0  # a stream without a rate: 25, as players assume
    wf = max(1, int(timing.window * fps + 0.5))
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


def stream(path: Path, recipe: Recipe, timing: Timing, seen: dict | None = None
           ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Decode `path` once; yield (start, end, frames (K, T, H, W, 3) uint8) per window as soon as its
    last frame is decoded. The windows are planned on the frame count one demux pass locates (else
    the header's); `seen` receives "frames" (decoded) and "fps". Raises video.VideoError for an
    unreadable file or one that ends before its first window."""
    import av
    from av.video.reformatter import VideoReformatter

    from pipeline import augment

    seen = {} if seen is None else seen
    info = video.probe(path)
    packets = video.packet_plan(path)
    n = packets.frames if packets is not None else max(1, info.frames_estimate)
    windows = plan(n, info.fps, timing)
    seen.update(fps=info.fps if info.fps > 0 else 25.0, frames=0, planned=n)
    needs: dict[int, list[tuple[int, int, int]]] = {}  # source frame -> [(window, clip, t)]
    last = []
    for w, (s, e) in enumerate(windows):
        ix = window_indices(recipe, s, e)
        last.append(int(ix.max()))
        for (k, t), f in np.ndenumerate(ix):
            needs.setdefault(int(f), []).append((w, k, t))
    out_hw = (recipe.height, recipe.width)
    reformatter = VideoReformatter()
    held: dict[int, np.ndarray] = {}  # the windows still open
    done = 0
    container, vs = video._open(path)
    f = 0
    with container:
        try:
            for packet in container.demux(vs):
                try:
                    decoded = vs.decode(packet)
                except av.error.InvalidDataError:  # a corrupt packet: skipped, as video.scan does
                    continue
                for frame in decoded:
                    finished = []
                    if f in needs:
                        img = augment.clean(frame, out_hw, reformatter)
                        for w, k, t in needs.pop(f):
                            if w not in held:
                                held[w] = np.empty((recipe.clips, recipe.frames, *out_hw, 3), np.uint8)
                            held[w][k, t] = img
                            if f == last[w]:
                                finished.append(w)
                    f += 1
                    seen["frames"] = f
                    for w in finished:
                        done += 1
                        yield windows[w][0], windows[w][1], held.pop(w)
        except av.error.FFmpegError as e:  # truncated or damaged container: the windows decoded so far
            if video.transient(e):
                raise video.VideoError(f"the decoder failed for lack of resources after {f} frames: {e}") from None
    if done == 0:
        raise video.VideoError("no decodable video frames" if f == 0 else
                               f"the stream ended after {f} of {n} frames, before its first window", permanent=True)


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


CSV_COLUMNS = ["video", "start", "end", "error"]


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

    from pipeline.files import replace_atomically

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
    from trainers.report import pyplot, save_figure

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
