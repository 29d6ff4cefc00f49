"""Hugging Face video transformers fine-tuned end to end (`har train-e2e videomae|vjepa2|timesformer
--pretrained FOLDER|HUB_ID`): the frozen backbones of `pipeline.stages.video_backbones`, trained.
`SPECS` lists them; trainers.models.video_models registers them.

The network: the encoder (VideoMAEModel, VJEPA2Model, TimesformerModel) from a `save_pretrained`
folder or the Hugging Face cache, then a new classifier on the mean of its patch tokens through a
LayerNorm (VideoMAE's fine-tuning head; TimeSformer's CLS token is left out, so that every family
decides from the token grid that Grad-CAM explains; V-JEPA 2 is evaluated with an attentive probe,
`har train-head attentive-probe`, and fine-tuned here with the same mean pooling). `har explain`:
Grad-CAM on the tokens reshaped to (T', H', W') (the `tokens` layer), as on a 3D CNN's last map. The stored clip is fed as the store holds it: its
frames resampled to the model's frames per clip (nearest, evenly spaced, as the features stage
takes them) and the crop resized to the model's input side when they differ, so any frame store
trains (fit_store warns). Normalisation: the folder's processor config (or the family's defaults).
Stochastic depth: the config's `drop_path_rate` (V-JEPA 2, TimeSformer; transformers' VideoMAE has
none). A run records the encoder's config and its normalisation in its model card, so predict,
serve and export rebuild the network without the folder.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.stages import backbones
from pipeline.stages.video_backbones import ClipShape, token_grid
from trainers.models.chain import resize_matrix
from trainers.models.video_spec import Clip, VideoModelSpec

SPECS: list[VideoModelSpec] = []


class HubVideoNet(nn.Module):
    """Normalised clips (B, 3, T, H, W) -> (B, classes): the encoder's patch tokens laid out as a
    grid (B, D, T', H', W') by the `tokens` layer (an identity: where Grad-CAM reads them, as it
    reads a 3D CNN's last feature map), averaged, LayerNorm, the new classifier."""

    def __init__(self, encoder: nn.Module, clip: backbones.ClipSpec, frames: int, size: int, classes: int):
        super().__init__()
        self.encoder = encoder
        self.input_name, self.forward_kw, self.cls = clip.input_name, dict(clip.forward), clip.cls_tokens
        self.time_major = clip.time_major
        self.frames, self.size = frames, size
        config = encoder.config
        tubelet = int(getattr(config, clip.tubelet_key)) if clip.tubelet_key else 1
        self.grid = (frames // tubelet, size // config.patch_size, size // config.patch_size)
        dim = config.hidden_size
        self.tokens = nn.Identity()
        self._matrices: dict = {}   # the resize's weights per input size (not state: rebuilt from the sizes)
        self.fc_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, classes)

    def _resize(self, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(size, h) and (size, w) weights of torch's antialiased bilinear resize (chain.resize_matrix)."""
        key = (h, w, str(device))
        if key not in self._matrices:
            self._matrices[key] = (resize_matrix(h, self.size, "bilinear", True).to(device),
                                   resize_matrix(w, self.size, "bilinear", True).to(device))
        return self._matrices[key]

    def forward(self, x):
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4)                                    # (B, T, 3, H, W), as transformers takes it
        if t != self.frames:
            # the features stage's frame positions; computed on plain ints (a traced shape is a tensor)
            take = torch.as_tensor(ClipShape.frame_positions(int(t), self.frames), device=x.device)
            x = x.index_select(1, take)
        if (h, w) != (self.size, self.size):   # antialiased bilinear as matrices: the same pixels, and ONNX exports it
            rows, cols = self._resize(int(h), int(w), x.device)
            x = torch.einsum("oh,btchw,pw->btcop", rows, x, cols)
        hidden = self.encoder(**{self.input_name: x}, **self.forward_kw).last_hidden_state[:, self.cls:]
        pooled = self.tokens(token_grid(hidden, *self.grid, self.time_major)).mean((2, 3, 4))
        return self.classifier(self.fc_norm(pooled))


def hub_config(name: str, pretrained: str, clip: Clip, drop_path: float | None = None, recorded: dict | None = None):
    """(config, folder or None): the encoder's transformers config: a run's recorded one, the
    folder's (or hub snapshot's), or with --pretrained none the family's base configuration at the
    store's clip."""
    from pipeline.stages import video_backbones as vb

    tf = vb.transformers()
    spec = backbones.get(name).clip
    cls = getattr(tf, spec.config_class)
    folder = None
    if recorded is not None:
        config = _from_dict(cls, recorded)
    elif pretrained == "none":
        config = cls(**{spec.frames_key: clip.frames, spec.size_key: clip.size})
    else:
        folder, _ = vb.folder_for(name, pretrained, "--pretrained")
        d = vb.folder_config(name, folder, "video model")
        config = _from_dict(cls, {k: v for k, v in d.items() if k not in ("architectures", "auto_map")})
    if drop_path is not None:
        if not hasattr(config, "drop_path_rate"):
            raise ValueError(f"--drop-path: transformers' {name} has no stochastic depth; leave it out")
        _set_rate(config, drop_path)
    return config, folder


def _set_rate(config, rate: float) -> None:
    # transformers 5.25 declares TimesformerConfig.drop_path_rate an int and refuses 0.1 through its
    # checked setattr; the model reads it as a float (torch.linspace), so it is set past the check
    object.__setattr__(config, "drop_path_rate", float(rate))


def _from_dict(cls, d: dict):
    """A config from a dict (a folder's config.json or a run's record), its drop path set as above."""
    try:
        config = cls.from_dict({k: v for k, v in d.items() if k != "drop_path_rate"})
    except (TypeError, ValueError) as e:
        raise ValueError(f"a {cls.__name__} that transformers refuses: {str(e).splitlines()[0][:200]}") from None
    if "drop_path_rate" in d:
        rate = d["drop_path_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"{cls.__name__} drop_path_rate {rate!r:.40} is not a rate in [0, 1)")
        _set_rate(config, rate)
    return config


def build_hub(name: str):
    def build(classes: int, pretrained: str, clip: Clip, drop_path: float | None = None,
              recorded: dict | None = None) -> nn.Module:
        """The network from `recorded` (the encoder's config a run or `facts` read) or --pretrained's
        folder; its weights from that folder when --pretrained names one (checked to fill the encoder: vb.load)."""
        from pipeline.stages import video_backbones as vb

        tf = vb.transformers()
        spec = backbones.get(name).clip
        config, _ = hub_config(name, pretrained, clip, drop_path, recorded)
        if pretrained == "none":
            encoder = getattr(tf, spec.model_class)(config)
        else:   # the config (drop path is read when the layers are built) goes in with the weights
            folder, _ = vb.folder_for(name, pretrained, "--pretrained")
            encoder = vb.load(name, str(folder), config)[0]
        if getattr(encoder, "predictor", None) is not None:
            encoder.predictor = None   # V-JEPA 2's predictor (masked-token prediction) is never run here
        encoder.requires_grad_(True).train()
        size = int(getattr(config, spec.size_key))
        frames = int(getattr(config, spec.frames_key))
        return HubVideoNet(encoder, spec, frames, size, classes)
    return build


def facts(name: str, pretrained: str, clip: Clip) -> dict:
    """What a run records of its encoder: the transformers config and the normalisation (the
    folder's processor config, or the family's defaults), and the clip the model takes."""
    from pipeline.stages import video_backbones as vb

    config, folder = hub_config(name, pretrained, clip)
    spec = backbones.get(name).clip
    size = int(getattr(config, spec.size_key))
    policy, source = vb.read_policy(folder, name, size)
    # transformers adds its own version to every config dict: left out, so an upgrade is not another run
    recorded = {k: v for k, v in config.to_dict().items() if k != "transformers_version"}
    return {"config": recorded, "mean": list(policy.mean), "std": list(policy.std),
            "value_range": list(policy.value_range), "frames": int(getattr(config, spec.frames_key)), "size": size,
            "processor": source, "sha256": vb.folder_sha256(folder) if folder is not None else None}


for _name, _about, _extra in (
        ("videomae", "VideoMAE (Hugging Face; --pretrained FOLDER|HUB_ID), mean-pooled tokens", dict(multiple=(2, 16))),
        ("vjepa2", "V-JEPA 2 (Hugging Face; --pretrained FOLDER|HUB_ID), mean-pooled tokens",
         dict(multiple=(2, 16), drop_path=0.0)),
        ("timesformer", "TimeSformer (Hugging Face; --pretrained FOLDER|HUB_ID), mean-pooled tokens",
         dict(multiple=(1, 16), drop_path=0.0))):
    _b = backbones.get(_name)
    SPECS.append(VideoModelSpec(_name, build_hub(_name), frames={"vjepa2": 64, "timesformer": 8}.get(_name, 16),
                                size=_b.input.size, pretrained=("FOLDER", "HUB_ID"), mean=_b.input.mean,
                                std=_b.input.std, about=_about, classifier="classifier", hub=True, **_extra))
