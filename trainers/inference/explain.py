"""`har explain`: why a run decided, drawn on the frames it saw.

A run is loaded as its chain (trainers.models.chain: the model as a differentiable function of the
stored frames, with gradients on); a video is decoded and sampled exactly as `har predict` does
(the run's recipe), and one clip is explained by a method of `METHODS`:

    gradcam          Grad-CAM (Selvaraju et al. 2017) on the last convolution block: spatio-temporal
                     on 5-D activations (3-D CNNs), per frame on a 2-D network's frames
    gradcam++        Grad-CAM++ (Chattopadhay et al. 2018), same layers
    guided-backprop  guided backpropagation (Springenberg et al. 2015): input gradients through
                     ReLUs that pass only positive gradients
    activations      mean absolute activation of the first convolution layer
    filters          the learned first-layer filters (no video; trainers.runs.pictures draws them)

Grad-CAM and Grad-CAM++ come from pytorch-grad-cam (5-D activations since 1.5); attribution over
time from Captum. Written here, and why: the choice of the default layer (found by tracing one
forward pass, so any registered model works without a per-model table); guided backpropagation
on 5-D input (pytorch-grad-cam's GuidedBackpropReLUModel returns only 2-D images; its ReLU
replacement is reused); the activation maps (one forward hook); mapping maps back onto the stored
frames (the chain's window).

Head runs (a frozen 2-D backbone and a sequence head) also get the head's attribution over time:
how much each of the T frames' features moved the target probability, by integrated gradients
from the clip's mean feature (Captum `IntegratedGradients`) or by replacing one step at a time
with it (Captum `Occlusion`); `TEMPORAL` names them. The baseline is the clip's own mean, so a
frame scores by what it adds to the clip's average look: its place in time, not its appearance.

`explain_videos(ExplainJob)` is the whole command: its settings checked, the run loaded
(trainers.inference.loaded), each video explained and written, a video that does not decode
recorded, not fatal.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.registry import Registry
from pipeline.decoding import reader, video
from pipeline.decoding.recipe import Recipe
from trainers.inference import loaded
from trainers.models.chain import Chain

METHODS: Registry[str] = Registry("explanation method")
METHODS.add("gradcam", "gradcam", "Grad-CAM on the last convolution block (spatio-temporal on 3-D models)")
METHODS.add("gradcam++", "gradcam++", "Grad-CAM++ on the last convolution block")
METHODS.add("guided-backprop", "guided-backprop", "guided backpropagation: input gradients through positive ReLUs")
METHODS.add("activations", "activations", "mean activation of the first convolution layer")
METHODS.add("filters", "filters", "the learned first-layer filters as an image grid (no video)")

TEMPORAL: Registry[str] = Registry("temporal attribution")
TEMPORAL.add("integrated-gradients", "ig", "integrated gradients over the features, from the clip's mean")
TEMPORAL.add("occlusion", "occlusion", "each step replaced by the clip's mean feature in turn")

CONVS = (nn.Conv2d, nn.Conv3d)


class ExplainError(ValueError):
    """A request that cannot be explained (a layer, a class or a clip that is not there)."""


@dataclass(frozen=True)
class Layer:
    name: str
    module: nn.Module
    shape: tuple[int, ...]   # its output for one clip
    calls: int               # how often one forward pass runs it
    per_frame: bool          # a 2-D layer over the T frames: output (T, C, h, w)


def trace(model: nn.Module, x: torch.Tensor) -> list[Layer]:
    """Every sub-module's output shape for input `x`, in the order they finish (one forward pass)."""
    seen: dict[str, list] = {}
    handles = []
    t = x.shape[2]

    def hook(name):
        def record(module, inputs, output):
            if name in seen:
                seen[name][1] += 1
            elif isinstance(output, torch.Tensor):
                seen[name] = [module, 1, tuple(output.shape)]
        return record

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [Layer(n, m, s, c, len(s) == 4 and s[0] == t and t > 1) for n, (m, c, s) in seen.items()]


def _spatial(layer: Layer) -> bool:
    """A map-shaped output: (1, C, T', h, w) or per frame (T, C, h, w), more than one position."""
    s = layer.shape
    return layer.calls == 1 and ((len(s) == 5 and s[0] == 1) or layer.per_frame) and s[-1] * s[-2] > 1


def pick_layer(layers: list[Layer], name: str | None, method: str) -> Layer:
    """`name`, or the default: the last map-shaped layer (Grad-CAM) or the first convolution."""
    usable = [lay for lay in layers if _spatial(lay)]
    if name is not None:
        found = next((lay for lay in layers if lay.name == name), None)
        if found is None or not _spatial(found):
            why = ("is not a layer of this model" if found is None else
                   f"runs {found.calls} times per clip (a recurrent step)" if found.calls > 1 else
                   f"gives {found.shape}, not a map of positions")
            names = [lay.name for lay in usable]
            raise ExplainError(f"--layer {name!r} {why}; allowed: " + ", ".join(names[-12:])
                               + (f" (and {len(names) - 12} earlier)" if len(names) > 12 else ""))
        return found
    if method == "activations":
        first = next((lay for lay in usable if isinstance(lay.module, CONVS)), None)
        if first is not None:
            return first
    if not usable:
        raise ExplainError("this model has no convolution layer with a map of positions to explain")
    return usable[-1]


def _upsample(maps: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """(T', h, w) -> (T, H, W) trilinear, float32."""
    m = torch.nn.functional.interpolate(maps[None, None].float(), size=size, mode="trilinear", align_corners=False)
    return m[0, 0].cpu().numpy()


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.maximum(m, 0) if m.min() < 0 and m.max() > 0 else np.abs(m)
    top = float(m.max())
    return (m / top).astype(np.float32) if top > 0 else np.zeros_like(m, dtype=np.float32)


def gradcam(chain: Chain, x: torch.Tensor, target: int, layer: Layer, plus: bool = False) -> np.ndarray:
    """(T, h, w) in [0, 1] at the input's size: Grad-CAM (or ++) of class `target` at `layer`.

    pytorch-grad-cam gives the hooks, the channel weights and their weighted sum; here, two things
    it does otherwise for 2-D images: a per-frame layer keeps one set of weights per frame (a frame
    of a growing object is evidence for "grow" early and against it late; weights averaged over the
    clip cancel that out), and the maps are scaled by the clip's maximum, not each frame's, so a
    frame that matters little stays faint."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    x = x.detach().clone().requires_grad_(True)  # a frozen backbone's activations need a gradient path
    cam = (GradCAMPlusPlus if plus else GradCAM)(model=chain.model, target_layers=[layer.module])
    hooks = cam.activations_and_grads
    try:  # not `with`: its __exit__ prints and swallows an IndexError
        logits = hooks(x)
        chain.model.zero_grad()
        logits[0, target].backward()
        if not hooks.gradients or not hooks.activations:
            raise ExplainError(f"--layer {layer.name!r} is not on the path from the input to the decision "
                               "(no gradient reaches it); choose a convolution block before the classifier")
        a, g = hooks.activations[0].float().numpy(), hooks.gradients[0].float().numpy()
        raw = cam.get_cam_image(x, layer.module, None, a, g)       # (1, T', h, w) or per frame (T, h, w)
    finally:
        hooks.release()
    raw = np.maximum(raw if layer.per_frame else raw[0], 0)
    return _unit(_upsample(torch.from_numpy(raw), tuple(x.shape[2:])))


def guided_backprop(chain: Chain, x: torch.Tensor, target: int) -> np.ndarray:
    """(T, h, w): max over colour of |d logit / d pixel| with guided ReLUs, scaled to [0, 1]."""
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule
    from pytorch_grad_cam.utils.find_layers import replace_all_layer_type_recursive

    model = copy.deepcopy(chain.model)
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        raise ExplainError("guided backpropagation changes the gradients of ReLU layers and this model has none "
                           "(GELU, SiLU or functional activations); use --method gradcam")
    replace_all_layer_type_recursive(model, nn.ReLU, GuidedBackpropReLUasModule())
    x = x.detach().clone().requires_grad_(True)
    model(x)[0, target].backward()
    return _unit(x.grad[0].abs().amax(0).cpu().numpy())


def activations(chain: Chain, x: torch.Tensor, layer: Layer) -> np.ndarray:
    """(T, h, w): the mean absolute activation over the layer's channels, upsampled, in [0, 1]."""
    out = []
    h = layer.module.register_forward_hook(lambda m, i, o: out.append(o.detach().clone()))
    try:
        with torch.no_grad():
            chain.model(x)
    finally:
        h.remove()
    a = out[0].abs().mean(1)[0] if not layer.per_frame else out[0].abs().mean(1)   # (T', h', w')
    return _unit(_upsample(a, tuple(x.shape[2:])))


def temporal(chain: Chain, x: torch.Tensor, target: int, how: str = "integrated-gradients") -> np.ndarray:
    """(T,) signed: how much each step's features moved the target probability of a head run."""
    from captum.attr import IntegratedGradients, Occlusion

    with torch.no_grad():
        feats = chain.encode(x).float()                          # (1, T, D)
    base = feats.mean(1, keepdim=True).expand_as(feats).contiguous()

    def prob(f):
        return torch.softmax(chain.head(f), dim=1)

    if TEMPORAL.get(how) == "ig":
        attr = IntegratedGradients(prob).attribute(feats, baselines=base, target=target, n_steps=48)
        return attr[0].sum(1).detach().cpu().numpy().astype(np.float32)
    d = feats.shape[2]
    attr = Occlusion(prob).attribute(feats, sliding_window_shapes=(1, d), strides=(1, d), baselines=base, target=target)
    return attr[0, :, 0].detach().cpu().numpy().astype(np.float32)


def to_frames(maps: np.ndarray, window: tuple[float, float, float, float], hw: tuple[int, int]) -> np.ndarray:
    """Maps (T, h, w) on the model's input -> (T, H, W) on the stored frames (0 outside the input)."""
    top, left, height, width = window
    out = np.zeros((len(maps), *hw), np.float32)
    y0, x0 = int(round(top)), int(round(left))
    y1, x1 = min(hw[0], int(round(top + height))), min(hw[1], int(round(left + width)))
    resized = _upsample(torch.from_numpy(maps), (len(maps), y1 - y0, x1 - x0))
    out[:, y0:y1, x0:x1] = np.clip(resized, 0, None)
    return out


@dataclass
class Explanation:
    video: str
    method: str
    layer: str | None
    clip: int
    clips: int
    frames: np.ndarray            # (T, H, W, 3) uint8: the stored clip
    frame_idx: list[int]          # the source frame of each
    fps: float
    maps: np.ndarray              # (T, H, W) float32 in [0, 1] on the stored frames
    importance: np.ndarray        # (T,) per frame: the head's attribution over time, or each frame's map mass
    importance_kind: str
    target: str
    probability: float            # of `target`, this clip
    top: list[dict]               # the video's top classes (clips averaged, as har predict)

    def as_json(self) -> dict:
        return {"video": self.video, "method": self.method, "layer": self.layer, "class": self.target,
                "probability": self.probability, "clip": self.clip, "clips": self.clips,
                "frame_idx": self.frame_idx, "importance": [float(v) for v in self.importance],
                "importance_kind": self.importance_kind, "top": self.top}


@dataclass
class Explainer:
    """A run loaded for explanations: its chain, the recipe that samples a video as the store did."""
    run_dir: Path
    chain: Chain
    recipe: Recipe
    device: torch.device

    def check(self, target: str | None, clip: int) -> None:
        """ExplainError unless `target` (None: the predicted class) and `clip` are this run's."""
        classes = self.chain.classes
        if target is not None and target not in classes:
            raise ExplainError(f"--target {target!r} is not a class of this run; allowed: {', '.join(classes)}")
        if not 0 <= clip < self.recipe.samples:
            raise ExplainError(f"--clip {clip} is not a clip of this run's recipe; allowed: 0..{self.recipe.samples - 1}")

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        """(K, C) softmax of every clip (K, T, H, W, 3)."""
        out = []
        with torch.no_grad():
            for c in frames:
                video.check_stop()   # a server's client that left, or Ctrl-C: no more work for it
                out.append(torch.softmax(self.chain.model(self.chain.to_input(c)), 1)[0].cpu().numpy())
        return np.stack(out)

    def explain_clip(self, frames: np.ndarray, target: int, method: str, layer: str | None = None,
                     how: str = "integrated-gradients") -> tuple[np.ndarray, np.ndarray, str, Layer | None]:
        """(maps (T, H, W) on the stored frames, per-frame importance, its kind, the layer) of one clip."""
        name = METHODS.get(method)
        if name == "filters":
            raise ExplainError("--method filters draws the model's filters and takes no video")
        x = self.chain.to_input(frames)
        lay = None
        # cuDNN's RNN has no backward in eval mode; the native kernels do (the same numbers)
        with _no_cudnn(self.device), torch.enable_grad():
            if name in ("gradcam", "gradcam++", "activations"):
                lay = pick_layer(trace(self.chain.model, x), layer, name)
            if name in ("gradcam", "gradcam++"):
                maps = gradcam(self.chain, x, target, lay, plus=name == "gradcam++")
            elif name == "guided-backprop":
                maps = guided_backprop(self.chain, x, target)
            else:
                maps = activations(self.chain, x, lay)
            if self.chain.head is not None:
                imp, kind = temporal(self.chain, x, target, how), how
                if self.chain.spread is not None:   # a video backbone's tokens: each shared among its frames
                    unused = self.chain.spread(np.ones_like(imp), len(frames)) == 0   # frames no token was made from
                    imp, kind = self.chain.spread(imp, len(frames)), f"{how} (per temporal token, shared among its frames)"
                    maps = np.where(unused[:, None, None], 0.0, maps).astype(np.float32)
            else:
                mass = maps.reshape(len(maps), -1).sum(1)
                imp, kind = (mass / mass.sum() if mass.sum() > 0 else mass), f"{method} map mass per frame"
        window = self.chain.window(*frames.shape[1:3])
        return to_frames(maps, window, frames.shape[1:3]), np.asarray(imp, np.float32), kind, lay

    def __call__(self, path: Path, method: str = "gradcam", target: str | None = None, layer: str | None = None,
                 clip: int = 0, how: str = "integrated-gradients", top: int = 5) -> Explanation:
        """Explain one video file (video.VideoError for a bad one)."""
        self.check(target, clip)
        classes = self.chain.classes
        samples = reader.read_video(Path(path), Path(path).name, self.recipe)
        k = len(samples.frames)
        probs = self.probabilities(samples.frames)
        mean = probs.mean(0)
        t = int(np.argmax(mean)) if target is None else classes.index(target)
        frames = samples.frames[clip]
        video.check_stop()
        maps, imp, kind, lay = self.explain_clip(frames, t, method, layer, how)
        video.check_stop()
        order = np.argsort(-mean, kind="stable")[:top]
        return Explanation(str(path), method, lay.name if lay else None, clip, k, frames,
                           [int(i) for i in samples.frame_idx[clip]], float(samples.fps), maps, imp, kind,
                           classes[t], float(probs[clip, t]),
                           [{"class": classes[i], "probability": float(mean[i])} for i in order])


def _no_cudnn(device: torch.device):
    return torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else contextlib.nullcontext()


def load(run_dir: Path, device: str = "auto") -> Explainer:
    """A finished run as an Explainer (loaded and its card checked as har predict does: trainers.inference.loaded)."""
    run = loaded.load(run_dir)
    dev = run.device(device)
    chain = run.kind.chain(run.run_dir, run.config, run.card, dev)
    for m in chain.model.modules():  # an in-place ReLU would rewrite a hooked layer's output under the hook
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return Explainer(run.run_dir, chain, run.recipe, dev)  # the recipe's clean view only (loaded: views=0)


# ---- filters ---------------------------------------------------------------------------------------

@dataclass
class Filters:
    layer: str
    weight: np.ndarray        # (O, I, kt, kh, kw) float32 (2-D kernels get kt = 1)
    rgb: bool                 # the layer reads the colour channels: draw filters as colour images
    factor: str | None        # "spatial" | "temporal" for a (2+1)D pair's halves, else None


def filters(chain: Chain, layer: str | None = None) -> list[Filters]:
    """The first convolution's kernels (or `layer`'s); for a (2+1)D stem (a 1 x k x k convolution
    on colour followed by a t x 1 x 1 one) both halves, spatial and temporal, as R(2+1)D factorises."""
    convs = [(n, m) for n, m in chain.model.named_modules() if isinstance(m, CONVS)]
    if not convs:
        raise ExplainError("this model has no convolution layer")
    if layer is not None:
        found = [(n, m) for n, m in convs if n == layer]
        if not found:
            names = [n for n, _ in convs]
            raise ExplainError(f"--layer {layer!r} is not a convolution of this model; allowed: "
                               + ", ".join(names[:12]) + (f" (and {len(names) - 12} more)" if len(names) > 12 else ""))
        picked = found
    else:
        i = next((k for k, (_, m) in enumerate(convs) if m.in_channels == 3), 0)
        picked = [convs[i]]
        if isinstance(convs[i][1], nn.Conv3d) and i + 1 < len(convs):
            a, b = convs[i][1].kernel_size, convs[i + 1][1].kernel_size
            if a[0] == 1 and len(b) == 3 and b[0] > 1 and b[1:] == (1, 1):
                picked.append(convs[i + 1])
    out = []
    for k, (n, m) in enumerate(picked):
        w = m.weight.detach().float().cpu().numpy()
        if w.ndim == 4:
            w = w[:, :, None]
        factor = None if len(picked) == 1 else ("spatial", "temporal")[k]
        out.append(Filters(n, w, m.in_channels == 3 and factor != "temporal", factor))
    return out


# ---- files ---------------------------------------------------------------------------------------

def out_dir(run_dir: Path, out: Path | None, inputs: list[Path]) -> Path:
    """The folder explanations go to (default RUN/explain), checked as every har output is
    (pipeline.core.outputs: empty, new, or an explain folder already) and marked as har's."""
    from pipeline.core import outputs

    return outputs.marked_folder(out if out is not None else Path(run_dir) / "explain", "explain", inputs)


def write(e: Explanation, out: Path, stem: str) -> dict:
    """<stem>.<method>.{json,png,gif} in `out`: the JSON, the strip, the overlay; their paths."""
    from trainers.runs import pictures, rundir

    base = f"{stem}.{e.method}"
    paths = {k: out / f"{base}.{k}" for k in ("json", "png", "gif")}
    layer = f" at {e.layer}" if e.layer else ""
    title = (f"{Path(e.video).name}: {e.method} for {e.target} (p = {e.probability:.2f}, clip {e.clip + 1} of "
             f"{e.clips}){layer}")
    pictures.strip(paths["png"], e.frames, e.maps, e.importance, title, e.frame_idx, e.importance_kind)
    step = float(np.mean(np.diff(e.frame_idx))) if len(e.frame_idx) > 1 else 1.0
    pictures.write_gif(paths["gif"], pictures.overlay(e.frames, e.maps), fps=min(10.0, e.fps / max(step, 1.0)))
    doc = {**e.as_json(), "files": {k: str(p) for k, p in paths.items() if k != "json"}}
    rundir.write_json(paths["json"], doc)
    return {**doc, "files": {k: str(p) for k, p in paths.items()}}


def write_filters(chain: Chain, out: Path, layer: str | None = None) -> dict:
    """filters.<layer>.png for the first convolution (both halves of a (2+1)D stem) and filters.json."""
    from trainers.runs import pictures, rundir

    found = filters(chain, layer)
    doc = {"method": "filters", "layers": []}
    for f in found:
        o, i, kt, kh, kw = f.weight.shape
        what = f"{f.factor} factor, " if f.factor else ""
        path = out / f"filters.{f.layer}.png"
        pictures.filter_grid(path, f.weight, f.rgb, f"{f.layer}: {o} filters of {i} x {kt} x {kh} x {kw} ({what}"
                             f"{'colour' if f.rgb else 'weights'})")
        doc["layers"].append({"layer": f.layer, "shape": [o, i, kt, kh, kw], "factor": f.factor, "file": str(path)})
    rundir.write_json(out / "filters.json", doc)
    return doc


# ---- the whole command ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExplainJob:
    """`har explain`: which run, which videos, how (checked by `explain_videos`)."""
    run_dir: Path                            # a finished run of `har train-head` or `har train-e2e`
    videos: tuple[Path, ...] = ()            # video files; none with method "filters"
    method: str = "gradcam"                  # METHODS
    target: str | None = None                # the class to explain (None: the predicted one)
    layer: str | None = None                 # a module name (None: the method's default layer)
    over_time: str = "integrated-gradients"  # TEMPORAL: a head run's attribution over the T frames
    clip: int = 0                            # which clip of a multi-clip recipe
    out: Path | None = None                  # the pictures' and JSON's folder (None: RUN/explain)
    device: str = "auto"                     # auto: the run's own device setting


@dataclass(frozen=True)
class Explained:
    folder: Path                             # where the files went (a marked explain folder)
    results: list[dict] = field(default_factory=list)  # per video: `write`'s document, or {"video", "error"}
    filters: dict | None = None              # method "filters": `write_filters`' document

    @property
    def failed(self) -> int:
        """Videos that could not be explained (they did not decode)."""
        return sum("error" in r for r in self.results)


def explain_videos(job: ExplainJob, on_result: Callable[[dict], None] | None = None) -> Explained:
    """`har explain` as one call: the method, the videos and the files checked; the run loaded, its
    target and clip checked before anything is written; the folder made and marked; then each
    video explained and written (<stem>.<method>.*, stems made unique by position: v, v_), or its
    decoding failure recorded as {"video", "error"}: the others go on. `on_result(doc)` as each
    is done. With method "filters": the filters drawn, no video."""
    METHODS.get(job.method)  # a bad name: one line listing the methods
    method, videos = job.method, list(job.videos)
    if method == "filters" and videos:
        raise ValueError("--method filters draws the run's filters and takes no VIDEO; drop the video files")
    if method != "filters" and not videos:
        raise ValueError(f"--method {method} explains videos: name at least one VIDEO after RUN")
    TEMPORAL.get(job.over_time)
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise ValueError(f"no such video file: {', '.join(missing)}")
    model = load(job.run_dir, job.device)
    if method != "filters":
        model.check(job.target, job.clip)  # before anything is written
    folder = out_dir(job.run_dir, job.out, videos)
    if method == "filters":
        return Explained(folder, filters=write_filters(model.chain, folder, job.layer))
    results, stems = [], set()
    for v in videos:
        stem = v.stem
        while stem in stems:
            stem += "_"
        stems.add(stem)
        try:
            e = model(v, method, job.target, job.layer, job.clip, job.over_time)
        except video.VideoError as bad:
            doc = {"video": str(v), "error": str(bad)}
        else:
            doc = write(e, folder, stem)
        results.append(doc)
        if on_result is not None:
            on_result(doc)
    return Explained(folder, results)
