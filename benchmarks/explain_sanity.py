"""Sanity checks of `har explain`, the literature's, measured on synthetic videos with known masks.

    .venv/bin/python benchmarks/explain_sanity.py [--groups 8] [--seeds 0 1 2] [--work DIR]
        [--backbone resnet18 --weights none --resize stored]

Per seed, on `har synth --classes 2 --masks` (Grow / Shrink: the same frames in opposite order)
at 64 px, 8 frames:
- pointing game (Zhang et al. 2018): video models (small-c3d, small-cnn-lstm) are trained from
  the frame store; on every video, the share of frames whose Grad-CAM (and Grad-CAM++) maximum
  falls inside the object's box (the boxes of masks.json mapped through the clean view), strictly
  and within the game's 15 source pixels, on the held-out test videos and on all;
- model randomisation (Adebayo et al. 2018): Spearman rank correlation between each method's maps
  from the trained model and from the same model re-initialised (low = the map depends on what
  the model learnt; guided backpropagation is known to fail this);
- attribution over time: an LSTM head on features of the same videos (random-init ResNet-18 at
  the stored size by default; `--backbone efficientnet_lite0 --weights imagenet --resize weights`
  for real ImageNet features); per video, the change of the target probability when the 2 frames
  of highest |integrated gradients| swap places, against the 2 of lowest; and the pointing game
  and model randomisation of Grad-CAM through the head's backbone.
Prints one JSON line per seed and a summary line (mean and std over seeds).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def har(*args, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


MODELS = ("small-c3d", "small-cnn-lstm")


def measure(work: Path, groups: int, seed: int, backbone: str = "resnet18", weights: str = "none",
            resize: str = "stored") -> dict:
    from pipeline.datasets import synth
    from trainers.data import views
    from trainers.inference import explain, sanity

    work.mkdir(parents=True, exist_ok=True)
    har("synth", "syn", "--classes", 2, "--groups", groups, "--clips", 2, "--frames", 24, "--seed", seed, "--masks",
        cwd=work)
    har("extract", "synthetic", "--root", "syn", "--frames", 8, "--size", 64, "--out", "f.zarr", cwd=work)
    for model in MODELS:
        har("train-e2e", model, "--frames", "f.zarr", "--epochs", 15, "--seed", seed, "--out", model, "--workers", 2,
            cwd=work)
    har("features", "--store", "f.zarr", "--backbone", backbone, "--weights", weights, "--resize", resize,
        "--out", "feat.zarr", cwd=work)
    har("train-head", "lstm", "--features", "feat.zarr", "--epochs", 30, "--seed", seed, "--out", "head", cwd=work)
    boxes = json.loads((work / "syn" / synth.MASKS).read_text())
    metrics = {p: json.loads((work / p / "metrics.json").read_text())["test"]["top1"] for p in (*MODELS, "head")}
    out: dict = {"seed": seed, "test_top1": metrics}
    view = views.open_view(work / "f.zarr", "frames")
    test = set(int(i) for i in views.make_split(view, "groups").test)
    tol = 15 * 64 / 240  # the game's 15 px of the 240-px source, in stored pixels
    for model in MODELS:
        ex = explain.load(work / model, "cpu")
        rand = explain.Explainer(ex.run_dir, sanity.randomised(ex.chain), ex.recipe, ex.device)
        hits: dict[str, list] = {}
        rho: dict[str, list] = {}
        for i, rel in enumerate(view.videos):
            for method in ("gradcam", "gradcam++", "guided-backprop", "activations"):
                e = ex(work / "syn" / rel, method)
                if method.startswith("gradcam"):
                    stored = [sanity.boxes_on_stored(boxes[rel][k], (240, 320), e.frames.shape[1:3])
                              for k in e.frame_idx]
                    for name, t in (("strict", 0.0), ("15px", tol)):
                        h = sanity.pointing_hits(e.maps, stored, tolerance=t)
                        hits.setdefault(f"{method} {name} all", []).extend(h)
                        if i in test:
                            hits.setdefault(f"{method} {name} test", []).extend(h)
                target = ex.chain.classes.index(e.target)
                rho.setdefault(method, []).append(sanity.rank_correlation(e.maps, rand.explain_clip(e.frames, target,
                                                                                                     method)[0]))
        out[model] = {"pointing": {k: round(float(np.mean(v)), 4) for k, v in hits.items()},
                      "frames": len(hits["gradcam strict all"]),
                      "randomisation_rho": {k: round(float(np.mean(v)), 4) for k, v in rho.items()}}

    head = explain.load(work / "head", "cpu")
    rand = explain.Explainer(head.run_dir, sanity.randomised(head.chain), head.recipe, head.device)
    rng = np.random.default_rng(seed)
    top, low, hits, rho = [], [], [], []
    for rel in view.videos:
        e = head(work / "syn" / rel, "gradcam")
        stored = [sanity.boxes_on_stored(boxes[rel][k], (240, 320), e.frames.shape[1:3]) for k in e.frame_idx]
        hits.extend(sanity.pointing_hits(e.maps, stored, tolerance=tol))
        rho.append(sanity.rank_correlation(e.maps, rand.explain_clip(e.frames, head.chain.classes.index(e.target),
                                                                      "gradcam")[0]))
        order = np.argsort(-np.abs(e.importance), kind="stable")
        t = head.chain.classes.index(e.target)
        top.append(sanity.shuffle_change(head.chain, e.frames, t, order[:2], rng))
        low.append(sanity.shuffle_change(head.chain, e.frames, t, order[-2:], rng))
    out["shuffle_top2"] = float(np.mean(top))
    out["shuffle_low2"] = float(np.mean(low))
    out["head"] = {"backbone": backbone, "weights": weights, "resize": resize,
                   "pointing": {"gradcam 15px all": round(float(np.mean(hits)), 4)},
                   "randomisation_rho": {"gradcam": round(float(np.mean(rho)), 4)}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "har-explain-sanity")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--backbone", default="resnet18", help="the head's backbone")
    ap.add_argument("--weights", default="none", help="its weights (imagenet | none | PATH)")
    ap.add_argument("--resize", default="stored", help="har features --resize (weights: the weights' input policy)")
    a = ap.parse_args()
    rows = []
    for s in a.seeds:
        rows.append(measure(a.work / f"seed{s}", a.groups, s, a.backbone, a.weights, a.resize))
        print(json.dumps(rows[-1]), flush=True)

    def stat(get):
        v = np.array([get(r) for r in rows])
        return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4)}
    summary = {"test_top1": {k: stat(lambda r, k=k: r["test_top1"][k]) for k in rows[0]["test_top1"]},
               "shuffle_top2": stat(lambda r: r["shuffle_top2"]), "shuffle_low2": stat(lambda r: r["shuffle_low2"]),
               "head": {"pointing gradcam 15px all": stat(lambda r: r["head"]["pointing"]["gradcam 15px all"]),
                        "randomisation_rho gradcam": stat(lambda r: r["head"]["randomisation_rho"]["gradcam"])}}
    for m in MODELS:
        summary[m] = {"pointing": {k: stat(lambda r, k=k: r[m]["pointing"][k]) for k in rows[0][m]["pointing"]},
                      "randomisation_rho": {k: stat(lambda r, k=k: r[m]["randomisation_rho"][k])
                                            for k in rows[0][m]["randomisation_rho"]}}
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
