"""The head task: a sequence head (trainers.models.heads) trained on a feature store (`har train-head`).

Batches are gathered feature sequences (B, T, D) of one random augmented view per video and
epoch; evaluation averages the clean view's clips per video. A run records the model card
`har predict` needs to turn any video into the head's input the way the store did: the recipe,
the backbone and its weights (with sha256), the resize.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.stages import backbones, input_policy
from pipeline.stores import latest
from pipeline.core import location
from pipeline.core.lineage import seed_for
from trainers.data import views
from trainers.training import distributed, limits, loop, tasks
from trainers.models import heads
from trainers.runs import runner
from trainers.models.chain import Chain, Float16Rounded, Normalised, PerFrame, Sequential2
from trainers.training.config import HeadTrainConfig


@dataclass(frozen=True)
class HeadRunConfig:
    train: HeadTrainConfig
    features: Path | None = None     # the feature store; or
    dataset: str | None = None       # the latest feature store made for this dataset
    backbone: str | None = None      # ... with this backbone (default: the latest of any)
    out: Path | None = None          # run directory; default runs/<head>-<split>-<fingerprint[:10]>
    ram_limit: int | None = None     # bytes of features kept in RAM; above it they are memory-mapped
    tracker: str = "tensorboard"     # the dashboard (trainers.runs.tracker); changes nothing the run computes


class FeatureTask(tasks.Task):
    """A head on a feature store: batches are gathered feature sequences (B, T, D)."""

    def __init__(self, fs: views.FeatureSet):
        self.view = self.fs = fs
        self.labels, self.classes = fs.labels, fs.classes

    def build(self, cfg: HeadTrainConfig, train: np.ndarray | None) -> nn.Module:
        """The head, with Standardize set from the training videos' features (all their samples);
        train=None skips that pass (a checkpoint about to be loaded holds the statistics)."""
        mean, std = views.feature_stats(self.fs, train) if train is not None else (None, None)
        return heads.build(cfg.head, self.fs.dim, len(self.classes), self.fs.frames, cfg.head_options, mean, std)

    def batches(self, cfg: loop.LoopConfig, videos: np.ndarray, epoch: int,
                world: distributed.World = distributed.World()):
        rng = np.random.default_rng(seed_for(cfg.seed, "epoch", epoch))
        order = videos[rng.permutation(len(videos))]
        samples = views.train_samples(self.fs.view_index, order, rng, cfg.train_views)
        order, samples = distributed.shard(np.stack([order, samples], axis=1), world).T
        for a in range(0, len(order), cfg.batch_size):
            vb, sb = order[a:a + cfg.batch_size], samples[a:a + cfg.batch_size]
            yield torch.from_numpy(views.gather(self.fs, vb, sb)), torch.from_numpy(self.labels[vb])

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x

    @torch.inference_mode()
    def probabilities(self, model: nn.Module, videos: np.ndarray, device: torch.device,
                      cfg: loop.LoopConfig | None = None, batch: int = 256) -> np.ndarray:
        """(len(videos), C) video probabilities: softmax of every clean clip, averaged per video."""
        model.eval()
        clips = views.eval_samples(self.fs)
        out = np.zeros((len(videos), len(self.classes)), np.float32)
        for a in range(0, len(videos), batch):
            vb = videos[a:a + batch]
            rows = np.repeat(vb, len(clips))
            x = torch.from_numpy(views.gather(self.fs, rows, np.tile(clips, len(vb)))).to(device)
            with loop.autocast(cfg or loop.LoopConfig(precision="fp32"), device):
                logits = model(x)
            p = torch.softmax(logits.float(), dim=1).cpu().numpy().reshape(len(vb), len(clips), -1)
            out[a:a + len(vb)] = p.mean(axis=1)
        return out

    def close(self) -> None:
        pass


def feature_store_for(features: Path | None, dataset: str | None, backbone: str | None = None) -> Path:
    if (features is None) == (dataset is None):
        raise ValueError("give --features PATH or --dataset NAME (exactly one: the feature store to train on)")
    if features is not None:
        return location.of(features)
    return latest.latest_store(dataset, "features" if backbone is None else f"features-{backbone}")


def model_card(fs: views.FeatureSet) -> dict:
    """What `har predict` needs to turn a video into this run's input the way the store did (the
    store's input policy checked here: a damaged one is refused before training, not at predict)."""
    a = fs.attrs
    if "input" in a:
        input_policy.InputPolicy.from_dict(a["input"])
    return {"recipe": a["recipe"], "backbone": a["backbone"], "weights": a["weights"],
            "resize": a.get("resize", "weights"), **({"input": a["input"]} if "input" in a else {}),
            "classes": fs.classes, "frames": fs.frames, "dim": fs.dim}


def check_head_fits(cfg: HeadTrainConfig, dim: int, classes: int, frames: int, device, where: str = "",
                    batch: int | None = None) -> None:
    """ValueError, before anything is allocated, when the head cannot fit in `device`'s available
    memory: to train it (`batch` given: 16 bytes a parameter plus a batch) or to use it (4 bytes a
    parameter). `where` prefixes the message (the file the config came from)."""
    o = cfg.head_options
    if batch is None:
        params = heads.param_count(cfg.head, dim, classes, frames, o)
        need, doing = params * limits.BYTES_PER_PARAM, f"loading the {cfg.head} head ({params:,} parameters)"
    else:
        params, need = heads.training_bytes(cfg.head, dim, classes, frames, o, batch)
        doing = f"training the {cfg.head} head ({params:,} parameters; weights, gradients, Adam moments and a batch)"
    limits.check_fits(need, device, f"{where}--hidden {o.hidden} --layers {o.layers}: {doing}",
                      "choose a smaller --hidden, --layers or --batch-size" if batch
                      else "use a machine with more memory, or restore config.json if it was changed")


def _weights_word(attrs: dict) -> str:
    """What pretrained weights a feature store's backbone has: ImageNet's, or a video model's checkpoint."""
    name = attrs.get("backbone")
    return "ImageNet" if name not in backbones.BACKBONES or backbones.get(name).kind == "frame" else "pretrained"


def job(cfg: HeadRunConfig) -> runner.Job:
    """The run `cfg` asks for: its store read, its split made, the head checked to fit."""
    cfg = replace(cfg, train=cfg.train.resolved())
    cfg.train.validate()
    path = feature_store_for(cfg.features, cfg.dataset, cfg.backbone).absolute()
    fs = views.load(path, cfg.ram_limit)
    split = views.make_split(fs, cfg.train.split)
    check_head_fits(cfg.train, fs.dim, len(fs.classes), fs.frames, loop.resolve_device(cfg.train.device),
                    batch=cfg.train.batch_size)
    pretrained = bool(fs.attrs.get("pretrained", True))
    source = (fs.attrs.get("weights") or {}).get("source", "")
    return runner.Job(
        name=cfg.train.head, cfg=replace(cfg.train, split=split.name), task=FeatureTask(fs), split=split, store=path,
        fingerprint=fs.fingerprint,
        inputs={"features_store": str(path), "features_fingerprint": fs.fingerprint,
                "features_lineage": fs.attrs.get("lineage")},
        describe=f"head `{cfg.train.head}` on `{path}` (backbone {fs.attrs.get('backbone')}, "
                 f"{_weights_word(fs.attrs) if pretrained else 'RANDOM'} weights{' ' + source if pretrained and source else ''})",
        extra={"features": str(path), "features_fingerprint": fs.fingerprint, "dataset": fs.attrs.get("dataset"),
               "backbone": fs.attrs.get("backbone"), "pretrained": pretrained, "weights": source},
        card=model_card(fs), failed=tuple(fs.failed()), warnings=tuple(runner.warnings_for(split, fs)))


def train_head(cfg: HeadRunConfig, on_epoch: Callable[[dict], None] | None = None,
               stop_after: int | None = None) -> runner.RunResult:
    return runner.execute(job(cfg), cfg.out, on_epoch, stop_after, cfg.tracker)


# ---- reading a head run back (trainers.training.tasks) -------------------------------------------------------

def open_task(path: Path, cfg: HeadTrainConfig, run_dir: Path) -> FeatureTask:
    fs = views.load(path)
    check_head_fits(cfg, fs.dim, len(fs.classes), fs.frames, loop.resolve_device(cfg.device),
                    f"{Path(run_dir) / 'config.json'}: ")
    return FeatureTask(fs)


def weights_argument(card: dict) -> str:
    """The --weights value that reproduces the recorded backbone weights."""
    w = card["weights"]
    return {"imagenet": "imagenet", "none": "none"}.get(w["kind"], w["source"])


def _encoder_and_head(run_dir: Path, cfg: HeadTrainConfig, card: dict, device: torch.device):
    """The run's head (best.pt) and the recorded backbone, checked to be the one the features came from."""
    from pipeline.stages.features import EncoderConfig, make_encoder

    check_head_fits(cfg, card["dim"], len(card["classes"]), card["frames"], device,
                    f"{Path(run_dir) / 'config.json'}: ")
    head = loop.load_best(heads.build(cfg.head, card["dim"], len(card["classes"]), card["frames"], cfg.head_options),
                          Path(run_dir), device)  # the run's own files first, then the (slower) backbone
    enc = make_encoder(EncoderConfig(backbone=card["backbone"], weights=weights_argument(card), device=device.type,
                                     resize=card.get("resize", "weights"), policy=backbones.policy_of(card)))
    recorded = card["weights"].get("sha256")
    if recorded and enc.weights.sha256 != recorded:
        raise backbones.WeightsError(f"the {card['backbone']} weights found ({enc.weights.source}, sha256 "
                                     f"{(enc.weights.sha256 or '')[:12]}) are not the ones the features were made "
                                     f"with (sha256 {recorded[:12]})")
    return enc, head


def scorer(run_dir: Path, cfg: HeadTrainConfig, card: dict, device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """uint8 clips (K, T, H, W, 3) -> (K, C) logits: the recorded backbone, then the head."""
    enc, head = _encoder_and_head(run_dir, cfg, card, device)

    def encode_and_score(frames: np.ndarray) -> torch.Tensor:
        feats = enc.encode_clips(frames)  # (K, T', D): a vector per frame, or per temporal token of a video backbone
        return head(torch.from_numpy(feats.astype(np.float32)).to(device))
    return encode_and_score


def chain(run_dir: Path, cfg: HeadTrainConfig, card: dict, device: torch.device) -> Chain:
    """The backbone and the head as one differentiable chain of the stored frames: the recorded
    input policy's resize and centre crop cut the input (to_input), its normalisation, the backbone per frame,
    float16 rounding as the store holds features, the head."""
    enc, head = _encoder_and_head(run_dir, cfg, card, device)
    pre = enc.preprocess
    mean = (pre.mean.flatten() / 255).tolist()
    std = (1 / (pre.inv_std.flatten() * 255)).tolist()
    clip = backbones.get(card["backbone"]).kind == "clip"
    if clip:   # a video backbone: the clip's frames taken, its tokens (a (T', H', W') grid), mean over space
        from pipeline.stages.video_backbones import ClipFeatures

        norm = Normalised(ClipFeatures(enc.net, enc.shape.frames_per_clip), mean, std, dims=5)
    else:
        norm = Normalised(enc.model, mean, std, dims=4)
    with torch.no_grad():  # predict's own constants, bit for bit (rebuilt from lists they are 1 ulp off)
        norm.mean.copy_(pre.mean.reshape(norm.mean.shape))
        norm.inv_std.copy_(pre.inv_std.reshape(norm.inv_std.shape))
    encode = nn.Sequential(norm if clip else PerFrame(norm), Float16Rounded())

    def to_input(frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
        if pre.resize:
            x = pre.cut(x)   # the policy's resize and centre crop, as the features were made
        return x.permute(1, 0, 2, 3).unsqueeze(0).float().to(device)

    def window(h: int, w: int) -> tuple[float, float, float, float]:
        if not pre.resize:
            return 0.0, 0.0, float(h), float(w)
        return input_policy.input_geometry(pre.policy, h, w).window   # the one geometry, export's too

    encode, head = encode.to(device).eval(), head.eval()
    return Chain(Sequential2(encode, head), to_input, window, list(card["classes"]), "head", encode, head,
                 enc.spread if clip else None)


KIND = tasks.TaskKind(name="head", config=HeadTrainConfig, store="features",
                      inputs=("features_store", "features_fingerprint"),
                      card={"backbone": str, "weights": dict, "classes": list, "frames": int, "dim": int},
                      open=open_task, scorer=scorer, chain=chain)
