"""Peak training memory and speed of every video model at its default clip and `har train-e2e`'s
default batch.

    .venv/bin/python benchmarks/e2e_memory.py [--models convlstm,r2plus1d_18] [--batch 8] [--device auto]

Each model runs in its own process (so one model's peak does not hide another's): built with random
weights, on its default clip (T x size x size from `har models`), one warm-up training step
(forward + backward + Adam) and `--steps` timed ones at the precision and memory format
`har train-e2e` uses on that device (bf16 autocast on CUDA and on CPUs with native bf16;
channels-last on CUDA). Peak memory: on CUDA `torch.cuda.max_memory_allocated` (what the tensors
hold; the caching allocator reserves a little more); on the CPU the process's peak RSS minus its RSS
after building the model (activations, gradients and optimizer state, not the weights). One JSON
line per model, then a summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def train_step(name: str, batch: int, device_name: str = "auto", memory_format: str = "auto",
               precision: str = "auto", frames: int | None = None, size: int | None = None, classes: int = 101):
    """One training step of a randomly initialised model on a fixed random uint8 batch, set up as
    `har train-e2e` sets it up on that device. Returns (step, sync, cfg, device, clip shape)."""
    import torch

    from trainers.training import clip_task, loop
    from trainers.models import video_models

    torch.manual_seed(0)
    device = loop.resolve_device(device_name)
    cfg = clip_task.E2EConfig(model=name, device=device.type, memory_format=memory_format, precision=precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as loop.fit does on CUDA
    spec = video_models.get(name)
    t, s = frames or spec.frames, size or spec.size
    model = video_models.build(name, classes=classes)
    if clip_task.channels_last(cfg):
        video_models.to_channels_last(model)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, t, s, s, 3), dtype=torch.uint8, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with loop.autocast(cfg, device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sync, cfg, device, (t, s)


def one(name: str, batch: int, steps: int, device_name: str, memory_format: str = "auto") -> dict:
    import torch

    from trainers.training import clip_task, loop

    step, sync, cfg, device, (t, s) = train_step(name, batch, device_name, memory_format)
    base = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        weights = torch.cuda.memory_allocated() / 2**20
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    rate = batch * steps / (time.perf_counter() - t0)
    if device.type == "cuda":
        peak, what = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
        extra = {"weights_mib": round(weights, 1), "reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1)}
    else:
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base, "peak RSS over RSS after build"
        extra = {}
    return {"model": name, "clip": f"{t}x{s}x{s}", "batch": batch,
            "precision": loop.precision_of(cfg, device), "channels_last": clip_task.channels_last(cfg),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "peak_mib": round(peak, 1), "peak_is": what, "train_clips_per_s": round(rate, 3), **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated; default: every registered video model")
    ap.add_argument("--batch", type=int, default=8, help="clips per step (train-e2e's default)")
    ap.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up step")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--memory-format", default="auto", help="auto (channels-last on CUDA) | channels-last | contiguous")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.batch, a.steps, a.device, a.memory_format)), flush=True)
        return

    from trainers.models import video_models

    rows = []
    for name in a.models.split(",") if a.models else video_models.VIDEO_MODELS.names():
        res = subprocess.run([sys.executable, __file__, "--one", name, "--batch", str(a.batch), "--steps", str(a.steps),
                              "--device", a.device, "--memory-format", a.memory_format], capture_output=True, text=True)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["?"])[-1]
            row = {"model": name, "batch": a.batch, "error": last}
        else:
            row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"summary_peak_mib": {r["model"]: r.get("peak_mib", r.get("error")) for r in rows},
                      "batch": a.batch, "cpus": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    main()
