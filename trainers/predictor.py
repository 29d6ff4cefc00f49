"""A trained run as a predictor (`har predict`): any video file -> top-k classes, through the
run's own chain.

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

from pipeline import extract, video
from trainers import loop, rundir, runs, tasks


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


def check_card(card: dict, path: Path, task: tasks.TaskKind) -> extract.Recipe:
    """The recipe of a run's model card (lineage.json's "predict"), every other entry checked; RunError
    naming the file and the key when one is missing or of the wrong kind."""
    def bad(key: str, why: str) -> rundir.RunError:
        return rundir.RunError(f"{path}: predict.{key} {why}; {runs.RUN_REMEDY}")

    for key, kind in task.card.items():
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
    """The predictor of a finished run: its model card checked, its model (and for a head the
    recorded backbone) loaded on `device` (auto: the run's own device setting)."""
    cfg, lin, kind = runs.load_run(run_dir)
    card = lin.get("predict")
    if card is None:
        raise ValueError(f"{run_dir} was trained by an older har without a model card; train it again")
    recipe = check_card(card, Path(run_dir) / "lineage.json", kind)
    if card.get("model", getattr(cfg, "model", None)) != getattr(cfg, "model", None):
        raise rundir.RunError(f"{Path(run_dir) / 'lineage.json'}: predict.model {card['model']!r} is not the model of "
                              f"config.json ({getattr(cfg, 'model', 'a head')!r}); {runs.RUN_REMEDY}")
    dev = loop.resolve_device(device if device != "auto" else cfg.device)
    score = kind.scorer(Path(run_dir), cfg, card, dev)
    return Predictor(Path(run_dir), recipe, score, list(card["classes"]), dev, cfg)
