"""The CUDA paths, where a GPU is visible (skipped elsewhere; CI has none): every video model trains
through `har train-e2e`'s loop on the GPU (bf16 autocast, channels-last, pinned non-blocking copies,
crop and flip on the device, cuDNN autotuning); the GPU computes what the CPU computes; running out
of GPU memory is one clear message; the feature stage on CUDA agrees with the CPU."""
import json

import numpy as np
import pytest
import torch

from trainers.training import clip_task
from trainers.data import clips
from trainers.models import video_models

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


def _run(frames, out, **kw):
    cfg = clip_task.E2EConfig(**{"epochs": 2, "batch_size": 4, "workers": 2, "crop": 32, "device": "cuda", **kw})
    return clip_task.train_e2e(clip_task.E2ERunConfig(cfg, frames=frames, out=out))


def test_crop_and_flip_on_the_gpu_cut_the_same_windows_as_on_the_cpu():
    x = torch.randint(0, 256, (6, 4, 20, 30, 3), dtype=torch.uint8)
    a = clips.random_crop_flip(x, 16, torch.Generator().manual_seed(3))
    b = clips.random_crop_flip(x.cuda(), 16, torch.Generator().manual_seed(3))
    assert b.is_cuda and torch.equal(a, b.cpu())


@pytest.mark.parametrize("model", [m for m in video_models.VIDEO_MODELS.names() if not video_models.get(m).hub])
def test_every_video_model_trains_on_the_gpu_in_bf16_channels_last(frames, tmp_path, model):
    cfg = clip_task.E2EConfig(model=model, device="cuda")
    assert clip_task.channels_last(cfg)
    res = _run(frames, tmp_path / model, model=model)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["test"]["videos"] > 0 and 0.0 <= m["test"]["top1"] <= 1.0
    hist = json.loads((res.run_dir / "history.json").read_text())
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)
    state = torch.load(res.run_dir / "best.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("model", ["r2plus1d_18", "i3d", "convlstm", "lrcn", "nonlocal"])
def test_gpu_forward_equals_the_cpu_forward(model, monkeypatch):
    """fp32 on both (TF32 off) to rounding; bf16 channels-last (the GPU default) close in direction."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    net = video_models.build(model, classes=7).eval()
    spec = video_models.get(model)
    x = torch.randint(0, 256, (2, min(spec.frames, 8), 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = net(x).double()
        gpu = net.cuda()(x.cuda()).double().cpu()
        video_models.to_channels_last(net)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = net(x.cuda()).double().cpu()
    assert (gpu - ref).norm() / ref.norm() < 1e-4
    cos = torch.nn.functional.cosine_similarity(half, ref, dim=1)
    assert cos.min() > 0.99, cos


def test_running_out_of_gpu_memory_is_one_clear_message(frames, tmp_path):
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(16 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
    try:
        with pytest.raises(ValueError, match=r"out of memory with --batch-size 4 for r3d_18; try --batch-size 2"):
            _run(frames, tmp_path / "oom", model="r3d_18", workers=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_cuda_features_agree_with_the_cpu(frames, tmp_path):
    from pipeline.stages.features import FeatureConfig, features
    from pipeline.stores.store import StoreReader

    out = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        res = features(FeatureConfig(backbone="resnet50", weights="none", store=frames, device=device,
                                     precision=precision, out=tmp_path / f"{device}-{precision}.zarr"))
        assert res.device == device and res.precision == precision
        with StoreReader(res.store) as r:
            ok = r.read("status") == 1
            out[device, precision] = r.read("features")[ok].reshape(-1, 2048).astype(np.float64)

    def cos(a, b):
        return ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()

    ref = out["cpu", "fp32"]
    assert len(ref) > 0
    assert cos(out["cuda", "fp32"], ref) >= 0.9999
    assert cos(out["cuda", "bf16"], ref) >= 0.99
