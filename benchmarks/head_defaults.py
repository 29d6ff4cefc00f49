"""Choosing `har train-head`'s defaults: training recipes x checkpoint-selection rules, scored on
test folds the selection never sees.

    .venv/bin/python benchmarks/head_defaults.py --features F.zarr [F2.zarr ...] [--folds logo|groups]
        [--heads mean lstm attention] [--seeds 0] [--recipes current demo] [--json out.json]
    .venv/bin/python benchmarks/head_defaults.py --summarize out.json [more.json ...] [--rules ...]

Each (store, fold, head, seed, recipe) is trained once by har's own loop (`trainers.training.loop.fit`, the
run's real config, no early stopping: patience = epochs); after every epoch the weights it just
saved (last.pt) are scored on the fold's test videos as `har evaluate` scores them. The selection
rules are then applied to that curve offline, each seeing only what har sees while training
(val accuracy and loss per epoch): so one training scores every rule, early stopping included
(a rule with patience P stops where P epochs passed without a val gain and picks among the
epochs before).

Folds: `logo` = every leave-one-group-out fold of the store (validation carved from the
training groups, as `har cv`); `groups` = the store's group-disjoint split. Prints one JSON line
(and writes it to --json): per rule and head, the mean test top-1 over stores, folds and seeds,
and its gap to `mean` under the same rule.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# training recipes (LoopConfig fields); each trains to its last epoch, rules choose afterwards
RECIPES = {
    "current": dict(epochs=30, batch_size=32, scheduler="plateau"),           # har train-head's defaults before
    "demo": dict(epochs=40, batch_size=16, scheduler="cosine"),               # har demo's recipe before
    "cosine32": dict(epochs=40, batch_size=32, scheduler="cosine"),
    "long": dict(epochs=60, batch_size=16, scheduler="cosine"),
}


def smoothed(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over the last w epochs (fewer at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - w)
    return (c[i] - c[lo]) / (i - lo)


def pick(val_acc: np.ndarray, val_loss: np.ndarray, rule: str) -> int:
    """The epoch index (0-based) a selection rule keeps, from val accuracy and loss per epoch.

    best[-pP]          best val accuracy (ties: lower val loss); early stopping after P epochs without
                       a gain (none without -p)
    smoothW[-pP][-mM]  val accuracy averaged over the last W epochs (loss likewise for ties), from
                       epoch M on (1-based); early stopping on the smoothed value
    loss               lowest val loss
    last               the last epoch"""
    n = len(val_acc)
    if rule == "last":
        return n - 1
    if rule == "loss":
        return int(np.argmin(val_loss))
    parts = rule.split("-")
    patience = next((int(p[1:]) for p in parts[1:] if p.startswith("p")), n)
    start = next((int(p[1:]) - 1 for p in parts[1:] if p.startswith("m")), 0)
    if parts[0] == "best":
        acc, loss = val_acc, val_loss
    elif parts[0].startswith("smooth"):
        w = int(parts[0][len("smooth"):])
        acc, loss = smoothed(val_acc, w), smoothed(val_loss, w)
    else:
        raise ValueError(rule)
    best, best_acc, best_loss, stale = min(start, n - 1), -1.0, np.inf, 0
    for e in range(start, n):
        if acc[e] > best_acc or (acc[e] == best_acc and loss[e] < best_loss):
            stale = 0 if acc[e] > best_acc + 1e-3 else stale + 1
            best, best_acc, best_loss = e, acc[e], loss[e]
        else:
            stale += 1
        if stale >= patience:
            break
    return best


RULES = ("best-p10", "best", "smooth3", "smooth5", "smooth3-m3", "smooth5-m5", "smooth8-m8", "smooth5-m10",
         "smooth5-m5-p10", "best-m20", "loss", "last")


def parse_set(items: list[str]) -> dict:
    """["label_smoothing=0.1", "dropout=0.3"] -> HeadTrainConfig / HeadConfig fields (values as JSON, else text)."""
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def curve(features: Path, split_name: str, head: str, seed: int, recipe: str, settings: dict | None = None) -> dict:
    """Train once; val and test accuracy (and val loss) after every epoch."""
    import torch

    from trainers.data import views
    from trainers.training import head_task, loop, losses
    from trainers.training.config import HeadConfig, HeadTrainConfig

    settings = dict(settings or {})
    head_fields = {k: settings.pop(k) for k in list(settings) if k in HeadConfig.__dataclass_fields__}
    cfg = HeadTrainConfig(head=head, seed=seed, split=split_name, head_options=HeadConfig(**head_fields),
                      **{**RECIPES[recipe], **settings}).resolved()
    cfg = replace(cfg, patience=cfg.epochs, device="cpu")
    fs = views.load(features)
    split = views.make_split(fs, split_name)
    task = head_task.FeatureTask(fs)
    probe = task.build(cfg, split.train)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)

        def on_epoch(row):
            ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
            probe.load_state_dict(ck["model"])
            probe.eval()
            _, test_acc = losses.loss_and_accuracy(task.probabilities(probe, split.test, torch.device("cpu"), cfg),
                                                 task.labels[split.test], None)
            rows.append({"val_acc": row["val_acc"], "val_loss": row["val_loss"], "test_acc": float(test_acc)})

        loop.fit(cfg, task, split, run_dir, "study", on_epoch=on_epoch)
    return {"rows": rows, "val_videos": int(len(split.val)), "test_videos": int(len(split.test))}


def summarize(runs: list[dict], rules) -> dict:
    """recipe -> rule -> store -> head -> {test: mean test top-1 over folds and seeds, gap: test - mean
    head's under the same rule, regret: mean (best epoch's test - the chosen epoch's)}, from the
    curves (so any rule can be scored again from a saved JSON)."""
    cells: dict = {}
    for r in runs:
        c = r["curve"]
        va, vl, te = (np.asarray(c[k]) for k in ("val_acc", "val_loss", "test_acc"))
        for rule in rules:
            e = pick(va, vl, rule)
            cells.setdefault((r["recipe"], rule, r["store"], r["head"]), []).append((te[e], te.max() - te[e]))
    table: dict = {}
    for (recipe, rule, st, head), v in cells.items():
        v = np.asarray(v)
        table.setdefault(recipe, {}).setdefault(rule, {}).setdefault(st, {})[head] = {
            "test": round(float(v[:, 0].mean()), 4), "regret": round(float(v[:, 1].mean()), 4), "n": len(v)}
    for rules_ in table.values():
        for stores in rules_.values():
            for heads in stores.values():
                base = heads.get("mean", {}).get("test")
                for h in heads.values():
                    h["gap"] = None if base is None else round(h["test"] - base, 4)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=Path, nargs="+")
    ap.add_argument("--summarize", type=Path, nargs="+", help="saved result JSONs: score --rules on their curves, print the table")
    ap.add_argument("--folds", default="logo", choices=("logo", "groups"))
    ap.add_argument("--heads", nargs="+", default=["mean", "lstm", "attention"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--recipes", nargs="+", default=["current", "demo"], choices=tuple(RECIPES))
    ap.add_argument("--rules", nargs="+", default=list(RULES))
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="training settings on top of the recipe (HeadTrainConfig or HeadConfig fields)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (two studies side by side: 1 each)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)

    if a.summarize:
        runs = [r for f in a.summarize for r in json.loads(f.read_text())["runs"]]
        print(json.dumps({"bench": "head_defaults", "from": [str(f) for f in a.summarize],
                          "table": summarize(runs, a.rules)}))
        return 0
    if not a.features:
        ap.error("give --features (or --summarize)")
    from trainers.data import views

    t0 = time.perf_counter()
    runs = []
    for features in a.features:
        fs = views.open_view(features.absolute(), "features")
        names = sorted(n for n in fs.splits if n.startswith("logo")) if a.folds == "logo" else ["groups"]
        for recipe in a.recipes:
            for head in a.heads:
                for seed in a.seeds:
                    for name in names:
                        c = curve(features.absolute(), name, head, seed, recipe, parse_set(a.set))
                        va = np.array([r["val_acc"] for r in c["rows"]])
                        vl = np.array([r["val_loss"] for r in c["rows"]])
                        te = np.array([r["test_acc"] for r in c["rows"]])
                        picked = {rule: pick(va, vl, rule) for rule in a.rules}
                        runs.append({"store": str(features), "fold": name, "head": head, "seed": seed, "recipe": recipe,
                                     "test": {r: round(float(te[e]), 4) for r, e in picked.items()},
                                     "epoch": {r: int(e) + 1 for r, e in picked.items()},
                                     "oracle": round(float(te.max()), 4), "val_videos": c["val_videos"],
                                     "curve": {"val_acc": va.round(4).tolist(), "val_loss": vl.round(4).tolist(),
                                               "test_acc": te.round(4).tolist()}})
                        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    out = {"bench": "head_defaults", "features": [str(f) for f in a.features], "folds": a.folds, "seeds": a.seeds,
           "set": a.set,
           "table": summarize(runs, a.rules), "runs": runs, "seconds": round(time.perf_counter() - t0, 1)}
    line = json.dumps(out)
    print(line)
    if a.json:
        a.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
