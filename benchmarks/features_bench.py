"""Feature-stage benchmark: end-to-end frames/s (frame store read -> features written) against
the bare model forward on random tensors of the same batch, size and threads, in one run.

    python benchmarks/features_bench.py [--backbone resnet18] [--videos 40] [--batch-size 64]

On a GPU the bare model runs as the stage runs it there (bf16 autocast, channels_last). Prints one
JSON object per measurement.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stages import backbones  # noqa: E402
from pipeline.datasets import synth
from pipeline.core.cluster import cpu_count  # noqa: E402
from pipeline.stages.extract import ExtractConfig, Recipe, extract  # noqa: E402
from pipeline.core.device import resolve as resolve_device  # noqa: E402
from pipeline.stages.features import FeatureConfig, features  # noqa: E402


def emit(**row):
    print(json.dumps(row), flush=True)
    return row


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--videos", type=int, default=80)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("/tmp/har-feat-bench"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    work = args.work
    groups = max(1, args.videos // 8)
    synth.generate(work / "data", synth.SynthConfig(classes=4, groups=groups, clips=2, frames=50))
    frames = extract(ExtractConfig("synthetic", Recipe(frames=args.frames, height=args.size, width=args.size),
                                   root=work / "data", out=work / "frames.zarr", scheduler="synchronous")).store
    n_frames = None

    # the bare model: random float tensors already at the network's input size, same batch and threads
    model, preprocess, _ = backbones.load(args.backbone, "none")
    model = model.to(device, memory_format=torch.channels_last)  # as the stage runs it
    if device == "cpu":
        torch.set_num_threads(cpu_count())
    crop = preprocess.crop_size[0]  # the bare model starts after preprocessing
    x = torch.randn(args.batch_size, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        model(x)  # warm-up
        shutil.rmtree(work / "feats.zarr", ignore_errors=True)
        t = time.perf_counter()
        res = features(FeatureConfig(backbone=args.backbone, weights="none", store=frames, out=work / "feats.zarr",
                                     device=device, batch_size=args.batch_size))
        e2e = time.perf_counter() - t
        n_frames = res.frames
        reps = -(-n_frames // args.batch_size)
        t = time.perf_counter()
        for _ in range(reps):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        bare = time.perf_counter() - t
    emit(what="features", backbone=args.backbone, device=device, threads=torch.get_num_threads(),
         batch_size=args.batch_size, stored_size=args.size, frames=n_frames, end_to_end_s=e2e,
         end_to_end_frames_per_s=n_frames / e2e, bare_model_frames_per_s=reps * args.batch_size / bare,
         ratio=(n_frames / e2e) / (reps * args.batch_size / bare), peak_rss_mib=peak_rss_mib(),
         store_bytes=res.store_bytes, date=time.strftime("%Y-%m-%d"))


if __name__ == "__main__":
    main()
