"""Heads on cached features: speed against end-to-end LRCN, and accuracy on the synthetic set.

    .venv/bin/python benchmarks/heads_bench.py --part speed      # 25 lstm epochs on UCF50-sized features
    .venv/bin/python benchmarks/heads_bench.py --part accuracy   # synthetic set: heads x splits

speed: the `lstm` head (hidden 256, batch 64, fp32 and bf16 autocast) trains 25 epochs through har's own loop (`loop.fit`, checkpoints
and validation included) on random UCF50-sized features (5,000 training + 700 validation videos x
16 x 2048 float16). In the same run, end-to-end LRCN (ResNet-152 + the same LSTM, forward and
backward from 16 frames of 224 px) trains a few steps; both are reported in videos/s and as a ratio.

accuracy: the demo's chain at a larger size (synthetic videos -> frames -> resnet18 features with
the weights available here) and every head on the group-disjoint split (mean and std over 3
training seeds) and the random split, trained on the augmented views (the default) and on the clean
view; test top-1 and the accuracy on the reversed-order class pairs. Prints one JSON line per part.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def speed(train_videos: int, val_videos: int, epochs: int, e2e_steps: int, e2e_batch: int, batch: int,
          precisions: list[str]) -> dict:
    import torch

    from trainers.training import config, head_task, loop
    from trainers.data import views
    from trainers.models import heads

    n, t, d, c = train_videos + val_videos, 16, 2048, 50
    rng = np.random.default_rng(0)
    fs = views.FeatureSet(path=Path("memory"), features=rng.standard_normal((n, 1, t, d), np.float32).astype(np.float16),
                         labels=rng.integers(0, c, n), groups=np.full(n, -1), ok=np.ones(n, bool),
                         clip_index=np.zeros((n, 1), np.int16), view_index=np.zeros((n, 1), np.int16),
                         videos=np.array([f"v{i}" for i in range(n)]), splits={},
                         attrs={"classes": [f"c{i}" for i in range(c)], "lineage": {"fingerprint": "bench"}})
    split = views.Split("bench", np.arange(train_videos), np.arange(train_videos, n), np.arange(train_videos, n), 0.0,
                       False)
    timings = {}
    for precision in precisions:
        cfg = head_task.HeadTrainConfig(head="lstm", head_options=config.HeadConfig(hidden=256), epochs=epochs,
                               batch_size=batch, patience=epochs, precision=precision)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            fit = loop.fit(cfg, head_task.FeatureTask(fs), split, Path(tmp), "bench")
            seconds = time.perf_counter() - t0
        timings[precision] = {"seconds": round(seconds, 2), "epochs": len(fit.history),
                              "videos_per_s": round(train_videos * len(fit.history) / seconds, 1)}
        print(json.dumps({"precision": precision, **timings[precision]}), file=sys.stderr, flush=True)
    head_rate = max(t["videos_per_s"] for t in timings.values())

    # end-to-end LRCN: ResNet-152 per frame (trainable) + LSTM(2048 -> 256) + linear, from uint8 frames
    import torchvision

    torch.manual_seed(0)
    cnn = torchvision.models.resnet152(weights=None)
    cnn.fc = torch.nn.Identity()
    head = heads.build("lstm", 2048, c, t, config.HeadConfig(hidden=256))
    params = list(cnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    x = torch.randint(0, 256, (e2e_batch, t, 3, 224, 224), dtype=torch.uint8)
    y = torch.randint(0, c, (e2e_batch,))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255

    def step() -> None:
        frames = (x.flatten(0, 1).float() - mean) / std                       # (B*T, 3, 224, 224)
        feats = cnn(frames.contiguous(memory_format=torch.channels_last)).view(e2e_batch, t, -1)
        loss = torch.nn.functional.cross_entropy(head(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    cnn = cnn.to(memory_format=torch.channels_last).train()
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(e2e_steps):
        step()
    e2e_s = time.perf_counter() - t0
    e2e_rate = e2e_batch * e2e_steps / e2e_s
    return {"part": "speed", "head": "lstm", "hidden": 256, "train_videos": train_videos, "val_videos": val_videos,
            "frames": t, "dim": d, "batch": batch, "head_timings": timings, "e2e_model": "LRCN resnet152+lstm256, 16x224x224",
            "e2e_steps": e2e_steps, "e2e_batch": e2e_batch, "e2e_seconds": round(e2e_s, 2),
            "e2e_videos_per_s": round(e2e_rate, 4),
            "ratio_fastest_head_to_e2e": round(head_rate / e2e_rate, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__}


def accuracy(work: Path, groups: int, clips: int, epochs: int, weights: str, seeds: list[int]) -> dict:
    from pipeline.stages import extract as E
    from pipeline.decoding import recipe
    from pipeline.stages import features as F
    from pipeline.datasets import synth as S
    from trainers.training import head_task
    from trainers.models import heads

    os.environ.setdefault("HAR_HOME", str(work / "home"))
    cfg = S.SynthConfig(groups=groups, clips=clips)
    S.generate(work / "synthetic", cfg)
    frames = E.extract(E.ExtractConfig("synthetic", recipe.named_recipe("default", views=2), root=work / "synthetic",
                                       out=work / f"frames-g{groups}c{clips}.zarr")).store
    fres = F.features(F.FeatureConfig(backbone="resnet18", weights=weights, store=frames, resize="stored",
                                      out=work / f"feats-g{groups}c{clips}-{weights}.zarr"))
    rows = []
    for split, seed_list in (("groups", seeds), ("random", seeds[:1])):
        for views in ("augmented", "clean"):
            for head in heads.HEADS.names():
                tops, pairs, t0 = [], [], time.perf_counter()
                for seed in seed_list:
                    tc = head_task.HeadTrainConfig(head=head, split=split, epochs=epochs, batch_size=16, scheduler="cosine",
                                          patience=epochs, train_views=views, seed=seed)
                    out = work / "runs" / f"{head}-{split}-{views}-s{seed}-g{groups}"
                    res = head_task.train_head(head_task.HeadRunConfig(tc, features=fres.store, out=out))
                    tops.append(res.summary["test"]["top1"])
                    pairs.append(res.summary["test"]["reversed_pairs_top1"])
                rows.append({"split": split, "train_views": views, "head": head,
                             "test_videos": res.summary["test"]["videos"], "seeds": len(seed_list),
                             "top1_mean": round(float(np.mean(tops)), 3), "top1_std": round(float(np.std(tops)), 3),
                             "top1_per_seed": [round(v, 3) for v in tops],
                             "reversed_pairs_top1_mean": round(float(np.mean(pairs)), 3),
                             "leakage": round(res.summary["split"]["leakage"], 2),
                             "seconds": round(time.perf_counter() - t0, 1)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"part": "accuracy", "videos": len(S.class_names(cfg)) * groups * clips, "groups": groups,
            "clips": clips, "backbone": "resnet18", "weights": fres.weights.kind, "epochs": epochs, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("speed", "accuracy", "all"), default="all")
    ap.add_argument("--train-videos", type=int, default=5000)
    ap.add_argument("--val-videos", type=int, default=700)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precisions", default="fp32,bf16", help="speed part: lstm head precisions to time")
    ap.add_argument("--e2e-steps", type=int, default=2)
    ap.add_argument("--e2e-batch", type=int, default=2)
    ap.add_argument("--groups", type=int, default=24)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--head-epochs", type=int, default=40, help="accuracy part: epochs per head")
    ap.add_argument("--weights", default="none", help="accuracy part: none | imagenet")
    ap.add_argument("--seeds", default="0,1,2", help="accuracy part: training seeds on the group split "
                    "(the random split uses the first)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "har-heads-bench")
    a = ap.parse_args()
    if a.part in ("speed", "all"):
        print(json.dumps(speed(a.train_videos, a.val_videos, a.epochs, a.e2e_steps, a.e2e_batch, a.batch_size,
                               a.precisions.split(","))), flush=True)
    if a.part in ("accuracy", "all"):
        a.work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(accuracy(a.work, a.groups, a.clips, a.head_epochs, a.weights,
                                  [int(x) for x in a.seeds.split(",")])), flush=True)


if __name__ == "__main__":
    main()
