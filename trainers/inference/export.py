"""`har export`: a finished run as one self-contained model file, uint8 frames in, logits out.

The file holds the run's whole chain as one graph: the stored clip is cut to the model's input
geometry (a video model's centre crop; for a head run the backbone's own resize and centre crop,
or nothing with `--resize stored`), normalised, and scored (a video model; or the backbone per
frame, its features rounded to float16 as the feature store holds them, and the head). Input:
uint8 (B, T, H, W, 3) RGB clips at the run's stored size, sampled from a video as the run's
recipe says; output: (B, C) float32 logits, the ones `har predict` computes for the same clips
(`predictor.load(run).score`; checked on every export, on the written file). B is free.

The file says what it needs without har. ONNX `metadata_props` (ONNX Runtime reads them:
`session.get_modelmeta().custom_metadata_map`): `classes` (a JSON list), `input` (JSON: layout,
dtype, frames, size, channels, the resize, crop and normalisation done inside), `har_run`,
`fingerprint`, `har_version`, `task`, `model` or `backbone`, `head`, `weights` and `resize`,
`recipe` (JSON). TorchScript: the same in the extra files `classes.json`, `input.json` and
`har.json` (`torch.jit.load(path, _extra_files={"classes.json": "", ...})`). The formats, how
each is written and read back: trainers.inference.export_formats (`onnx`, opset 17, needs
pip install 'har[export]'; `torchscript`).

The backbone's resize is written as two matrix products (rows @ frame @ columns), the matrices
read off torch's own interpolation (antialiased bilinear or bicubic, as torchvision resizes a
tensor): the TorchScript-based ONNX exporter has no antialiased resize (aten::_upsample_bilinear2d_aa
is "not supported" at opset 18 in torch 2.14), and matrices are the same graph in every format and
opset. The crop is folded into the matrices; values are clamped and rounded to whole pixels as
torchvision's uint8 resize does.

Where a file may be written: `--out` (default RUN/export/model.onnx or model.pt) must end in the
format's suffix; an existing file there is replaced only when it is har's own export of that
format; never inside a har store, an explain, compare or timeline folder, or a run folder other
than in its `export` folder. The file is written beside its place and renamed over it after the
check passed (pipeline.core.files).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.stages import backbones, input_policy
from pipeline.core import files, outputs
from pipeline.core.registry import Registry
from trainers.inference import export_formats, loaded, predictor
from trainers.inference.export_formats import FORMATS, INPUT_NAME, OUTPUT_NAME, ExportError, Format
from trainers.runs import runner
from trainers.training import tasks
from trainers.models.chain import Normalised, resize_matrix

logger = logging.getLogger(__name__)

ATOL, RTOL = 1e-4, 0.0  # the written file against `har predict`'s logits on the check clips: absolute
CHECK_CLIPS = 2     # seeded random clips scored by both (and the first alone: a batch of 1)


# ---- the graph: stored clip -> the model's input -> logits -------------------------------------

class Exported(nn.Module):
    """uint8 (B, T, H, W, 3) stored clips -> (B, C) float32 logits: `cut` the pixels to the
    model's input (float (B, 3, T, h, w), 0..255), then the run's chain (normalisation inside)."""

    def __init__(self, model: nn.Module, cut: nn.Module):
        super().__init__()
        self.cut, self.model = cut, model

    def forward(self, frames):
        x = frames.permute(0, 4, 1, 2, 3).float()       # (B, 3, T, H, W)
        return self.model(self.cut(x))


class Crop(nn.Module):
    """The window [top:top+height, left:left+width] of every frame: (..., H, W) -> (..., h, w)."""

    def __init__(self, top: int, left: int, height: int, width: int):
        super().__init__()
        self.box = top, left, height, width

    def forward(self, x):
        top, left, h, w = self.box
        return x[..., top:top + h, left:left + w]


class Resample(nn.Module):
    """A separable resize and crop as two matrix products, then whole pixels: (..., H, W) ->
    rows (h, H) @ x @ cols^T (W, w), clamped to 0..255 and rounded (torchvision's uint8 result).
    Columns first, as torch's separable kernels do (the same sums in the same order: equal to
    the bit for bilinear, a pixel off by one in ~1e-6 for bicubic downscaling)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor):
        super().__init__()
        self.register_buffer("rows", rows.float().contiguous())         # (h, H)
        self.register_buffer("cols_t", cols.float().t().contiguous())   # (W, w)

    def forward(self, x):
        return torch.matmul(self.rows, torch.matmul(x, self.cols_t)).clamp(0, 255).round()


def window(n: int, crop: int, offset: str = "round") -> list[int]:
    """Indices into n samples of torchvision's centre crop of `crop` (-1: the zero padding it adds
    when crop > n); `offset` "floor": where transformers' processors start it (input_policy.crop_start).
    E.g. n=5, crop=3 -> [1, 2, 3]; n=2, crop=4 -> [-1, 0, 1, -1]."""
    if crop > n:
        before = (crop - n) // 2
        return [i - before if 0 <= i - before < n else -1 for i in range(crop)]
    start = input_policy.crop_start(n, crop, offset)
    return list(range(start, start + crop))


def _pick(weights: torch.Tensor, rows: list[int]) -> torch.Tensor:
    out = torch.zeros(len(rows), weights.shape[1])
    for i, r in enumerate(rows):
        if r >= 0:
            out[i] = weights[r]
    return out


@dataclass(frozen=True)
class Cut:
    """How a task kind's stored clip becomes its model's input, as traceable modules."""
    module: nn.Module                 # float (B, 3, T, H, W) pixels -> (B, 3, T, h, w)
    about: dict                       # the `preprocess` entry of the file's input metadata
    mean: torch.Tensor | None = None  # (1, 3, 1, 1) x 255 and its inverse std: the constants har predict
    inv_std: torch.Tensor | None = None  # normalises with, where the chain's differ in the last bit


def backbone_cut(card: dict, hw: tuple[int, int]) -> Cut:
    """A head run: the resize and centre crop of the input policy its store recorded, or none for
    features made with --resize stored; normalised with the constants of `input_policy.Preprocess`
    (the chain rebuilds them from a list: one bit off, 3e-5 in the logits after the float16
    rounding of the features)."""
    pre = input_policy.Preprocess(backbones.policy_of(card), card.get("resize", "weights") == "weights")
    if not pre.resize:
        return Cut(nn.Identity(), {"resize_to": None, "crop": None, "in_graph": True}, pre.mean, pre.inv_std)
    mode, aa = pre.interpolation.value, bool(pre.antialias)
    h, w = hw
    geometry = input_policy.input_geometry(pre.policy, h, w)   # the sizes predict's Preprocess cuts to
    (rh, rw), (ch, cw) = geometry.resized, geometry.crop
    if (rh, rw) == (h, w):  # torchvision leaves a frame of the size asked for untouched
        rows, cols = torch.eye(h), torch.eye(w)
    else:
        rows, cols = resize_matrix(h, rh, mode, aa), resize_matrix(w, rw, mode, aa)
    ys, xs = window(rh, ch, pre.policy.crop_offset), window(rw, cw, pre.policy.crop_offset)
    about = {"resize_to": [rh, rw], "interpolation": mode, "antialias": aa, "rounded_to_uint8": True,
             "crop": {"top": ys[0], "left": xs[0], "height": ch, "width": cw}, "in_graph": True}
    return Cut(Resample(_pick(rows, ys), _pick(cols, xs)), about, pre.mean, pre.inv_std)


def centre_crop(card: dict, hw: tuple[int, int]) -> Cut:
    """A video-model run: the centre crop its card records (trainers.data.clips.centre_crops)."""
    size = card["crop"]
    h, w = hw
    top, left = (h - size) // 2, (w - size) // 2
    return Cut(Crop(top, left, size, size),
               {"resize_to": None, "crop": {"top": top, "left": left, "height": size, "width": size}, "in_graph": True})


# how each task kind cuts a stored clip to its model's input (the chain's to_input, traceable)
CUTS: Registry[Callable[[dict, tuple[int, int]], Cut]] = Registry("task kind to export")
CUTS.add("head", backbone_cut, "the backbone's resize and centre crop (none with --resize stored)")
CUTS.add("video-model", centre_crop, "the model's centre crop")


def _first_normalised(model: nn.Module) -> Normalised | None:
    return next((m for m in model.modules() if isinstance(m, Normalised)), None)


def normalisation(model: nn.Module) -> dict:
    """mean and std (0..1 units, per RGB channel) of the chain's first Normalised layer."""
    norm = _first_normalised(model)
    if norm is None:
        return {"in_graph": True}
    mean = (norm.mean.flatten() / 255).tolist()
    std = (1 / (norm.inv_std.flatten() * 255)).tolist()
    return {"mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std], "in_graph": True,
            "formula": "(x / 255 - mean) / std on the uint8 pixels x, inside the model"}


# ---- where it may be written ------------------------------------------------------------------------

def out_path(run_dir: Path, fmt: Format, out: Path | None, inputs: list[Path]) -> Path:
    """The file to write (absolute), checked: the format's suffix; not a folder, a symlink or a
    file that is not har's export of this format; not inside a har store, an input, a marked
    folder (explain, compare, timeline) or a run folder (except its export folder)."""
    if out is not None and str(out) in ("", "."):
        raise ExportError("--out is empty; name the model file, e.g. --out model" + fmt.suffix)
    target = Path(out) if out is not None else Path(run_dir) / "export" / f"model{fmt.suffix}"
    shown = f"--out {out}" if out is not None else str(target)
    if target.suffix != fmt.suffix:
        raise ExportError(f"{shown} does not end in {fmt.suffix}, the suffix of --format {fmt.name}; "
                          f"allowed: a file name ending in {fmt.suffix}")
    t = Path(os.path.abspath(target.expanduser()))
    t = t.parent.resolve() / t.name
    if t.is_symlink():
        raise ExportError(f"{shown} is a symlink; har writes its export only to a plain file: choose another path")
    if t.is_dir():
        raise ExportError(f"{shown} is a folder; name the model file inside it, e.g. {target / ('model' + fmt.suffix)}")
    if t.exists() and fmt.meta(t) is None:
        raise ExportError(f"{shown} is a file that is not a har {fmt.name} export; har only replaces its own "
                          "export of the same format: choose a new path")
    for i in inputs:
        r = Path(os.path.abspath(i)).resolve()
        if r == t or r in t.parents:
            raise ExportError(f"{shown} is inside {i}, an input of the run; choose a path outside it")
    for a in t.parents:
        if not a.is_dir():
            continue
        kind = outputs.store_kind(a)
        if kind:
            raise ExportError(f"{shown} is inside {a}, a har {kind} store; har never writes into a store")
        if outputs.is_run_dir(a) and t.parent != a / "export":
            raise ExportError(f"{shown} is inside the run folder {a}; a run's exports go in {a / 'export'}")
        for marked in outputs.MARKED:
            if outputs.is_marked_dir(a, marked):
                raise ExportError(f"{shown} is inside {a}, a har {marked} folder; choose a path outside it")
    return t


# ---- export ---------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    path: Path
    format: str
    task: str
    classes: list[str]
    input: dict
    bytes: int = 0
    seconds: float = 0.0
    max_diff: float = 0.0      # largest |logit difference| of the written file against har predict
    replaced: bool = False
    meta: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"path": str(self.path), "format": self.format, "task": self.task, "classes": self.classes,
                "input": self.input, "bytes": self.bytes, "seconds": round(self.seconds, 2),
                "max_logit_diff_vs_predict": self.max_diff, "replaced": self.replaced}

    def summary(self) -> str:
        i = self.input
        from pipeline.core.resources import human

        return (f"file:    {self.path}{' (replaced)' if self.replaced else ''}\n"
                f"format:  {self.format}, {human(self.bytes)}\n"
                f"input:   uint8 (batch, {i['frames']}, {i['height']}, {i['width']}, 3) RGB, "
                f"normalised inside\n"
                f"output:  (batch, {len(self.classes)}) float32 logits over {', '.join(self.classes[:5])}"
                f"{', ...' if len(self.classes) > 5 else ''}\n"
                f"checked: its logits are har predict's (largest difference {self.max_diff:.2g}); "
                f"{self.seconds:.1f} s")


def build(run_dir: Path) -> tuple[Exported, dict, Callable[[np.ndarray], torch.Tensor]]:
    """(module, metadata, har predict's score) of a finished run, on the CPU:
    loaded and its card checked as `har predict` does (trainers.inference.loaded), its chain
    (TaskKind.chain) behind the cut."""
    run_dir = Path(run_dir)
    run = loaded.load(run_dir, ExportError)
    cfg, lin, kind, card, recipe = run.config, run.lineage, run.kind, run.card, run.recipe
    if kind.name not in CUTS:
        raise ExportError(f"har export does not know the input of task kind {kind.name!r}; allowed: "
                          f"{', '.join(CUTS.names())}")
    cpu = torch.device("cpu")
    chain = kind.chain(run_dir, cfg, card, cpu)
    hw = (recipe.height, recipe.width)
    cut = CUTS.get(kind.name)(card, hw)
    norm = _first_normalised(chain.model)
    if norm is not None and cut.mean is not None:
        norm.mean.copy_(cut.mean.view_as(norm.mean))
        norm.inv_std.copy_(cut.inv_std.view_as(norm.inv_std))
    module = Exported(chain.model, cut.module).eval()
    score = kind.scorer(run_dir, cfg, card, cpu)

    from importlib.metadata import PackageNotFoundError, version

    try:
        har_version = version("har")
    except PackageNotFoundError:
        har_version = "unknown"
    names = ({"model": card["model"]} if "model" in card else
             {"backbone": card.get("backbone"), "head": getattr(cfg, "head", None), "weights": card.get("weights"),
              "resize": card.get("resize", "weights")})
    about_text = (f"har {kind.name} run {run_dir.name}: uint8 {INPUT_NAME} (batch, {recipe.frames}, {recipe.height}, "
                  f"{recipe.width}, 3) RGB -> {OUTPUT_NAME} (batch, {len(card['classes'])})")
    meta = {
        "classes": list(card["classes"]),
        "input": {"name": INPUT_NAME, "layout": "BTHWC", "dtype": "uint8", "batch": "any",
                  "frames": recipe.frames, "height": recipe.height, "width": recipe.width, "channels": "RGB",
                  "range": "0..255", "sampling": {k: card["recipe"].get(k) for k in ("sampling", "frames", "clips",
                                                                                      "stride")},
                  "preprocess": cut.about, "normalisation": normalisation(chain.model),
                  "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(card["classes"])],
                             "meaning": "logits in the order of classes; har predict averages their softmax "
                                        "over a video's clips"}},
        "har": {"har_run": str(run_dir.resolve()), "fingerprint": lin.get("fingerprint"), "har_version": har_version,
                "task": kind.name, **names, "recipe": card["recipe"], "about": about_text},
    }
    return module, meta, score


def check_clips(meta: dict, n: int = CHECK_CLIPS, seed: int = 0) -> np.ndarray:
    """n seeded uint8 clips (n, T, H, W, 3) of the export's input: smooth gradients with noise, so
    a resize sees structure at every scale."""
    i = meta["input"]
    rng = np.random.default_rng(seed)
    t, h, w = i["frames"], i["height"], i["width"]
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.stack([yy * 255 / max(1, h - 1), xx * 255 / max(1, w - 1), (yy + xx) * 127 / max(1, h + w - 2)],
                     -1)[None, None])
    noise = rng.normal(0, 40, (n, t, h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def compare(load: Callable[[np.ndarray], np.ndarray], score: Callable[[np.ndarray], torch.Tensor],
            clips: np.ndarray) -> float:
    """Largest |logit difference| between a loaded export and `har predict`'s score on `clips`
    (scored together, and the first alone: the batch axis is free). ExportError past ATOL/RTOL."""
    with torch.inference_mode():
        ref = score(clips).float().cpu().numpy()
    got, one = load(clips), load(clips[:1])
    worst = 0.0
    for a, b in ((got, ref), (one, ref[:1])):
        if a.shape != b.shape:
            raise ExportError(f"the exported model gives logits of shape {a.shape}, har predict {b.shape}")
        worst = max(worst, float(np.abs(a - b).max()))
        if not np.allclose(a, b, atol=ATOL, rtol=RTOL):
            raise ExportError(f"the exported model's logits differ from har predict's by up to {worst:.3g} "
                              f"(allowed {ATOL:g} + {RTOL:g} x |logit|); this is a bug in har: please report it")
    return worst


def export(run_dir: Path, fmt: str = "onnx", out: Path | None = None) -> ExportResult:
    """Write the run at `run_dir` as one model file of format `fmt` (FORMATS) to `out` (default
    RUN/export/model.<suffix>), checked before it replaces anything: the written file, loaded
    back by its own runtime, gives har predict's logits on seeded clips (ATOL, RTOL)."""
    started = time.perf_counter()
    f = FORMATS.get(fmt)
    export_formats.need(f)
    if not Path(run_dir).is_dir():
        raise ExportError(f"{run_dir} is not a folder; name a run folder of `har train-head` or `har train-e2e`")
    _, lin, kind = runner.load_run(run_dir)  # what is not a run is refused before any model loads
    if kind.joint:
        from trainers.training import joint

        joint.refuse(run_dir)
    target = out_path(run_dir, f, out, [tasks.store_of(lin["inputs"], kind)[0]])
    module, meta, score = build(run_dir)
    clips = check_clips(meta)
    example = torch.from_numpy(clips)
    worst = [0.0]

    def write(tmp: Path) -> None:
        f.write(module, example, meta, tmp)
        worst[0] = compare(f.load(tmp), score, clips)

    replaced = target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    files.replace_atomically(target, write)
    logger.info("exported %s to %s", run_dir, target)
    return ExportResult(target, f.name, meta["har"]["task"], meta["classes"], meta["input"], target.stat().st_size,
                        time.perf_counter() - started, worst[0], replaced, meta)


# ---- checking an export on videos ---------------------------------------------------------------

def check(path: Path, videos: list[Path], run_dir: Path) -> list[dict]:
    """An exported file (one of har's: it is loaded and run) against `har predict` on real videos:
    each decoded and sampled as the run's recipe says, scored by the file (its own runtime) and by
    `run_dir` (given, never taken from the file's metadata). Per video {"video", "clips", "top1", "predict_top1", "max_diff"} (top-1 of
    the clip-averaged probabilities), or {"video", "error"} for a file that does not decode."""
    from pipeline.decoding import reader, video

    path = Path(path)
    fmt = export_formats.format_of(path)
    export_formats.need(fmt)
    meta = fmt.meta(path) if path.is_file() else None
    if meta is None:
        raise ExportError(f"{path} is not a har {fmt.name} export")
    load = fmt.load(path)
    pred = predictor.load(Path(run_dir), "cpu")
    if list(meta["classes"]) != pred.classes:
        raise ExportError(f"{path} has classes {meta['classes']!r:.80}, the run {pred.run_dir} {pred.classes!r:.80}")
    out = []
    for v in videos:
        try:
            frames = reader.read_video(Path(v), Path(v).name, pred.recipe).frames
        except video.VideoError as e:
            out.append({"video": str(v), "error": str(e)})
            continue
        mine = load(frames)
        with torch.inference_mode():
            ref = pred.score(frames).float().cpu().numpy()
        top = int(np.argmax(_softmax(mine).mean(0)))
        ref_top = int(np.argmax(_softmax(ref).mean(0)))
        out.append({"video": str(v), "clips": len(frames), "top1": pred.classes[top],
                    "predict_top1": pred.classes[ref_top], "max_diff": float(np.abs(mine - ref).max())})
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
