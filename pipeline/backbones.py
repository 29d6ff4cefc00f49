"""Frozen 2D backbones from torchvision: one registry, each with its feature size and the
preprocessing its weights expect. Features are the pooled penultimate activations, one vector
per frame (the classifier's last Linear is replaced by Identity).

Weights go through torchvision's weights API and its cache ($TORCH_HOME/hub/checkpoints). Where
the file is missing and cannot be downloaded (no internet), `WeightsError` says which file to put
where. `weights="none"` gives a seeded random initialisation, for tests and offline demos;
every output built on it says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch  # this module is imported only by the stages that run a network, never by `har --help`

from pipeline import lineage
from pipeline.registry import Registry


class WeightsError(ValueError):
    """Weights that cannot be had; the message says what to download and where to put it."""


@dataclass(frozen=True)
class Backbone:
    name: str
    builder: str   # torchvision.models function
    weights: str   # torchvision weights enum member whose file and preprocessing we use
    dim: int       # feature size
    head: str      # path of the final Linear replaced by Identity ("fc", "classifier.2", ...)


_REGISTRY: Registry[Backbone] = Registry("backbone")


def register(b: Backbone, about: str) -> Backbone:
    return _REGISTRY.add(b.name, b, about)


register(Backbone("resnet152", "resnet152", "ResNet152_Weights.IMAGENET1K_V1", 2048, "fc"),
         "ResNet-152, pooled 2048-d (the seed studies' backbone)")
register(Backbone("resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", 2048, "fc"), "ResNet-50, pooled 2048-d")
register(Backbone("resnet18", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512, "fc"),
         "ResNet-18, pooled 512-d: fast, for CPUs and the demo")
register(Backbone("convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", 768, "classifier.2"),
         "ConvNeXt-Tiny, pooled 768-d")
register(Backbone("efficientnet_v2_s", "efficientnet_v2_s", "EfficientNet_V2_S_Weights.IMAGENET1K_V1", 1280,
                  "classifier.1"), "EfficientNet-V2-S, pooled 1280-d")


def names() -> tuple[str, ...]:
    return _REGISTRY.names()


def get(name: str) -> Backbone:
    return _REGISTRY.get(name)


@dataclass(frozen=True)
class WeightsInfo:
    kind: str            # "imagenet" | "none" | "file"
    source: str          # torchvision enum member, file path, or "random init (seed 0)"
    sha256: str | None   # of the state_dict file; None for random init
    scale: float = 1.0   # features are multiplied by this (random init only: brings them to ~1 for float16)

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"


def weights_file(name: str) -> Path:
    """Where torchvision's cache keeps (or would keep) this backbone's ImageNet weights."""
    from torchvision.models import get_weight

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(get_weight(get(name).weights).url).name


def load(name: str, weights: str = "imagenet", resize: bool = True):
    """(model, preprocess, WeightsInfo): an eval-mode, frozen feature extractor on the CPU.

    `weights`: "imagenet" (torchvision's cache, downloaded if possible), "none" (seeded random
    init), or the path of a local state_dict (loaded with weights_only=True).
    `preprocess` maps a uint8 (B, 3, H, W) tensor to the network's input as the weights' own
    transforms() do (resize, centre crop, scale, normalise); with resize=False it only scales and
    normalises, leaving frames at their stored size (4x less work for 112 px frames than 224).
    """
    import torchvision
    from torchvision.models import get_weight

    spec = get(name)
    enum = get_weight(spec.weights)
    if weights == "none":
        torch.manual_seed(0)
        model = getattr(torchvision.models, spec.builder)(weights=None)
        info = None
    else:
        if weights == "imagenet":
            path = weights_file(name)
            if not path.exists():
                try:
                    enum.get_state_dict(progress=False, check_hash=True)  # downloads into the cache
                except Exception:
                    raise WeightsError(
                        f"{name}: ImageNet weights {path.name} are not in {path.parent} and cannot be downloaded "
                        f"here; download {enum.url} and put it there, or pass --weights PATH or --weights none") from None
            kind, source = "imagenet", spec.weights
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsError(f"--weights {weights!r} is not a file; allowed: imagenet, none, or a state_dict path")
            kind, source = "file", str(path.resolve())
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{path} is not a loadable state_dict ({type(e).__name__}: {e})") from None
        model = getattr(torchvision.models, spec.builder)(weights=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsError(f"{path} does not fit {name}: {str(e).splitlines()[0]}") from None
        info = WeightsInfo(kind, source, lineage.file_sha256(path))
    _strip_head(model, spec.head)
    model.eval().requires_grad_(False)
    preprocess = Preprocess(enum.transforms(antialias=True), resize)
    if info is None:
        # Untrained networks put features anywhere from 1e-6 (EfficientNet) to 1e8 (ResNet-152,
        # whose 50 residual blocks add up unnormalised): outside float16. One scalar, measured on
        # seeded noise, brings their mean magnitude to 1; it is recorded in the lineage.
        factor = _unit_scale(model, preprocess)
        model = torch.nn.Sequential(model, _Scale(factor))
        info = WeightsInfo("none", "random init (seed 0)", None, factor)
    return model, preprocess, info


class Preprocess:
    """The weights' own transforms (torchvision ImageClassification: resize, centre crop, scale to
    [0, 1], normalise) on a uint8 (B, 3, H, W) batch, with the last two fused into one pass:
    equal to `weights.transforms()` up to float rounding, 20 % less time on a CPU."""

    def __init__(self, t, resize: bool = True):
        self.resize = resize
        self.resize_size, self.crop_size = list(t.resize_size), list(t.crop_size)
        self.interpolation, self.antialias = t.interpolation, t.antialias
        self.mean = torch.tensor(t.mean).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(t.std).view(1, 3, 1, 1) * 255)

    def __call__(self, x):
        import torchvision.transforms.functional as F

        if self.resize:
            x = F.resize(x, self.resize_size, interpolation=self.interpolation, antialias=self.antialias)
            x = F.center_crop(x, self.crop_size)
        mean, inv_std = self.mean.to(x.device), self.inv_std.to(x.device)
        return (x.float() - mean) * inv_std

    def __repr__(self):
        if not self.resize:
            return "Preprocess(stored size, scale and normalise only)"
        return f"Preprocess(resize={self.resize_size}, crop={self.crop_size}, {self.interpolation.value})"


def _unit_scale(model, preprocess) -> float:
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        mean = float(model(preprocess(probe)).abs().mean())
    return float(1.0 / mean) if mean > 0 else 1.0


class _Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):  # (B, D)
        return x * self.factor


def _strip_head(model, head: str) -> None:
    *parents, last = head.split(".")
    owner = model
    for p in parents:
        owner = getattr(owner, p)
    if last.isdigit():
        owner[int(last)] = torch.nn.Identity()
    else:
        setattr(owner, last, torch.nn.Identity())


def cost(name: str) -> dict:
    """Parameters and GFLOPs of one 224 px frame, counted on the meta device (nothing computed)."""
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    spec = get(name)
    with torch.device("meta"):
        model = getattr(torchvision.models, spec.builder)(weights=None)
        _strip_head(model, spec.head)
        frame = torch.zeros(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(frame)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "gflops": counter.get_total_flops() / 1e9, "input": "224x224 frame",
            "pretrained": ("imagenet", "none", "PATH"), "about": f"{_REGISTRY.about(name)} ({spec.weights})"}


def resized_size(h: int, w: int, size: list[int]) -> tuple[int, int]:
    """(height, width) torchvision's resize gives: [s] scales the shorter side to s (the longer
    truncated), [h, w] is exact."""
    if len(size) == 2:
        return size[0], size[1]
    if h <= w:
        return size[0], int(size[0] * w / h)
    return int(size[0] * h / w), size[0]
