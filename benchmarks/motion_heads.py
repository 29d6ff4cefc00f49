"""Sequence heads on the motion-pairs set (benchmarks/motion_pairs.py): do they see time?

    .venv/bin/python benchmarks/motion_heads.py [--work /tmp/har-motion] [--groups 12] [--clips 3]
        [--heads mean lstm attention gru] [--seeds 0 1 2] [--epochs 40] [--views 0 [--no-hflip]] [--extra "--hidden 128"]
        [--backbone resnet18 --weights none --resize stored] [--defaults] [--json out.json]

The motion-pairs set has classes in time-reversed pairs (Expand/Contract, SpinCW/SpinCCW,
Rise/Fall, FadeIn/FadeOut by default) over appearance groups, so the twins of a pair hold the same
frames in distribution: a bag of frames (`mean`) can learn the verb but not its direction, and the
rest of the accuracy has to come from the order of the frames. The chain is har's own, through
its CLI (the `har` next to sys.executable), each step skipped when its output is already there:

    1. python benchmarks/motion_pairs.py WORK/data   (regenerated only when pairs.json's settings differ)
    2. har extract folder --root WORK/data --out WORK/frames.zarr --recipe default --views 0
       (uniform 16 frames at 112 px, clean view only)
    3. har features --store WORK/frames.zarr --backbone resnet18 --weights none --resize stored
       --out WORK/feats-resnet18-none.zarr      (random-init resnet18: no ImageNet prior to lean on;
       --backbone efficientnet_lite0 --weights imagenet --resize weights: real ImageNet features)
    4. for every head and seed: har train-head HEAD --features ... --seed S --epochs 40 --batch-size 16
       --scheduler cosine --patience 40 --tracker none --out WORK/runs/HEAD-sS[-xHASH] [--extra ARGS]
       (--defaults: none of --epochs ... --patience, i.e. har train-head's defaults)
       on the store's default split (group-disjoint: test groups are looks never trained on).

`--extra "ARGS"` goes to every train-head call (to measure a new head option later); the run
folders then get a suffix from a hash of ARGS so runs with other options are never mixed up.
A finished run folder with the same fingerprint is reused by har (it trains nothing): pass
`--retrain` to delete the run folders first when the training wall time matters.

Reported per head (mean and std over the seeds): test top-1, val top-1, train accuracy of the last
epoch, the gap of test top-1 to `mean`, and from the test confusion matrix the verb accuracy
(prediction in the right pair) and the within-pair accuracy (right / (right + twin): 0.5 is a
coin flip between the twins); the wall time of every step. HAR_HOME defaults to WORK/home so that
nothing is written to the user's har home. Prints one JSON line at the end (and writes it to
--json FILE).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import motion_pairs  # noqa: E402


def har_exe() -> str:
    exe = Path(sys.executable).parent / "har"
    if not exe.exists():
        sys.exit(f"no har next to {sys.executable}: run this with the venv's python (.venv/bin/python)")
    return str(exe)


def log(msg: str) -> None:
    print(f"[motion_heads {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], logfile: Path, env: dict, ok_codes: tuple[int, ...] = (0,)) -> float:
    """Run cmd with its output into logfile; the wall seconds; exit with the log's tail on failure."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(" ".join(shlex.quote(c) for c in cmd))
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - t0
    if rc not in ok_codes:
        tail = logfile.read_text(errors="replace")[-4000:]
        sys.exit(f"exit status {rc} after {seconds:.0f} s: {' '.join(cmd)}\n--- {logfile} (tail) ---\n{tail}")
    if rc != 0:
        log(f"exit status {rc} (accepted; see {logfile})")
    return seconds


def pair_metrics(confusion: list[list[int]], classes: list[str], pairs: list[list[str]]) -> dict:
    """From a confusion matrix (rows true, columns predicted): verb accuracy (right pair), the share
    predicted as the twin, and the within-pair accuracy right / (right + twin)."""
    cm = np.asarray(confusion, float)
    idx = {c: i for i, c in enumerate(classes)}
    right = twin = verb = total = 0.0
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            i, j = idx[x], idx[y]
            right += cm[i, i]
            twin += cm[i, j]
            total += cm[i].sum()
    verb = right + twin
    return {"verb_top1": verb / total if total else float("nan"),
            "twin_rate": twin / total if total else float("nan"),
            "within_pair_top1": right / verb if verb else float("nan")}


def stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], float)
    if not len(v):
        return {"mean": None, "std": None}
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4)}


def read_classes(run_dir: Path) -> list[str]:
    """Class names in the confusion matrix's order (confusion.csv's first column)."""
    import csv

    with open(run_dir / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    return [r[0] for r in rows[1:] if r]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/har-motion"), help="work folder (default /tmp/har-motion)")
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--data-seed", type=int, default=0, help="motion_pairs --seed")
    ap.add_argument("--size", type=motion_pairs.parse_wh, default=(160, 120), help="video size WxH")
    ap.add_argument("--verbs", default=",".join(motion_pairs.DEFAULT_VERBS))
    ap.add_argument("--same-draw", action="store_true", help="motion_pairs --same-draw")
    ap.add_argument("--heads", nargs="+", default=["mean", "lstm", "attention", "gru"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patience", type=int, default=40)
    ap.add_argument("--scheduler", default="cosine")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--resize", default="stored", help="har features --resize: stored (112 px as stored) | weights "
                    "(the weights' input policy, e.g. Lite0's 224 px)")
    ap.add_argument("--defaults", action="store_true", help="train with har train-head's defaults: no --epochs, "
                    "--batch-size, --scheduler, --patience on the command line")
    ap.add_argument("--views", type=int, default=0, help="augmented views per video in the frame store (har extract "
                    "--views; training draws one per epoch): appearance augmentation across views")
    ap.add_argument("--no-hflip", action="store_true", help="views without the horizontal mirror (har extract "
                    "--no-hflip): a mirrored SpinCW is a SpinCCW")
    ap.add_argument("--extra", default="", help="extra arguments for every har train-head call, one string")
    ap.add_argument("--retrain", action="store_true", help="delete this configuration's run folders first")
    ap.add_argument("--json", type=Path, help="also write the result line to this file")
    a = ap.parse_args(argv)

    har = har_exe()
    work = a.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HAR_HOME", str(work / "home"))
    verbs = [v.strip() for v in a.verbs.split(",") if v.strip()]
    walls: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. the dataset
    data = work / "data"
    want = motion_pairs.settings(a.groups, a.clips, a.data_seed, a.size, verbs, a.same_draw)
    have = None
    if (data / "pairs.json").exists():
        have = json.loads((data / "pairs.json").read_text()).get("settings")
    t0 = time.perf_counter()
    if have != want:
        log(f"generating the motion-pairs set in {data}")
        motion_pairs.generate(data, a.groups, a.clips, a.data_seed, a.size, verbs, a.same_draw, quiet=True)
    else:
        log(f"{data} already holds the set with these settings")
    walls["generate"] = round(time.perf_counter() - t0, 1)
    info = json.loads((data / "pairs.json").read_text())

    # 2. frames, 3. features
    if a.no_hflip and not a.views:
        ap.error("--no-hflip needs --views N (it changes the augmented views only)")
    # stores with augmented views live beside the clean-only ones
    tag = (f"-v{a.views}" if a.views else "") + ("-nohflip" if a.no_hflip else "")
    frames = work / f"frames{tag}.zarr"
    walls["extract"] = round(run([har, "extract", "folder", "--root", str(data), "--out", str(frames),
                                  "--recipe", "default", "--views", str(a.views)] + ["--no-hflip"] * a.no_hflip,
                                 work / "logs" / "extract.log", env, ok_codes=(0, 3)), 1)
    feats = work / f"feats-{a.backbone}-{Path(a.weights).name}{tag}{'' if a.resize == 'stored' else '-' + a.resize}.zarr"
    walls["features"] = round(run([har, "features", "--store", str(frames), "--backbone", a.backbone,
                                   "--weights", a.weights, "--resize", a.resize, "--out", str(feats)],
                                  work / "logs" / "features.log", env), 1)

    # 4. heads x seeds
    extra = shlex.split(a.extra)
    suffix = ("-x" + hashlib.sha1(a.extra.encode()).hexdigest()[:8] if extra else "") + tag
    if a.backbone != "resnet18" or a.weights != "none" or a.resize != "stored":
        suffix += f"-{a.backbone}-{Path(a.weights).name}-{a.resize}"
    recipe = [] if a.defaults else ["--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
                                    "--scheduler", a.scheduler, "--patience", str(a.patience)]
    if a.defaults:
        suffix += "-defaults"
    rows, per_run = [], []
    for head in a.heads:
        tops, vals, trains, verb, within, twin, secs, train_secs, best_epochs = ([] for _ in range(9))
        for seed in a.seeds:
            out = work / "runs" / f"{head}-s{seed}{suffix}"
            if a.retrain and out.exists():
                shutil.rmtree(out)
            cmd = [har, "train-head", head, "--features", str(feats), "--seed", str(seed), *recipe,
                   "--tracker", "none", "--out", str(out), *extra]
            s = run(cmd, work / "logs" / f"train-{head}-s{seed}{suffix}.log", env)
            m = json.loads((out / "metrics.json").read_text())
            hist = json.loads((out / "history.json").read_text()) if (out / "history.json").exists() else []
            pm = pair_metrics(m["test"]["confusion"], read_classes(out), info["pairs"]) \
                if "confusion" in m["test"] else {}
            r = {"head": head, "seed": seed, "test_top1": m["test"]["top1"], "val_top1": m["val"]["top1"],
                 "train_acc_last": hist[-1].get("train_acc") if hist else None,
                 "best_epoch": m.get("best_epoch"), "epochs_run": m.get("epochs_run"),
                 "test_videos": m["test"].get("videos"), "wall_s": round(s, 1),
                 "train_s": round(m.get("train_seconds", float("nan")), 1), **{k: round(v, 4) for k, v in pm.items()}}
            if "reversed_pairs_top1" in m["test"]:
                r["reversed_pairs_top1"] = m["test"]["reversed_pairs_top1"]
            per_run.append(r)
            log(json.dumps(r))
            tops.append(r["test_top1"]); vals.append(r["val_top1"]); trains.append(r["train_acc_last"])
            verb.append(pm.get("verb_top1")); within.append(pm.get("within_pair_top1")); twin.append(pm.get("twin_rate"))
            secs.append(s); train_secs.append(m.get("train_seconds")); best_epochs.append(m.get("best_epoch"))
        rows.append({"head": head, "test_top1": stats(tops), "test_top1_per_seed": [round(v, 4) for v in tops],
                     "val_top1": stats(vals), "train_acc_last": stats(trains), "verb_top1": stats(verb),
                     "within_pair_top1": stats(within), "twin_rate": stats(twin), "best_epoch": best_epochs,
                     "wall_s": round(sum(secs), 1), "train_s": round(float(np.nansum(np.asarray(train_secs, float))), 1)})
        walls[f"train_{head}"] = round(sum(secs), 1)
    base = next((r["test_top1"]["mean"] for r in rows if r["head"] == "mean"), None)
    for r in rows:
        r["gap_to_mean"] = round(r["test_top1"]["mean"] - base, 4) if base is not None else None
    walls["total"] = round(time.perf_counter() - t_all, 1)

    split = json.loads((work / "runs" / f"{a.heads[0]}-s{a.seeds[0]}{suffix}" / "metrics.json").read_text())["split"]
    try:
        commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:
        commit = None
    result = {"bench": "motion_heads", "dataset": {**info["settings"], "videos": info["videos"],
                                                     "classes": len(info["classes"]), "chance": info["chance"],
                                                     "pairs": info["pairs"]},
              "split": split, "backbone": a.backbone, "weights": a.weights, "resize": a.resize,
              "recipe": "har train-head defaults" if a.defaults else {"epochs": a.epochs, "batch_size": a.batch_size,
                                                                   "scheduler": a.scheduler, "patience": a.patience},
              "extra": a.extra,
              "views": a.views, "hflip": not a.no_hflip,
              "seeds": a.seeds, "heads": rows, "runs": per_run, "wall_s": walls, "commit": commit,
              "cpus": os.cpu_count(), "machine": platform.machine()}
    line = json.dumps(result)
    print(line, flush=True)
    if a.json:
        a.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
