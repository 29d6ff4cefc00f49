"""`har predict`: any video file -> top-k classes, through the run's own chain.

The run records what made its input (the recipe; for a head also the backbone, its weights with
sha256 and resize; for a video model its centre crop), so a video is decoded and sampled exactly
as the store's recipe did (clean view, every clip), encoded by the same backbone and scored by the
head, or cropped and scored by the video model; clip probabilities are averaged.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipeline import backbones, extract, video
from pipeline.features import Encoder
from trainers import heads, loop, rundir, runs


@dataclass
class Predictor:
    """decode + sample as the store did -> `score` (K clips, T, H, W, 3) uint8 -> (K, C) logits."""
    run_dir: Path
    recipe: extract.Recipe
    score: Callable[[np.ndarray], torch.Tensor]
    classes: list[str]
    device: torch.device
    config: loop.LoopConfig

    def __call__(self, path: Path, top: int = 5) -> dict:
        """{"video", "clips", "top": [{"class", "probability"}...]} or {"video", "error"} for a bad file."""
        try:
            samples = extract.extract_video(Path(path), Path(path).name, self.recipe)
        except video.VideoError as e:
            return {"video": str(path), "error": str(e)}
        with torch.inference_mode(), loop.autocast(self.config, self.device):
            logits = self.score(samples.frames)
        probs = torch.softmax(logits.float(), dim=1).mean(0).cpu().numpy()
        order = np.argsort(-probs, kind="stable")[:top]
        return {"video": str(path), "clips": int(len(samples.frames)),
                "top": [{"class": self.classes[i], "probability": float(probs[i])} for i in order]}


def weights_argument(card: dict) -> str:
    """The --weights value that reproduces the recorded backbone weights."""
    w = card["weights"]
    return {"imagenet": "imagenet", "none": "none"}.get(w["kind"], w["source"])


# what a model card holds, besides the recipe: key -> allowed type, for a head run and a video-model run
CARD_HEAD = {"backbone": str, "weights": dict, "classes": list, "frames": int, "dim": int}
CARD_MODEL = {"model": str, "classes": list, "crop": int}


def check_card(card: dict, path: Path) -> extract.Recipe:
    """The recipe of a run's model card (lineage.json's "predict"), every other entry checked; RunError
    naming the file and the key when one is missing or of the wrong kind."""
    def bad(key: str, why: str) -> rundir.RunError:
        return rundir.RunError(f"{path}: predict.{key} {why}; {runs.RUN_REMEDY}")

    for key, kind in (CARD_MODEL if "model" in card else CARD_HEAD).items():
        value = card.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise bad(key, f"is {value!r:.60}; allowed: {'a whole number >= 1' if kind is int else kind.__name__}")
    classes = card["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise bad("classes", f"is {classes!r:.60}; allowed: a list of 2 or more class names")
    if "weights" in card and not (card["weights"].get("kind") in ("imagenet", "none")
                                  or isinstance(card["weights"].get("source"), str)):
        raise bad("weights", "names no weights (kind imagenet or none, or a source)")
    if not isinstance(card.get("recipe"), dict):
        raise bad("recipe", "is missing or not an object")
    try:
        recipe = replace(extract.Recipe(**card["recipe"]), views=0)
        recipe.validate()
    except (TypeError, ValueError) as e:
        raise bad("recipe", f"is not a recipe ({e})") from None
    return recipe


def load(run_dir: Path, device: str = "auto") -> Predictor:
    cfg, lin = runs.load_run(run_dir)
    card = lin.get("predict")
    if card is None:
        raise ValueError(f"{run_dir} was trained by an older har without a model card; train it again")
    recipe = check_card(card, Path(run_dir) / "lineage.json")
    if card.get("model", getattr(cfg, "model", None)) != getattr(cfg, "model", None):
        raise rundir.RunError(f"{Path(run_dir) / 'lineage.json'}: predict.model {card['model']!r} is not the model of "
                              f"config.json ({getattr(cfg, 'model', 'a head')!r}); {runs.RUN_REMEDY}")
    dev = loop.resolve_device(device if device != "auto" else cfg.device)
    if "model" in card:  # a video model: crop the centre of every clip and score it
        from trainers import clips, models3d

        model = loop.load_best(models3d.build(card["model"], len(card["classes"])), Path(run_dir), dev)

        def score(frames: np.ndarray) -> torch.Tensor:
            x = clips.centre_crops(torch.from_numpy(frames).to(dev), card["crop"])[0]
            return model(x)
        return Predictor(Path(run_dir), recipe, score, list(card["classes"]), dev, cfg)
    runs.check_head_fits(cfg, card["dim"], len(card["classes"]), card["frames"], dev,
                         f"{Path(run_dir) / 'config.json'}: ")
    head = loop.load_best(heads.build(cfg.head, card["dim"], len(card["classes"]), card["frames"], cfg.head_options),
                          Path(run_dir), dev)  # the run's own files first, then the (slower) backbone
    enc = Encoder(card["backbone"], weights_argument(card), dev.type, "fp32", 256, False, card.get("resize", "weights"))
    recorded = card["weights"].get("sha256")
    if recorded and enc.weights.sha256 != recorded:
        raise backbones.WeightsError(f"the {card['backbone']} weights found ({enc.weights.source}, sha256 "
                                     f"{(enc.weights.sha256 or '')[:12]}) are not the ones the features were made "
                                     f"with (sha256 {recorded[:12]})")

    def encode_and_score(frames: np.ndarray) -> torch.Tensor:
        k, t = frames.shape[:2]
        feats = enc.encode(frames.reshape(k * t, *frames.shape[2:]))
        return head(torch.from_numpy(feats.astype(np.float32).reshape(k, t, -1)).to(dev))
    return Predictor(Path(run_dir), recipe, encode_and_score, list(card["classes"]), dev, cfg)
