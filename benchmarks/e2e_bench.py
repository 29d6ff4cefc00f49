"""The end-to-end data path: does the frame-store loader keep a 3D CNN fed?

    .venv/bin/python benchmarks/e2e_bench.py

In one run, on generated UCF50-like videos (320x240, 25 fps, Xvid): a frame store of 16-frame
clips at 128x171 (the Kinetics models' resize) is made once; then
- loader: clips/s the frame-store DataLoader delivers (workers read and decompress, random
  112 px crop and flip per batch), over several epochs of one clip per video;
- model: clips/s r2plus1d_18 trains at (forward + backward + Adam step, 16x112x112, random init);
- on the fly: clips/s of the seed studies' way, decoding each clip from its source video with
  OpenCV (seek to the clip's start, read 16 frames, resize to 171x128, crop 112).
Prints one JSON line. Targets (issue 5): loader >= 2x the model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "har-e2e-bench")
    ap.add_argument("--groups", type=int, default=8, help="videos = 6 classes x groups x 2 clips")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="loader passes")
    ap.add_argument("--model", default="r2plus1d_18")
    ap.add_argument("--model-batch", type=int, default=2)
    ap.add_argument("--model-steps", type=int, default=2)
    a = ap.parse_args()

    import cv2
    import torch

    from pipeline import synth
    from pipeline.extract import ExtractConfig, Recipe, extract
    from trainers import clips as C
    from trainers import models3d

    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HAR_HOME", str(a.work / "home"))
    root = a.work / "synthetic"
    synth.generate(root, synth.SynthConfig(groups=a.groups, clips=2, frames=60))
    recipe = Recipe(sampling="clip", frames=16, height=128, width=171)
    res = extract(ExtractConfig("synthetic", recipe, root=root, out=a.work / "clips.zarr"))
    cs = C.open_store(res.store)
    videos = np.flatnonzero(cs.ok)

    # loader: DataLoader workers read + decompress; crop and flip per batch (on the CPU here)
    g = torch.Generator().manual_seed(0)
    n = 0
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        for x, _y in C.loader(cs, C.train_items(cs, videos, 0, epoch), a.batch_size, a.workers):
            x = C.random_crop_flip(x, 112, g)
            n += len(x)
    loader_s = time.perf_counter() - t0
    loader_rate = n / loader_s

    # the seed studies' way: decode each clip from its source video with OpenCV
    with __import__("pipeline.store", fromlist=["StoreReader"]).StoreReader(res.store) as r:
        starts = r.read("frame_idx")[:, 0, 0]
        rels = r.read("video")
    t0 = time.perf_counter()
    for v in videos:
        cap = cv2.VideoCapture(str(root / rels[v]))
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(starts[v]))
        frames = []
        for _ in range(16):
            ok, img = cap.read()
            if not ok:
                break
            img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (171, 128), interpolation=cv2.INTER_LINEAR)
            frames.append(img[8:120, 29:141])
        cap.release()
        np.stack(frames)
    fly_rate = len(videos) / (time.perf_counter() - t0)

    # the model: training steps of the 3D CNN on 16x112x112 clips
    torch.manual_seed(0)
    model = models3d.build(a.model, len(cs.classes)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (a.model_batch, 16, 112, 112, 3), dtype=torch.uint8)
    y = torch.zeros(a.model_batch, dtype=torch.long)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(a.model_steps):
        step()
    model_rate = a.model_batch * a.model_steps / (time.perf_counter() - t0)
    print(json.dumps({"videos": int(len(videos)), "store": "clip 16 frames at 128x171, lossless",
                      "loader_workers": a.workers, "loader_batch": a.batch_size, "loader_clips": n,
                      "loader_clips_per_s": round(loader_rate, 1), "on_the_fly_opencv_clips_per_s": round(fly_rate, 1),
                      "model": a.model, "model_batch": a.model_batch,
                      "model_train_clips_per_s": round(model_rate, 3),
                      "loader_over_model": round(loader_rate / model_rate, 1),
                      "loader_over_on_the_fly": round(loader_rate / fly_rate, 2),
                      "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
                      "cpus": os.cpu_count(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
