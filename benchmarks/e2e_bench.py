"""The end-to-end data path: does the frame-store loader keep a 3D CNN fed?

    .venv/bin/python benchmarks/e2e_bench.py [--device auto] [--workers 2] [--model-batch 2]

In one run, on generated UCF50-like videos (320x240, 25 fps, Xvid): a frame store of 16-frame
clips at 128x171 (the Kinetics models' resize) is made once; then
- loader: clips/s the frame-store DataLoader delivers to the training device (workers read and
  decompress; pinned memory and a non-blocking copy on CUDA; random 112 px crop and flip per batch
  on the device), over several epochs of one clip per video;
- model: clips/s r2plus1d_18 trains at on a fixed batch already on the device (forward + backward +
  Adam step, 16x112x112, random init, at `har train-e2e`'s precision and memory format there);
- pipeline: the two together, as `har train-e2e` runs them: loader batches, crop, train step;
- on the fly: clips/s of the seed studies' way, decoding each clip from its source video with
  OpenCV (seek to the clip's start, read 16 frames, resize to 171x128, crop 112).
Prints one JSON line. Targets (issue 5): loader >= 2x the model; the pipeline near the bare model.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


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
    ap.add_argument("--device", default="auto")
    ap.add_argument("--memory-format", default="auto")
    ap.add_argument("--pin", choices=("auto", "yes", "no"), default="auto", help="pinned host memory (auto: on CUDA)")
    ap.add_argument("--skip-opencv", action="store_true", help="skip the on-the-fly decoding baseline")
    a = ap.parse_args()

    import cv2
    import torch

    from pipeline.datasets import synth
    from pipeline.stages.extract import ExtractConfig, Recipe, extract
    from e2e_memory import train_step
    from trainers.data import clips as C
    from trainers.data import views
    from trainers.training import loop

    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HAR_HOME", str(a.work / "home"))
    root = a.work / "synthetic"
    synth.generate(root, synth.SynthConfig(groups=a.groups, clips=2, frames=60))
    recipe = Recipe(sampling="clip", frames=16, height=128, width=171)
    res = extract(ExtractConfig("synthetic", recipe, root=root, out=a.work / "clips.zarr"))
    cs = views.open_view(res.store, "frames")
    videos = np.flatnonzero(cs.ok)

    device = loop.resolve_device(a.device)
    cuda = device.type == "cuda"
    pin = cuda if a.pin == "auto" else a.pin == "yes"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def batches(epochs: int, batch_size: int):
        """What loop.train_one_epoch feeds the model: store -> (pinned) -> device -> crop + flip, from
        one loader whose workers live across epochs (as ClipTask's)."""
        g = torch.Generator().manual_seed(0)
        ld = C.ClipLoader(cs, batch_size, a.workers, pin=pin)
        try:
            for epoch in range(epochs):
                for x, y in ld(C.train_items(cs, videos, 0, epoch)):
                    yield C.random_crop_flip(x.to(device, non_blocking=True), 112, g), y.to(device, non_blocking=True)
        finally:
            ld.close()

    # loader: DataLoader workers read + decompress; copy to the device; crop and flip there
    n, first = 0, None
    t0 = time.perf_counter()
    for x, _y in batches(a.epochs, a.batch_size):
        if first is None:  # the workers have started and filled their first batch
            sync()
            first, n_first = time.perf_counter(), len(x)
        n += len(x)
    sync()
    end = time.perf_counter()
    loader_rate = n / (end - t0)
    loader_steady, loader_start = (n - n_first) / (end - first), first - t0

    # the seed studies' way: decode each clip from its source video with OpenCV
    with __import__("pipeline.stores.store", fromlist=["StoreReader"]).StoreReader(res.store) as r:
        starts = r.read("frame_idx")[:, 0, 0]
        rels = r.read("video")
    t0 = time.perf_counter()
    for v in videos[:0] if a.skip_opencv else videos:
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
    fly_rate = float("nan") if a.skip_opencv else len(videos) / (time.perf_counter() - t0)

    # the model: training steps of the 3D CNN on a fixed 16x112x112 batch already on the device
    step, sync, cfg, device, _ = train_step(a.model, a.model_batch, a.device, a.memory_format, frames=16, size=112,
                                            classes=len(cs.classes))
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.model_steps):
        step()
    sync()
    model_rate = a.model_batch * a.model_steps / (time.perf_counter() - t0)

    # the pipeline: har train-e2e's own data path (ClipTask: one loader iterator across epochs,
    # pinned on CUDA, crop + flip on the device) into the same training step; 2 warm-up steps, then
    # --model-steps timed ones, across epochs
    from dataclasses import replace

    from trainers.training import clip_task

    tcfg = replace(cfg, batch_size=a.model_batch, workers=a.workers, crop=112)
    task = clip_task.ClipTask(cs, tcfg)
    torch.manual_seed(0)
    model = task.build(tcfg, None).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def pipeline_batches():
        g = torch.Generator().manual_seed(0)
        for epoch in itertools.count():
            for x, y in task.batches(tcfg, videos, epoch):
                yield task.prepare(x.to(device, non_blocking=True), g), y.to(device, non_blocking=True)

    m, t0, wait = 0, None, 0.0
    it = pipeline_batches()
    for i in range(a.model_steps + 2):
        tw = time.perf_counter()
        x, y = next(it)
        if i > 1:
            wait += time.perf_counter() - tw  # the training thread waiting for the loader
        with loop.autocast(cfg, device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == 1:  # the first steps pick cuDNN kernels and start the workers
            sync()
            t0 = time.perf_counter()
        elif i > 1:
            m += len(x)
    sync()
    pipeline_s = time.perf_counter() - t0
    pipeline_rate = m / pipeline_s
    task.close()
    print(json.dumps({"videos": int(len(videos)), "store": "clip 16 frames at 128x171, lossless",
                      "loader_workers": a.workers, "loader_batch": a.batch_size, "loader_clips": n,
                      "loader_clips_per_s": round(loader_rate, 1),
                      "loader_start_s": round(loader_start, 2), "loader_steady_clips_per_s": round(loader_steady, 1), "on_the_fly_opencv_clips_per_s": round(fly_rate, 1),
                      "model": a.model, "model_batch": a.model_batch,
                      "precision": loop.precision_of(cfg, device), "channels_last": clip_task.channels_last(cfg),
                      "model_train_clips_per_s": round(model_rate, 3),
                      "pipeline_train_clips_per_s": round(pipeline_rate, 3),
                      "pipeline_waiting_for_loader": round(wait / pipeline_s, 3), "loader_pin_memory": pin,
                      "loader_over_model": round(loader_rate / model_rate, 2),
                      "pipeline_over_model": round(pipeline_rate / model_rate, 3),
                      "loader_over_on_the_fly": round(loader_rate / fly_rate, 2),
                      "device": torch.cuda.get_device_name() if cuda else "cpu", "threads": torch.get_num_threads(),
                      "cpus": os.cpu_count(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
