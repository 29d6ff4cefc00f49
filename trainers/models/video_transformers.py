"""Video transformers from torchvision with their Kinetics-400 weights: `mvit_v1_b`, `mvit_v2_s`
(multiscale vision transformers, Fan et al. 2021, Li et al. 2022) and `swin3d_t|s|b` (Video Swin,
Liu et al. 2022). `SPECS` lists them; trainers.models.video_models registers them.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from torch import nn

from trainers.models.video_spec import Clip, VideoModelSpec, from_weights, load_weights, torchvision_video

SPECS: list[VideoModelSpec] = []

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
            load_weights(net, weights)
        net.head[-1] = nn.Linear(net.head[-1].in_features, classes)
        return net
    return build


def _swin3d(builder: str, weights: str) -> Callable[[int, str, Clip], nn.Module]:
    return torchvision_video(builder, weights, "head")


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
    SPECS.append(from_weights(_name, _build, _weights, _about, **_extra))
