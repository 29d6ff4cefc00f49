"""End-to-end video models: one registry. Each takes a uint8 clip batch (B, T, H, W, 3) as the frame
store holds it and returns (B, classes) logits; scaling and normalisation happen inside, so the
data path stays uint8 until the device.

torchvision's where it has them (`r3d_18`, `r2plus1d_18`, `mc3_18`, with Kinetics-400 weights
through its weights API and cache), our own modules where it does not: `c3d` (Tran et al. 2015),
`i3d` (ResNet-50 inflated to 3D, Carreira & Zisserman 2017, from ImageNet 2D weights by
inflation), `nonlocal` (non-local blocks in a 3D ResNet-18, Wang et al. 2018), `convlstm`
(Shi et al. 2015), `lrcn` (2D CNN per frame + LSTM, trained end to end, Donahue et al. 2015),
`late-fusion-e2e` (a shared 2D CNN, frame features averaged), `small-cnn-lstm` / `small-cnn-rnn`
(the three-block CNN at 64x64 of one seed study), `small-c3d` (the same blocks in 3-D).

The modern torchvision video models with Kinetics-400 weights: `s3d` (Xie et al. 2018), `mvit_v1_b`,
`mvit_v2_s` (multiscale vision transformers, Fan et al. 2021, Li et al. 2022), `swin3d_t|s|b`
(Video Swin, Liu et al. 2022). A model backed by weights takes its clip length, crop size, resize and
normalisation from those weights (`weights_facts`: the transforms and the documented clip length),
and a frame store is checked against them before training (`fit_store`): pretrained weights get the
clip they were trained on or one line saying what to extract.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import re
import threading

import torch
from torch import nn

from pipeline.stages.backbones import WeightsError  # the one error for weights that cannot be had
from pipeline.core.registry import Registry
from trainers.models.heads import CELLS

KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRETRAINED = ("none", "kinetics400", "imagenet")


@dataclass(frozen=True)
class Clip:
    """The input a network is built for: `frames` frames of size x size."""
    frames: int
    size: int


@dataclass(frozen=True)
class VideoModelSpec:
    name: str
    build: Callable[[int, str, Clip], nn.Module]  # (classes, pretrained, clip) -> network on (B, 3, T, H, W) floats
    frames: int = 16                         # default clip: T x size x size (with weights: theirs)
    size: int = 112
    pretrained: tuple[str, ...] = ()         # what --pretrained allows besides none
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    about: str = ""
    weights: str = ""                        # torchvision weights behind --pretrained kinetics400
    resize: tuple[int, ...] = ()             # their resize before the crop: (short side,) or (H, W)
    fixed_input: bool = False                # built for one clip shape (positional embeddings): with weights
                                             # exactly frames x size; random init: built for the store's
    min_frames: int = 1                      # the smallest clip the network takes
    min_size: int = 16
    multiple: tuple[int, int] = (1, 1)       # frames and crop must be multiples of these (MViT's position tables)
    classifier: str = "fc"                   # the new output layer (module path in the network)
    drop_path: float | None = None           # default stochastic-depth rate; None: the network has none


_REGISTRY: Registry[VideoModelSpec] = Registry("video model")


def register(spec: VideoModelSpec) -> VideoModelSpec:
    return _REGISTRY.add(spec.name, spec, spec.about)


def names() -> tuple[str, ...]:
    return _REGISTRY.names()


def get(name: str) -> VideoModelSpec:
    return _REGISTRY.get(name)


class VideoModel(nn.Module):
    """uint8 (B, T, H, W, 3) -> scale, normalise, (B, 3, T, H, W) -> the network -> (B, classes)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor(std).view(1, 3, 1, 1, 1) * 255))
        self.channels_last = False

    def forward(self, clips):  # (B, T, H, W, 3) uint8
        x = clips.permute(0, 4, 1, 2, 3).float()          # (B, 3, T, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net((x - self.mean) * self.inv_std)


def to_channels_last(model: VideoModel) -> VideoModel:
    """Channels-last weights and inputs (3D convolutions: channels_last_3d; per-frame 2D ones:
    channels_last), the layout cuDNN's fastest bf16 kernels use. In place; the values are unchanged."""
    formats = {5: torch.channels_last_3d, 4: torch.channels_last}
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.Conv2d)):
            m.weight.data = m.weight.data.contiguous(memory_format=formats[m.weight.dim()])
    model.channels_last = True
    return model


def build(name: str, classes: int, pretrained: str = "none", frames: int | None = None, size: int | None = None,
          drop_path: float | None = None) -> VideoModel:
    """The network for `classes` classes, its input clip `frames` x `size` (default: the model's;
    only fixed-input networks are built for a shape), stochastic depth `drop_path` (default: the
    model's own rate)."""
    spec = get(name)
    allowed = ("none", *spec.pretrained)
    if pretrained not in allowed:
        raise ValueError(f"--pretrained {pretrained!r} is not available for {name}; allowed: {', '.join(allowed)}")
    net = spec.build(classes, pretrained, Clip(frames or spec.frames, size or spec.size))
    if drop_path is not None:
        set_drop_path(net, drop_path)
    return VideoModel(net, spec.mean, spec.std)


def weights_file(weights_name: str) -> Path:
    """Where torchvision's cache keeps these weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    from torchvision.models import get_weight

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(get_weight(weights_name).url).name


def _state_dict(weights_name: str) -> dict:
    """A torchvision weights enum member's state_dict from its cache; WeightsError offline (naming
    the file, the cache folder and the URL) or when the cached file is not a loadable state_dict."""
    from torchvision.models import get_weight

    enum = get_weight(weights_name)
    path = weights_file(weights_name)
    if not path.exists():
        try:
            return enum.get_state_dict(progress=False, check_hash=True)
        except Exception:
            raise WeightsError(f"{weights_name}: {path.name} is not in {path.parent} and cannot be downloaded here; "
                               f"download {enum.url} and put it there, or use --pretrained none") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path} is not a loadable state_dict ({type(e).__name__}); delete it and download "
                           f"{enum.url} again") from None


def _load(net: nn.Module, weights_name: str) -> None:
    state = _state_dict(weights_name)
    if not isinstance(state, dict):
        raise WeightsError(f"{weights_file(weights_name)} holds a {type(state).__name__}, not a state_dict; delete it and "
                           "download it again")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{weights_file(weights_name)} does not fit {weights_name}: "
                           f"{str(e).splitlines()[0][:200]}") from None


def weights_facts(weights_name: str) -> dict:
    """What a torchvision video model's weights were trained on, from the weights themselves: the
    centre crop, the resize before it and the normalisation of their transforms, the clip length
    their documentation states (`clip_len`; else the smallest clip they take), the smallest input."""
    from torchvision.models import get_weight

    w = get_weight(weights_name)
    t = w.transforms()
    clip_len = re.search(r"clip_len=`?(\d+)", w.meta.get("_docs", ""))
    min_size = w.meta.get("min_size", (1, 1))
    return {"frames": int(clip_len.group(1)) if clip_len else int(w.meta.get("min_temporal_size", 16)),
            "size": int(t.crop_size[0]), "resize": tuple(int(v) for v in t.resize_size),
            "mean": tuple(float(v) for v in t.mean), "std": tuple(float(v) for v in t.std),
            "min_frames": int(w.meta.get("min_temporal_size", 1)), "min_size": int(min_size[0]),
            "url": w.url, "kinetics400_top1": w.meta.get("_metrics", {}).get("Kinetics-400", {}).get("acc@1")}


def from_weights(name: str, build: Callable[[int, str, Clip], nn.Module], weights: str, about: str,
                 fixed_input: bool = False, **kw) -> VideoModelSpec:
    """A spec whose clip, resize and normalisation are its Kinetics-400 weights' own."""
    f = weights_facts(weights)
    return VideoModelSpec(name, build, frames=f["frames"], size=f["size"], pretrained=("kinetics400",),
                          mean=f["mean"], std=f["std"], about=about, weights=weights, resize=f["resize"],
                          fixed_input=fixed_input, **kw)


def fit_store(name: str, pretrained: str, crop: int | None, shape: tuple[int, int, int],
              store: str = "the store") -> tuple[int, list[str]]:
    """(crop, warnings) for training model `name` on stored clips of shape (T, H, W); ValueError
    with the `har extract` options to use when the store cannot feed it: weights get the crop they
    were trained at (frames at least that large), fixed-input networks exactly their clip, and
    every network at least its smallest input."""
    spec = get(name)
    t, h, w = shape
    warnings: list[str] = []
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
            if type(child) in (nn.Sequential, nn.ModuleList) or isinstance(child, (FrameCNN, ResNet)):
                walk(child)
            else:
                ps = [p for p in child.parameters() if p.requires_grad and id(p) not in skip]
                if ps:
                    groups.append(ps)
    walk(net)
    return [g for g in groups if g] + [head]


# ---- torchvision's video ResNets ---------------------------------------------------------------

def _torchvision_video(builder: str, weights: str, classifier: str = "fc") -> Callable[[int, str, Clip], nn.Module]:
    """A torchvision video network, its Kinetics-400 weights when asked, a new output layer for our
    classes at `classifier` (the module path of its last Linear or 1x1x1 Conv3d)."""
    def build(classes: int, pretrained: str, clip: Clip) -> nn.Module:
        import torchvision.models.video as tvv

        net = getattr(tvv, builder)(weights=None)
        if pretrained == "kinetics400":
            _load(net, weights)
        parent, _, leaf = classifier.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        old = getattr(owner, leaf)
        new = (nn.Linear(old.in_features, classes) if isinstance(old, nn.Linear)
               else nn.Conv3d(old.in_channels, classes, old.kernel_size))
        setattr(owner, leaf, new)
        return net
    return build


for _name, _builder, _weights, _about in (
        ("r3d_18", "r3d_18", "R3D_18_Weights.KINETICS400_V1", "ResNet3D-18 (torchvision)"),
        ("r2plus1d_18", "r2plus1d_18", "R2Plus1D_18_Weights.KINETICS400_V1", "R(2+1)D-18 (torchvision)"),
        ("mc3_18", "mc3_18", "MC3_18_Weights.KINETICS400_V1", "mixed-convolution 3D ResNet-18 (torchvision)")):
    register(from_weights(_name, _torchvision_video(_builder, _weights), _weights, _about))


# ---- modern pretrained video models (torchvision) -----------------------------------------------------

def _s3d(classes: int, pretrained: str, clip: Clip) -> nn.Module:
    """S3D with its fixed (2, 7, 7) average pool made global: the same for its 224 px training clips
    up to edge weighting, and any clip of 32 px and 8 frames or more fits (the output layer is new)."""
    net = _torchvision_video("s3d", "S3D_Weights.KINETICS400_V1", "classifier.1")(classes, pretrained, clip)
    net.avgpool = nn.AdaptiveAvgPool3d(1)
    return net


register(from_weights("s3d", _s3d, "S3D_Weights.KINETICS400_V1", "S3D, separable 3D Inception (Xie et al.)",
                      classifier="classifier.1", min_frames=8, min_size=32))

_MVIT_SIZE = threading.Lock()


def _mvit(builder: str, weights: str) -> Callable[[int, str, Clip], nn.Module]:
    """MViT's position embeddings are made for one clip shape, which torchvision's builders fix at
    16 x 224 x 224; random initialisation builds the network for the store's clip instead, by
    handing torchvision's own `_mvit` the shape (the block tables stay torchvision's)."""
    def build(classes: int, pretrained: str, clip: Clip) -> nn.Module:
        import torchvision.models.video.mvit as M

        with _MVIT_SIZE:   # every MViT build: another thread may have the builder swapped
            if pretrained == "kinetics400" or (clip.frames, clip.size) == (16, 224):
                net = getattr(M, builder)(weights=None)
            else:
                real = M._mvit

                def sized(**kw):
                    kw.update(spatial_size=(clip.size, clip.size), temporal_size=clip.frames)
                    return real(**kw)
                M._mvit = sized
                try:
                    net = getattr(M, builder)(weights=None)
                finally:
                    M._mvit = real
        if pretrained == "kinetics400":
            _load(net, weights)
        net.head[-1] = nn.Linear(net.head[-1].in_features, classes)
        return net
    return build


def _swin3d(builder: str, weights: str) -> Callable[[int, str, Clip], nn.Module]:
    return _torchvision_video(builder, weights, "head")


for _name, _weights, _about, _extra in (
        ("mvit_v1_b", "MViT_V1_B_Weights.KINETICS400_V1", "MViT-v1-B, multiscale vision transformer (Fan et al.)",
         dict(fixed_input=True, classifier="head.1", drop_path=0.2, min_frames=4, min_size=32, multiple=(2, 32))),
        ("mvit_v2_s", "MViT_V2_S_Weights.KINETICS400_V1", "MViT-v2-S, pooling attention + rel. positions (Li et al.)",
         dict(fixed_input=True, classifier="head.1", drop_path=0.2, min_frames=4, min_size=32, multiple=(2, 32))),
        ("swin3d_t", "Swin3D_T_Weights.KINETICS400_V1", "Video Swin-T, shifted 3D windows (Liu et al.)",
         dict(classifier="head", drop_path=0.1, min_size=16)),
        ("swin3d_s", "Swin3D_S_Weights.KINETICS400_V1", "Video Swin-S (Liu et al.)",
         dict(classifier="head", drop_path=0.1, min_size=16)),
        ("swin3d_b", "Swin3D_B_Weights.KINETICS400_V1", "Video Swin-B (Liu et al.)",
         dict(classifier="head", drop_path=0.1, min_size=16))):
    _build = _mvit(_name, _weights) if _name.startswith("mvit") else _swin3d(_name, _weights)
    register(from_weights(_name, _build, _weights, _about, **_extra))


# ---- C3D -----------------------------------------------------------------------------------------

class C3D(nn.Module):
    """Eight 3x3x3 convolutions (64, 128, 256x2, 512x2, 512x2), five max-pools, two FC layers.
    The FC width is 4096 in the paper (for 16x112x112 inputs); here it adapts to any input by
    pooling the last feature map to 1x4x4 (C3D's own is 1x4x4 at 112 px)."""

    def __init__(self, classes: int, fc: int = 4096, dropout: float = 0.5):
        super().__init__()
        def conv(i, o):
            return [nn.Conv3d(i, o, 3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(
            *conv(3, 64), nn.MaxPool3d((1, 2, 2), (1, 2, 2)),
            *conv(64, 128), nn.MaxPool3d(2, 2),
            *conv(128, 256), *conv(256, 256), nn.MaxPool3d(2, 2),
            *conv(256, 512), *conv(512, 512), nn.MaxPool3d(2, 2),
            *conv(512, 512), *conv(512, 512), nn.MaxPool3d(2, 2, ceil_mode=True),
            nn.AdaptiveAvgPool3d((1, 4, 4)))
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Linear(512 * 16, fc), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(fc, fc), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(fc, classes))

    def forward(self, x):  # (B, 3, T, H, W)
        return self.classifier(self.features(x))


register(VideoModelSpec("c3d", lambda classes, pretrained, clip: C3D(classes), classifier="classifier.7",
                        about="C3D, VGG-style 3x3x3 (Tran et al.)"))


# ---- I3D: ResNet-50 inflated ---------------------------------------------------------------------

def inflate(module: nn.Module, time_kernel: Callable[[str, nn.Conv2d], int]) -> nn.Module:
    """Replace every 2D layer of `module` by its 3D twin, in place; a Conv2d's weight (when trained)
    is repeated over `time_kernel(name, conv)` frames and divided by it, so a clip of identical
    frames gives the 2D network's activations (the I3D initialisation)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            kt = time_kernel(name, child)
            conv = nn.Conv3d(child.in_channels, child.out_channels, (kt, *child.kernel_size),
                             stride=(1, *child.stride), padding=(kt // 2, *child.padding), bias=child.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(child.weight.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt)
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
            setattr(module, name, conv)
        elif isinstance(child, nn.BatchNorm2d):
            bn = nn.BatchNorm3d(child.num_features, child.eps, child.momentum)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.MaxPool3d((1, child.kernel_size, child.kernel_size), (1, child.stride, child.stride),
                                               (0, child.padding, child.padding)))
        elif isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, nn.AdaptiveAvgPool3d(1))
        else:
            inflate(child, time_kernel)
    return module


def _i3d(classes: int, pretrained: str, clip: Clip) -> nn.Module:
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    if pretrained == "imagenet":
        _load(net, "ResNet50_Weights.IMAGENET1K_V2")
    # time kernels as I3D's ResNet-50: 5 in the stem, 3 in the first 1x1 of every other bottleneck
    counter = {"n": 0}

    def kt(name: str, conv: nn.Conv2d) -> int:
        if conv.kernel_size == (7, 7):
            return 5
        if name == "conv1" and conv.kernel_size == (1, 1):
            counter["n"] += 1
            return 3 if counter["n"] % 2 == 1 else 1
        return 1
    inflate(net, kt)
    net.fc = nn.Linear(net.fc.in_features, classes)
    return net


register(VideoModelSpec("i3d", _i3d, pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        about="ResNet-50 inflated to 3D (I3D), ImageNet-initialisable"))


# ---- non-local blocks in a 3D ResNet-18 ------------------------------------------------------------

class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018): every position attends to every other
    in space and time; zero-initialised output BN, so it starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.theta, self.phi, self.g = (nn.Conv3d(channels, inner, 1) for _ in range(3))
        self.out = nn.Sequential(nn.Conv3d(inner, channels, 1), nn.BatchNorm3d(channels))
        nn.init.zeros_(self.out[1].weight)

    def forward(self, x):  # (B, C, T, H, W)
        b, c, t, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)        # (B, THW, C')
        k = self.phi(x).flatten(2)                           # (B, C', THW)
        v = self.g(x).flatten(2).transpose(1, 2)             # (B, THW, C')
        y = torch.softmax(q @ k, dim=-1) @ v                 # (B, THW, C')
        return x + self.out(y.transpose(1, 2).reshape(b, -1, t, h, w))


def _nonlocal(classes: int, pretrained: str, clip: Clip) -> nn.Module:
    net = _torchvision_video("r3d_18", "R3D_18_Weights.KINETICS400_V1")(classes, pretrained, clip)
    net.layer2 = nn.Sequential(*net.layer2, NonLocal(128))
    net.layer3 = nn.Sequential(*net.layer3, NonLocal(256))
    return net


register(from_weights("nonlocal", _nonlocal, "R3D_18_Weights.KINETICS400_V1",
                      "3D ResNet-18 with non-local blocks after layer2 and layer3"))


# ---- ConvLSTM ---------------------------------------------------------------------------------------

class ConvLSTMCell(nn.Module):
    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(channels + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x, state):  # x (B, C, H, W); state (h, c) each (B, hidden, H, W)
        h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMNet(nn.Module):
    """A strided conv encoder per frame (to 1/8 size), two ConvLSTM layers over time, the last
    hidden map pooled and classified. Memory grows with T x H x W x hidden (a seed study ran out
    of it): keep clips small or the batch low."""

    def __init__(self, classes: int, hidden: int = 64):
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 64))
        self.cells = nn.ModuleList([ConvLSTMCell(64, hidden), ConvLSTMCell(hidden, hidden)])
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(hidden, classes))

    def forward(self, x):  # (B, 3, T, H, W)
        b, _, t = x.shape[:3]
        feats = self.encoder(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, t))  # (B, T, 64, h, w)
        states = [None] * len(self.cells)
        for step in range(t):
            inp = feats[:, step]
            for k, cell in enumerate(self.cells):
                if states[k] is None:
                    z = inp.new_zeros(b, cell.hidden, *inp.shape[2:])
                    states[k] = (z, z)
                states[k] = cell(inp, states[k])
                inp = states[k][0]
        return self.fc(inp.mean(dim=(2, 3)))


register(VideoModelSpec("convlstm", lambda classes, pretrained, clip: ConvLSTMNet(classes), classifier="fc.1",
                        about="conv encoder + 2 ConvLSTM layers (Shi et al.)"))


# ---- 2D CNN per frame + temporal model ---------------------------------------------------------------

class FrameCNN(nn.Module):
    """A 2D network applied to every frame: (B, 3, T, H, W) -> (B, T, D)."""

    def __init__(self, net: nn.Module, dim: int):
        super().__init__()
        self.net, self.dim = net, dim

    def forward(self, x):
        b, _, t = x.shape[:3]
        return self.net(x.transpose(1, 2).flatten(0, 1)).view(b, t, -1)


def _resnet18_frames(pretrained: str) -> FrameCNN:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    if pretrained == "imagenet":
        _load(net, "ResNet18_Weights.IMAGENET1K_V1")
    net.fc = nn.Identity()
    return FrameCNN(net, 512)


def _small_cnn() -> FrameCNN:
    """The seed study's three conv blocks (32, 64, 128 channels) at 64x64, global pooling."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return FrameCNN(nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(1)), 128)


class SequenceOverFrames(nn.Module):
    """FrameCNN -> recurrent layer (lstm | rnn) -> last hidden state -> linear; or `mean` fusion."""

    def __init__(self, frames: FrameCNN, classes: int, temporal: str, hidden: int = 256):
        super().__init__()
        self.frames, self.temporal = frames, temporal
        if temporal == "mean":
            self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(frames.dim, classes))
        else:
            self.rnn = CELLS.get(temporal)(frames.dim, hidden, batch_first=True)
            self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(hidden, classes))

    def forward(self, x):  # (B, 3, T, H, W)
        f = self.frames(x)                                   # (B, T, D)
        if self.temporal == "mean":
            return self.fc(f.mean(dim=1))
        _, h = self.rnn(f)
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(h[-1])


register(VideoModelSpec("lrcn", lambda classes, pretrained, clip: SequenceOverFrames(_resnet18_frames(pretrained), classes, "lstm"),
                        pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="ResNet-18 per frame + LSTM, end to end (LRCN)"))
register(VideoModelSpec("late-fusion-e2e",
                        lambda classes, pretrained, clip: SequenceOverFrames(_resnet18_frames(pretrained), classes, "mean"),
                        pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="shared ResNet-18 per frame, features averaged over time"))
register(VideoModelSpec("small-cnn-lstm", lambda classes, pretrained, clip: SequenceOverFrames(_small_cnn(), classes, "lstm"),
                        size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="three-block CNN at 64x64 + LSTM"))
register(VideoModelSpec("small-cnn-rnn", lambda classes, pretrained, clip: SequenceOverFrames(_small_cnn(), classes, "rnn"),
                        size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="fc.1",
                        about="three-block CNN at 64x64 + RNN"))


# ---- a small 3-D CNN ------------------------------------------------------------------------------

def _small_c3d(classes: int, pretrained: str, clip: Clip) -> nn.Module:
    """The seed study's three conv blocks (32, 64, 128 channels) made 3-D (3x3x3), for 64x64 clips:
    the CPU-sized counterpart of small-cnn-lstm that sees motion in its first layer."""
    def block(i, o, pool):
        return [nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True), nn.MaxPool3d(pool)]
    return nn.Sequential(*block(3, 32, (1, 2, 2)), *block(32, 64, (2, 2, 2)), *block(64, 128, (1, 2, 2)),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Dropout(0.3), nn.Linear(128, classes))


register(VideoModelSpec("small-c3d", _small_c3d, frames=8, size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="15",
                        about="three 3x3x3 conv blocks at 64x64 (a small C3D)"))


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
            "about": _REGISTRY.about(name)}
