"""End-to-end video models: one registry. Each takes a uint8 clip batch (B, T, H, W, 3) as the frame
store holds it and returns (B, classes) logits; scaling and normalisation happen inside, so the
data path stays uint8 until the device.

The networks, by family: `cnn3d` (3D CNNs), `video_transformers` (MViT, Video Swin) and
`frame_models` (per-frame CNNs with a temporal model, ConvLSTM); what a spec holds and torchvision's
weights are in `video_spec`. A model backed by weights takes its clip length, crop size, resize and
normalisation from those weights (`video_spec.weights_facts`), and a frame store is checked against
them before training (`fit_store`): pretrained weights get the clip they were trained on or one line
saying what to extract. Here: the registry, building by name, fitting a store, fine-tuning's layer
groups and stochastic depth, and the cost of each.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.core.registry import Registry
from trainers.models import cnn3d, frame_models, hub_models, video_transformers
from trainers.models.frame_models import FrameCNN
from trainers.models.video_spec import PRETRAINED, Clip, VideoModel, VideoModelSpec, to_channels_last  # noqa: F401 (the API)

VIDEO_MODELS: Registry[VideoModelSpec] = Registry("video model")


def register(spec: VideoModelSpec) -> VideoModelSpec:
    return VIDEO_MODELS.add(spec.name, spec, spec.about)


# the order `har models`, --help and every "allowed:" list show: torchvision's pretrained models first
ORDER = ("r3d_18", "r2plus1d_18", "mc3_18", "s3d", "mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b", "videomae",
         "vjepa2", "timesformer", "c3d",
         "i3d", "nonlocal", "convlstm", "lrcn", "late-fusion-e2e", "small-cnn-lstm", "small-cnn-rnn", "small-c3d")


def _register_families() -> None:
    specs = {s.name: s for family in (cnn3d, video_transformers, hub_models, frame_models) for s in family.SPECS}
    if sorted(specs) != sorted(ORDER):   # a model added to a family is added to ORDER too
        raise RuntimeError(f"video_models.ORDER {sorted(ORDER)} != the families' models {sorted(specs)}")
    for name in ORDER:
        register(specs[name])


_register_families()


def get(name: str) -> VideoModelSpec:
    return VIDEO_MODELS.get(name)


def build(name: str, classes: int, pretrained: str = "none", frames: int | None = None, size: int | None = None,
          drop_path: float | None = None, hub: dict | None = None) -> VideoModel:
    """The network for `classes` classes, its input clip `frames` x `size` (default: the model's;
    only fixed-input networks are built for a shape), stochastic depth `drop_path` (default: the
    model's own rate). A Hugging Face model (spec.hub) is built from `hub`, what a run recorded
    (`hub_models.facts`: no folder needed), else from --pretrained's folder or hub id; its weights
    come from that folder when --pretrained names one."""
    spec = get(name)
    allowed = ("none", *spec.pretrained)
    if pretrained not in allowed and not spec.hub:
        raise ValueError(f"--pretrained {pretrained!r} is not available for {name}; allowed: {', '.join(allowed)}")
    clip = Clip(frames or spec.frames, size or spec.size)
    if spec.hub:
        facts = hub or hub_models.facts(name, pretrained, clip)
        net = spec.build(classes, pretrained, clip, drop_path=drop_path, recorded=facts["config"])
        lo, hi = facts["value_range"]   # pixels scaled to lo..hi, then (v - mean) / std: in VideoModel's 0..1 units
        return VideoModel(net, [(m - lo) / (hi - lo) for m in facts["mean"]], [s / (hi - lo) for s in facts["std"]])
    net = spec.build(classes, pretrained, clip)
    if drop_path is not None:
        set_drop_path(net, drop_path)
    return VideoModel(net, spec.mean, spec.std)


def fit_store(name: str, pretrained: str, crop: int | None, shape: tuple[int, int, int],
              store: str = "the store") -> tuple[int, list[str]]:
    """(crop, warnings) for training model `name` on stored clips of shape (T, H, W); ValueError
    with the `har extract` options to use when the store cannot feed it: weights get the crop they
    were trained at (frames at least that large), fixed-input networks exactly their clip, and
    every network at least its smallest input."""
    spec = get(name)
    t, h, w = shape
    warnings: list[str] = []
    if spec.hub and pretrained != "none":
        f = hub_models.facts(name, pretrained, Clip(t, min(h, w)))
        size = min(crop or f["size"], h, w)
        if crop is not None and crop > min(h, w):
            warnings.append(f"--crop {crop} is larger than the stored frames of {store} ({h}x{w}); cropping {size}")
        if t != f["frames"]:
            warnings.append(f"{name} takes {f['frames']}-frame clips; {store} holds {t}: each clip's frames are "
                            f"resampled to {f['frames']} (evenly spaced), or extract with --frames {f['frames']}")
        if size != f["size"]:
            warnings.append(f"{name} takes {f['size']} px; crops of {size} are resized to it inside the model, or "
                            f"extract with --size {f['size']}")
        return size, warnings
    if pretrained == "kinetics400" and spec.weights:
        want = f"{spec.frames}-frame clips at {spec.size}x{spec.size}"
        extract = (f"extract a store for it: har extract DATASET --frames {spec.frames} --size "
                   f"{'x'.join(str(v) for v in spec.resize) if len(spec.resize) == 2 else spec.resize[0]}")
        size = crop or spec.size
        if spec.fixed_input and (t != spec.frames or size != spec.size):
            raise ValueError(f"{name} --pretrained kinetics400 takes exactly {want} (its weights' positional "
                             f"embeddings); {store} holds {t} frames of {h}x{w}"
                             f"{f' and --crop is {size}' if size != spec.size else ''}; {extract}")
        if min(h, w) < size or t < spec.min_frames:
            raise ValueError(f"{name} --pretrained kinetics400 takes {want} (at least {spec.min_frames} frames); "
                             f"{store} holds {t} frames of {h}x{w}; {extract}")
        if t != spec.frames:
            warnings.append(f"{name}'s Kinetics-400 weights were trained on {spec.frames}-frame clips; this store "
                            f"has {t}: fine-tuning adapts them, but {extract} for the clip they know")
        if size != spec.size:
            warnings.append(f"--crop {size} differs from the {spec.size} px {name}'s weights were trained at")
        return size, warnings
    size = min(crop or spec.size, h, w)
    if crop is not None and crop > min(h, w):
        warnings.append(f"--crop {crop} is larger than the stored frames of {store} ({h}x{w}); cropping {size}")
    ft, fs = spec.multiple
    if crop is None and size >= fs:
        size -= size % fs          # the default crop: the largest the network takes
    if t % ft or size % fs:
        raise ValueError(f"{name} takes clips whose frames are a multiple of {ft} and whose crop is a multiple of {fs} "
                         f"(its position tables); {store} holds {t} frames of {h}x{w} (crop {size}): extract with "
                         f"--frames {t - t % ft or ft} or choose --crop {size - size % fs or fs}")
    if t < spec.min_frames or size < spec.min_size:
        raise ValueError(f"{name} takes clips of at least {spec.min_frames} frames at {spec.min_size}x{spec.min_size}; "
                         f"{store} holds {t} frames of {h}x{w}{f' (crop {size})' if size < min(h, w) else ''}; "
                         f"extract with at least --frames {spec.min_frames} --size {spec.min_size}")
    return size, warnings


# ---- fine-tuning: stochastic depth and the network's layers in depth order ----------------------------

def set_drop_path(net: nn.Module, rate: float) -> None:
    """Stochastic depth `rate` at the last block, rising linearly from 0 at the first (the rule of
    MViT and Video Swin, whose torchvision builders fix their own rate)."""
    from torchvision.ops import StochasticDepth

    blocks = [m for m in net.modules() if isinstance(m, StochasticDepth)]
    if not blocks:
        raise ValueError("--drop-path needs a network with stochastic depth; this one has none")
    for i, m in enumerate(blocks):
        m.p = rate * i / (len(blocks) - 1) if len(blocks) > 1 else rate


def _blocks_inside(module: nn.Module) -> bool:
    """A Hugging Face model or one of its parts that holds the layers (VideoMAEModel -> its encoder
    -> `layer`, a ModuleList): walked into, so that each transformer layer is a group of its own."""
    return type(module).__module__.startswith("transformers.") and (
        any(isinstance(c, nn.ModuleList) for c in module.children()) or any(_blocks_inside(c) for c in module.children()))


def layer_groups(net: nn.Module, classifier: str) -> list[list[nn.Parameter]]:
    """The trainable parameters in depth order, input first and the new output layer last: one
    group per entry of the network's Sequential/ModuleList containers (its blocks), expanded
    recursively; parameters held directly by a module (class tokens, position embeddings) join
    the group of what comes first in it. The basis of layer-wise learning-rate decay."""
    head = [p for p in net.get_submodule(classifier).parameters() if p.requires_grad]
    skip = {id(p) for p in head}
    groups: list[list[nn.Parameter]] = []

    def walk(module: nn.Module) -> None:
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in skip]
        if own:
            groups.append(own)
        from torchvision.models import ResNet

        for child in module.children():
            if type(child) in (nn.Sequential, nn.ModuleList) or isinstance(child, (FrameCNN, ResNet)) or _blocks_inside(child):
                walk(child)
            else:
                ps = [p for p in child.parameters() if p.requires_grad and id(p) not in skip]
                if ps:
                    groups.append(ps)
    walk(net)
    return [g for g in groups if g] + [head]


# ---- size and cost -----------------------------------------------------------------------------------

def cost(name: str, classes: int = 101) -> dict:
    """Parameters and GFLOPs (multiply-adds x 2) of one default clip, counted on the meta device:
    nothing is computed or allocated."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = get(name)
    with torch.device("meta"):
        model = build(name, classes)
        clip = torch.zeros(1, spec.frames, spec.size, spec.size, 3, dtype=torch.uint8)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(clip)
    return {"name": name, "params": params, "gflops": counter.get_total_flops() / 1e9,
            "input": f"{spec.frames}x{spec.size}x{spec.size}", "pretrained": ("none", *spec.pretrained),
            "about": VIDEO_MODELS.about(name)}
