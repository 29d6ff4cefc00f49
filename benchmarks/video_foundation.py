"""Video foundation models' speed on this machine: frozen features (clips/s through
`video_backbones.ClipEncoder`'s network) and fine-tuning steps (forward + backward, clips/s through
`video_models.build`), at a tiny size and at their base configuration (transformers' config
defaults, random weights: speed needs none), beside torchvision's models in the same run
(ResNet-18 per frame over a 16-frame clip; R(2+1)D-18 end to end at 16 x 112). Prints JSON.

    python benchmarks/video_foundation.py [--repeat 2] [--base-frames-vjepa2 16] [--device cuda]

On CUDA: bf16 autocast (as har features and train-e2e run there), the clock read after a synchronize.

V-JEPA 2's base configuration is ViT-L at 64 frames of 256 px (~11.6 TFLOPs a clip); on a CPU one
clip takes minutes, so its base figure is measured at --base-frames-vjepa2 frames (said in the output).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from pipeline.stages import backbones, video_backbones
from trainers.models import video_models


DEVICE = torch.device("cpu")


def timed(fn, repeat: int) -> float:
    def run():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
            fn()
    run()  # warm-up
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        run()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def encoder(name: str, tiny: bool, frames: int | None):
    tf = video_backbones.transformers()
    c = backbones.get(name).clip
    kw = {c.frames_key: 4, c.size_key: 32, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "patch_size": 8, **({"intermediate_size": 64} if name != "vjepa2" else {"mlp_ratio": 2})} if tiny else {}
    if not tiny and frames:
        kw[c.frames_key] = frames
    config = getattr(tf, c.config_class)(**kw)
    torch.manual_seed(0)
    model = getattr(tf, c.model_class)(config).eval().to(DEVICE)
    return model, c, int(getattr(config, c.frames_key)), int(getattr(config, c.size_key))


def features_row(name: str, tiny: bool, batch: int, repeat: int, frames: int | None) -> dict:
    model, c, f, s = encoder(name, tiny, frames)
    shape = video_backbones.ClipShape(f, int(getattr(model.config, c.tubelet_key)) if c.tubelet_key else 1, s,
                                      model.config.hidden_size)
    net = video_backbones.Tokens(model, c, shape)
    x = torch.randn(batch, f, 3, s, s, device=DEVICE)
    with torch.inference_mode():
        sec = timed(lambda: net(x), repeat)
    return {"what": "features", "model": name, "size": "tiny" if tiny else "base", "clip": f"{f}x{s}x{s}",
            "batch": batch, "clips_per_s": batch / sec}


def finetune_row(name: str, tiny: bool, batch: int, repeat: int, frames: int | None) -> dict:
    model, c, f, s = encoder(name, tiny, frames)
    from trainers.models.hub_models import HubVideoNet

    net = HubVideoNet(model.train(), c, f, s, 10).to(DEVICE)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x, y = torch.randn(batch, 3, f, s, s, device=DEVICE), torch.randint(0, 10, (batch,), device=DEVICE)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    sec = timed(step, repeat)
    return {"what": "fine-tune step", "model": name, "size": "tiny" if tiny else "base", "clip": f"{f}x{s}x{s}",
            "batch": batch, "clips_per_s": batch / sec}


def baselines(repeat: int) -> list[dict]:
    out = []
    model, pre, _ = backbones.load("resnet18", "none")
    model = model.to(DEVICE)
    frames = torch.randint(0, 256, (16, 3, 240, 320), dtype=torch.uint8, device=DEVICE)
    with torch.inference_mode():
        sec = timed(lambda: model(pre(frames)), repeat)
    out.append({"what": "features", "model": "resnet18 (per frame)", "size": "base", "clip": "16x224x224",
                "batch": 1, "clips_per_s": 1 / sec})
    net = video_models.build("r2plus1d_18", 10).train().to(DEVICE)
    opt = torch.optim.SGD(net.parameters(), 1e-3)
    x = torch.randint(0, 256, (2, 16, 112, 112, 3), dtype=torch.uint8, device=DEVICE)
    y = torch.randint(0, 10, (2,), device=DEVICE)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    out.append({"what": "fine-tune step", "model": "r2plus1d_18", "size": "base", "clip": "16x112x112", "batch": 2,
                "clips_per_s": 2 / timed(step, repeat)})
    with torch.inference_mode():
        net.eval()
        out.append({"what": "features", "model": "r2plus1d_18 (forward)", "size": "base", "clip": "16x112x112",
                    "batch": 2, "clips_per_s": 2 / timed(lambda: net(x), repeat)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--base-frames-vjepa2", type=int, default=16)
    ap.add_argument("--skip-base-finetune", nargs="*", default=["vjepa2"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--base-batch", type=int, default=1)
    a = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(a.device)
    rows = baselines(a.repeat)
    for name in ("videomae", "vjepa2", "timesformer"):
        frames = a.base_frames_vjepa2 if name == "vjepa2" else None
        rows.append(features_row(name, True, 8, a.repeat, None))
        rows.append(finetune_row(name, True, 8, a.repeat, None))
        rows.append(features_row(name, False, a.base_batch, a.repeat, frames))
        if name not in a.skip_base_finetune:
            rows.append(finetune_row(name, False, a.base_batch, a.repeat, frames))
    machine = torch.cuda.get_device_name() if DEVICE.type == "cuda" else platform.processor() or platform.machine()
    print(json.dumps({"machine": machine, "device": str(DEVICE), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
