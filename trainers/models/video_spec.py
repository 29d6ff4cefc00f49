"""What a video model is, before any network: its spec (clip, normalisation, weights, output layer),
the uint8-in wrapper every network sits in, and torchvision's weights (cache, facts, loading).

The families of networks (`cnn3d`, `video_transformers`, `frame_models`) build on this; their
registry, and building, fitting and costing by name, is `video_models`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.core.registry import Registry
from pipeline.stages.backbones import WeightsError  # the one error for weights that cannot be had

KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRETRAINED = Registry.of("initial weights", {"none": "random init", "kinetics400": "torchvision's video models",
                                               "imagenet": "the 2D-based models' frame encoder"})


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
    hub: bool = False                        # a Hugging Face encoder (hub_models): --pretrained FOLDER|HUB_ID


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


def weights_file(weights_name: str) -> Path:
    """Where torchvision's cache keeps these weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    from torchvision.models import get_weight

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(get_weight(weights_name).url).name


def state_dict(weights_name: str) -> dict:
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


def load_weights(net: nn.Module, weights_name: str) -> None:
    state = state_dict(weights_name)
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


def torchvision_video(builder: str, weights: str, classifier: str = "fc") -> Callable[[int, str, Clip], nn.Module]:
    """A torchvision video network, its Kinetics-400 weights when asked, a new output layer for our
    classes at `classifier` (the module path of its last Linear or 1x1x1 Conv3d)."""
    def build(classes: int, pretrained: str, clip: Clip) -> nn.Module:
        import torchvision.models.video as tvv

        net = getattr(tvv, builder)(weights=None)
        if pretrained == "kinetics400":
            load_weights(net, weights)
        parent, _, leaf = classifier.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        old = getattr(owner, leaf)
        new = (nn.Linear(old.in_features, classes) if isinstance(old, nn.Linear)
               else nn.Conv3d(old.in_channels, classes, old.kernel_size))
        setattr(owner, leaf, new)
        return net
    return build
