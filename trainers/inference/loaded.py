"""A finished run loaded for inference: the one prologue of `har predict`, `explain`, `export` and
`serve`. Its config, lineage and task kind (`runner.load_run`, every file checked), its model card
(lineage.json's "predict": what made the model's input) checked key by key, the recipe that
decodes and samples a video as the run's store did, and the device the run's model goes on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeline.decoding.recipe import Recipe
from trainers.runs import rundir, runner
from trainers.training import loop, tasks


@dataclass(frozen=True)
class LoadedRun:
    run_dir: Path
    config: loop.LoopConfig    # config.json: the run's training settings (its device among them)
    lineage: dict              # lineage.json, as runner.load_run read it
    kind: tasks.TaskKind       # the task kind that trained it (from the inputs its lineage names)
    card: dict                 # lineage.json's "predict", every key checked (`check_card`)
    recipe: Recipe             # the card's recipe, clean view only (views=0): how a video is read

    def device(self, requested: str = "auto") -> torch.device:
        """Where the model goes: `requested`, or with "auto" the run's own device setting."""
        return loop.resolve_device(requested if requested != "auto" else self.config.device)


def load(run_dir: Path, error: type[ValueError] = ValueError) -> LoadedRun:
    """The run at `run_dir` with its model card checked; `error` (a ValueError subclass, the
    caller's own) for a run trained before model cards, RunError for a damaged card."""
    cfg, lin, kind = runner.load_run(run_dir)
    card = lin.get("predict")
    if card is None:
        raise error(f"{run_dir} was trained by an older har without a model card; train it again")
    recipe = check_card(card, Path(run_dir) / "lineage.json", kind)
    return LoadedRun(Path(run_dir), cfg, lin, kind, card, recipe)


def check_card(card: dict, path: Path, task: tasks.TaskKind) -> Recipe:
    """The recipe of a run's model card (lineage.json's "predict"), every other entry checked; RunError
    naming the file and the key when one is missing or of the wrong kind."""
    def bad(key: str, why: str) -> rundir.RunError:
        return rundir.RunError(f"{path}: predict.{key} {why}; {runner.RUN_REMEDY}")

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
        recipe = replace(Recipe(**card["recipe"]), views=0)
        recipe.validate()
    except (TypeError, ValueError) as e:
        raise bad("recipe", f"is not a recipe ({e})") from None
    return recipe
