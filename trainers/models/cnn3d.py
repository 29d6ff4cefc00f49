"""3D convolutional video networks: torchvision's video ResNets (`r3d_18`, `r2plus1d_18`, `mc3_18`)
and `s3d` with their Kinetics-400 weights, and our own where torchvision has none: `c3d` (Tran et al.
2015), `i3d` (ResNet-50 inflated to 3D from ImageNet 2D weights, Carreira & Zisserman 2017),
`nonlocal` (non-local blocks in a 3D ResNet-18, Wang et al. 2018) and `small-c3d` (the seed study's
three conv blocks made 3-D). `SPECS` lists them; trainers.models.video_models registers them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trainers.models.video_spec import (IMAGENET_MEAN, IMAGENET_STD, Clip, VideoModelSpec, from_weights, load_weights,
                                        torchvision_video)

SPECS: list[VideoModelSpec] = []


# ---- torchvision's video ResNets and S3D -------------------------------------------------------

for _name, _builder, _weights, _about in (
        ("r3d_18", "r3d_18", "R3D_18_Weights.KINETICS400_V1", "ResNet3D-18 (torchvision)"),
        ("r2plus1d_18", "r2plus1d_18", "R2Plus1D_18_Weights.KINETICS400_V1", "R(2+1)D-18 (torchvision)"),
        ("mc3_18", "mc3_18", "MC3_18_Weights.KINETICS400_V1", "mixed-convolution 3D ResNet-18 (torchvision)")):
    SPECS.append(from_weights(_name, torchvision_video(_builder, _weights), _weights, _about))


def _s3d(classes: int, pretrained: str, clip: Clip) -> nn.Module:
    """S3D with its fixed (2, 7, 7) average pool made global: the same for its 224 px training clips
    up to edge weighting, and any clip of 32 px and 8 frames or more fits (the output layer is new)."""
    net = torchvision_video("s3d", "S3D_Weights.KINETICS400_V1", "classifier.1")(classes, pretrained, clip)
    net.avgpool = nn.AdaptiveAvgPool3d(1)
    return net


SPECS.append(from_weights("s3d", _s3d, "S3D_Weights.KINETICS400_V1", "S3D, separable 3D Inception (Xie et al.)",
                      classifier="classifier.1", min_frames=8, min_size=32))


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


SPECS.append(VideoModelSpec("c3d", lambda classes, pretrained, clip: C3D(classes), classifier="classifier.7",
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
        load_weights(net, "ResNet50_Weights.IMAGENET1K_V2")
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


SPECS.append(VideoModelSpec("i3d", _i3d, pretrained=("imagenet",), mean=IMAGENET_MEAN, std=IMAGENET_STD,
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
    net = torchvision_video("r3d_18", "R3D_18_Weights.KINETICS400_V1")(classes, pretrained, clip)
    net.layer2 = nn.Sequential(*net.layer2, NonLocal(128))
    net.layer3 = nn.Sequential(*net.layer3, NonLocal(256))
    return net


SPECS.append(from_weights("nonlocal", _nonlocal, "R3D_18_Weights.KINETICS400_V1",
                      "3D ResNet-18 with non-local blocks after layer2 and layer3"))


# ---- a small 3-D CNN ------------------------------------------------------------------------------

def _small_c3d(classes: int, pretrained: str, clip: Clip) -> nn.Module:
    """The seed study's three conv blocks (32, 64, 128 channels) made 3-D (3x3x3), for 64x64 clips:
    the CPU-sized counterpart of small-cnn-lstm that sees motion in its first layer."""
    def block(i, o, pool):
        return [nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True), nn.MaxPool3d(pool)]
    return nn.Sequential(*block(3, 32, (1, 2, 2)), *block(32, 64, (2, 2, 2)), *block(64, 128, (1, 2, 2)),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Dropout(0.3), nn.Linear(128, classes))


SPECS.append(VideoModelSpec("small-c3d", _small_c3d, frames=8, size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="15",
                        about="three 3x3x3 conv blocks at 64x64 (a small C3D)"))
