"""Does every video model learn? A short `har train-e2e` run of each model on the synthetic set.

    .venv/bin/python benchmarks/e2e_chance.py [--models r3d_18,c3d] [--epochs 8]

In one run: the synthetic dataset (`har synth`, 6 classes x 24 groups x 2 clips = 288 videos) is
extracted once into a small frame store (uniform 8 frames at 72x72, no views); then each model is
trained from the command line (`har train-e2e MODEL --frames STORE ...`, random init, random 64 px
crops, group split) for a few epochs and its test top-1 read from the run's metrics.json. Beside
it: chance (1 / classes) and the one-sided binomial p-value of getting at least that many test
videos right by guessing. Prints one JSON line per model as it finishes, then a summary line.
The figure is "does it learn at all in a short CPU run", not each model's best accuracy.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["small-cnn-lstm", "small-cnn-rnn", "convlstm", "late-fusion-e2e", "lrcn",
          "r3d_18", "r2plus1d_18", "mc3_18", "i3d", "nonlocal", "c3d"]
# C3D has no batch normalisation: from scratch it needs the smaller step of the original paper.
LR = {"c3d": 1e-4}


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p): the chance of k or more right answers by guessing."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def har(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "har-e2e-chance")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=72)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    a.work.mkdir(parents=True, exist_ok=True)
    os.environ["HAR_HOME"] = str(a.work / "home")
    data, store = a.work / "synthetic", a.work / f"frames-{a.frames}x{a.size}.zarr"
    if not data.exists():
        har("synth", str(data))
    har("extract", "synthetic", "--root", str(data), "--out", str(store),
        "--frames", str(a.frames), "--size", str(a.size), "--views", "0")

    rows = []
    for model in a.models.split(","):
        lr = LR.get(model, a.lr)
        run = a.work / "runs" / f"{model}-e{a.epochs}-lr{lr:g}-s{a.seed}"
        t0 = time.perf_counter()
        har("train-e2e", model, "--frames", str(store), "--out", str(run), "--epochs", str(a.epochs),
            "--lr", str(lr), "--batch-size", str(a.batch_size), "--crop", str(a.crop),
            "--scheduler", "cosine", "--patience", str(a.epochs), "--workers", str(a.workers),
            "--seed", str(a.seed))
        wall = time.perf_counter() - t0
        m = json.loads((run / "metrics.json").read_text())
        test = m["test"]
        n, classes = test["videos"], len(test["per_class"])
        right = round(test["top1"] * n)
        row = {"model": model, "lr": lr, "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
               "val_top1": round(m["best_val_acc"], 3), "test_top1": round(test["top1"], 3),
               "test_videos": n, "chance": round(1 / classes, 3),
               "p_by_chance": float(f"{binomial_tail(right, n, 1 / classes):.2g}"),
               "reversed_pairs_top1": test.get("reversed_pairs_top1"),
               "train_seconds": round(m["train_seconds"], 1), "wall_seconds": round(wall, 1),
               "precision": m["precision"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"summary": {r["model"]: r["test_top1"] for r in rows},
                      "all_beat_chance_p<0.01": all(r["p_by_chance"] < 0.01 for r in rows),
                      "store": f"uniform {a.frames} frames at {a.size}x{a.size}, crop {a.crop}",
                      "epochs": a.epochs, "batch_size": a.batch_size, "seed": a.seed}), flush=True)


if __name__ == "__main__":
    main()
