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
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.backbones import WeightsError  # the one error for weights that cannot be had
from pipeline.registry import Registry
from trainers.heads import CELLS

KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRETRAINED = ("none", "kinetics400", "imagenet")


@dataclass(frozen=True)
class VideoModelSpec:
    name: str
    build: Callable[[int, str], nn.Module]   # (classes, pretrained) -> network on (B, 3, T, H, W) floats
    frames: int = 16                         # default clip: T x size x size
    size: int = 112
    pretrained: tuple[str, ...] = ()         # what --pretrained allows besides none
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    about: str = ""


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


def build(name: str, classes: int, pretrained: str = "none") -> VideoModel:
    spec = get(name)
    allowed = ("none", *spec.pretrained)
    if pretrained not in allowed:
        raise ValueError(f"--pretrained {pretrained!r} is not available for {name}; allowed: {', '.join(allowed)}")
    return VideoModel(spec.build(classes, pretrained), spec.mean, spec.std)


def _state_dict(weights_name: str) -> dict:
    """A torchvision weights enum member's state_dict from its cache; WeightsError offline."""
    from torchvision.models import get_weight

    enum = get_weight(weights_name)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not path.exists():
        try:
            return enum.get_state_dict(progress=False, check_hash=True)
        except Exception:
            raise WeightsError(f"{weights_name}: {path.name} is not in {path.parent} and cannot be downloaded here; "
                               f"download {enum.url} and put it there, or use --pretrained none") from None
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- torchvision's video ResNets ---------------------------------------------------------------

def _torchvision_video(builder: str, weights: str) -> Callable[[int, str], nn.Module]:
    def build(classes: int, pretrained: str) -> nn.Module:
        import torchvision.models.video as tvv

        net = getattr(tvv, builder)(weights=None)
        if pretrained == "kinetics400":
            net.load_state_dict(_state_dict(weights))
        net.fc = nn.Linear(net.fc.in_features, classes)  # a new classifier for our classes
        return net
    return build


for _name, _builder, _weights, _about in (
        ("r3d_18", "r3d_18", "R3D_18_Weights.KINETICS400_V1", "ResNet3D-18 (torchvision)"),
        ("r2plus1d_18", "r2plus1d_18", "R2Plus1D_18_Weights.KINETICS400_V1", "R(2+1)D-18 (torchvision)"),
        ("mc3_18", "mc3_18", "MC3_18_Weights.KINETICS400_V1", "mixed-convolution 3D ResNet-18 (torchvision)")):
    register(VideoModelSpec(_name, _torchvision_video(_builder, _weights), pretrained=("kinetics400",), about=_about))


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


register(VideoModelSpec("c3d", lambda classes, pretrained: C3D(classes), about="C3D, VGG-style 3x3x3 (Tran et al.)"))


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


def _i3d(classes: int, pretrained: str) -> nn.Module:
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    if pretrained == "imagenet":
        net.load_state_dict(_state_dict("ResNet50_Weights.IMAGENET1K_V2"))
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


def _nonlocal(classes: int, pretrained: str) -> nn.Module:
    net = _torchvision_video("r3d_18", "R3D_18_Weights.KINETICS400_V1")(classes, pretrained)
    net.layer2 = nn.Sequential(*net.layer2, NonLocal(128))
    net.layer3 = nn.Sequential(*net.layer3, NonLocal(256))
    return net


register(VideoModelSpec("nonlocal", _nonlocal, pretrained=("kinetics400",),
                        about="3D ResNet-18 with non-local blocks after layer2 and layer3"))


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


register(VideoModelSpec("convlstm", lambda classes, pretrained: ConvLSTMNet(classes),
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
        net.load_state_dict(_state_dict("ResNet18_Weights.IMAGENET1K_V1"))
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


register(VideoModelSpec("lrcn", lambda classes, pretrained: SequenceOverFrames(_resnet18_frames(pretrained), classes, "lstm"),
                        pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        about="ResNet-18 per frame + LSTM, end to end (LRCN)"))
register(VideoModelSpec("late-fusion-e2e",
                        lambda classes, pretrained: SequenceOverFrames(_resnet18_frames(pretrained), classes, "mean"),
                        pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        about="shared ResNet-18 per frame, features averaged over time"))
register(VideoModelSpec("small-cnn-lstm", lambda classes, pretrained: SequenceOverFrames(_small_cnn(), classes, "lstm"),
                        size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, about="three-block CNN at 64x64 + LSTM"))
register(VideoModelSpec("small-cnn-rnn", lambda classes, pretrained: SequenceOverFrames(_small_cnn(), classes, "rnn"),
                        size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, about="three-block CNN at 64x64 + RNN"))


# ---- a small 3-D CNN ------------------------------------------------------------------------------

def _small_c3d(classes: int, pretrained: str) -> nn.Module:
    """The seed study's three conv blocks (32, 64, 128 channels) made 3-D (3x3x3), for 64x64 clips:
    the CPU-sized counterpart of small-cnn-lstm that sees motion in its first layer."""
    def block(i, o, pool):
        return [nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True), nn.MaxPool3d(pool)]
    return nn.Sequential(*block(3, 32, (1, 2, 2)), *block(32, 64, (2, 2, 2)), *block(64, 128, (1, 2, 2)),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Dropout(0.3), nn.Linear(128, classes))


register(VideoModelSpec("small-c3d", _small_c3d, frames=8, size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD,
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
