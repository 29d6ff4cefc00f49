"""The feature stage on CPU: every backbone, equality with a direct torchvision forward, lineage,
no-op reruns, resume, failed videos, Zarr and HDF5 frame stores, CLI errors."""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import har

from pipeline.stages import backbones
from pipeline.core import lineage
from pipeline.stores import store, swap
from pipeline.stages.extract import ExtractConfig, Recipe, extract
from pipeline.stages.features import FeatureConfig, features
from pipeline.stores.store import StoreReader

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_frames(tmp_path_factory):
    """2 classes x 2 groups, 2 frames of 32 px per video: a frame store a CPU encodes in seconds."""
    from pipeline.datasets.synth import SynthConfig, generate

    base = tmp_path_factory.mktemp("tiny")
    generate(base / "data", SynthConfig(classes=2, groups=2, clips=1, frames=8))
    (base / "data" / "Grow" / "v_Grow_g09_c01.avi").write_bytes(b"")  # one failed video
    z = extract(ExtractConfig("synthetic", Recipe(frames=2, height=32, width=32, views=1), root=base / "data",
                              out=base / "frames.zarr", scheduler="synchronous"))
    h = extract(ExtractConfig("synthetic", Recipe(frames=2, height=32, width=32, views=1), root=base / "data",
                              out=base / "frames.h5", format="hdf5", scheduler="synchronous"))
    assert len(z.failed) == 1
    return z.store, h.store


def read(path, name):
    with StoreReader(path) as r:
        return r.read(name)


@pytest.mark.parametrize("name", backbones.names("frame"))
def test_every_backbone_encodes_on_cpu(tiny_frames, tmp_path, name):
    res = features(FeatureConfig(backbone=name, weights="none", store=tiny_frames[0], out=tmp_path / "f.zarr",
                                 device="cpu", batch_size=3))
    f = read(res.store, "features")
    assert f.shape == (5, 2, 2, backbones.get(name).dim) and f.dtype == np.float16
    status = read(res.store, "status")
    assert sorted(status.tolist()) == [1, 1, 1, 1, 2]
    assert np.isfinite(f[status == 1]).all() and np.abs(f[status == 1]).sum() > 0
    assert (f[status == 2] == 0).all()


def test_features_equal_a_direct_torchvision_forward(tiny_frames, tmp_path):
    import torchvision

    torch.manual_seed(123)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    res = features(FeatureConfig(backbone="resnet18", weights=str(path), store=tiny_frames[0],
                                 out=tmp_path / "f.zarr", device="cpu", batch_size=4))
    ref.fc = torch.nn.Identity()
    ref.eval()
    frames = read(tiny_frames[0], "frames")
    ok = read(tiny_frames[0], "status") == 1
    x = torch.from_numpy(frames[ok].reshape(-1, 32, 32, 3)).permute(0, 3, 1, 2)
    preprocess = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms(antialias=True)
    with torch.inference_mode():
        expected = ref(preprocess(x)).numpy()
    got = read(res.store, "features")[ok].reshape(len(expected), -1).astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)
    with StoreReader(res.store) as r:
        w = r.attrs["weights"]
        assert w["kind"] == "file" and w["sha256"] == lineage.file_sha256(path) and r.attrs["pretrained"]


def test_lineage_noop_and_random_weights_marked(tiny_frames, tmp_path):
    cfg = FeatureConfig(backbone="resnet18", weights="none", store=tiny_frames[0], out=tmp_path / "f.zarr", device="cpu")
    first = features(cfg)
    again = features(cfg)
    assert again.up_to_date and not first.up_to_date
    with StoreReader(first.store) as r:
        a = r.attrs
        assert a["kind"] == "features" and a["backbone"] == "resnet18" and a["pretrained"] is False
        assert a["weights"]["source"] == "random init (seed 0)" and a["precision"] == "fp32"
        with StoreReader(tiny_frames[0]) as fr:
            assert a["frames_fingerprint"] == fr.attrs["lineage"]["fingerprint"]
            for name in ("video", "label", "group", "frame_idx", "view_index", "split/groups"):
                np.testing.assert_array_equal(r.read(name), fr.read(name))
    changed = FeatureConfig(backbone="resnet18", weights="none", store=tiny_frames[0], out=tmp_path / "f.zarr",
                            device="cpu", precision="bf16")
    with pytest.raises(store.StoreError, match="made differently.*--force"):  # as extract's other recipe
        features(changed)
    other = features(replace(changed, force=True))
    assert not other.up_to_date  # a changed parameter redoes the stage


def test_killed_run_resumes_to_the_same_result(tiny_frames, tmp_path, monkeypatch):
    import pipeline.stages.features as F

    cfg = FeatureConfig(backbone="resnet18", weights="none", store=tiny_frames[0], out=tmp_path / "f.zarr", device="cpu")
    real = F.run_shard
    calls = []

    def dies_after_one(task, prefetched=None):
        if calls:
            raise KeyboardInterrupt
        calls.append(task)
        return real(task, prefetched)

    monkeypatch.setattr(F, "run_shard", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        features(cfg)
    monkeypatch.setattr(F, "run_shard", real)
    work = swap.work_path(tmp_path / "f.zarr")
    assert 0 < (read(work, "status") != 0).sum() < 5
    resumed = features(cfg)
    assert resumed.encoded_videos < 4  # only what was missing
    fresh = features(FeatureConfig(backbone="resnet18", weights="none", store=tiny_frames[0], out=tmp_path / "g.zarr",
                                   device="cpu"))
    np.testing.assert_array_equal(read(resumed.store, "features"), read(fresh.store, "features"))


def test_hdf5_and_zarr_frame_stores_give_the_same_features(tiny_frames, tmp_path):
    a = features(FeatureConfig(backbone="resnet18", weights="none", store=tiny_frames[0], out=tmp_path / "a.zarr", device="cpu"))
    b = features(FeatureConfig(backbone="resnet18", weights="none", store=tiny_frames[1], out=tmp_path / "b.zarr", device="cpu"))
    np.testing.assert_array_equal(read(a.store, "features"), read(b.store, "features"))


@pytest.mark.parametrize("args, message", [
    (["--backbone", "vgg16", "--store", "x.zarr"], "unknown backbone 'vgg16'; allowed: resnet152, resnet50, resnet18"),
    (["--backbone", "resnet18", "--store", "/nonexistent/frames.zarr"], "frames store /nonexistent/frames.zarr does not exist"),
    (["--backbone", "resnet18"], "give --store PATH or --dataset NAME"),
    (["--backbone", "resnet18", "--dataset", "ucf50"], "run `har extract ucf50` first"),
    (["--backbone", "resnet18", "--store", "FRAMES", "--weights", "imagenet"],
     "resnet18: ImageNet weights resnet18-f37072fd.pth are not in"),
    (["--backbone", "resnet18", "--store", "FRAMES", "--weights", "/nonexistent.pth"], "--weights '/nonexistent.pth' is not a file"),
    (["--backbone", "resnet18", "--store", "FRAMES", "--device", "tpu"], "--device 'tpu' is not supported; allowed: auto, cpu, cuda"),
])
def test_cli_errors_one_line_exit_2(tiny_frames, tmp_path, args, message):
    args = [str(tiny_frames[0]) if a == "FRAMES" else a for a in args]
    res = har("features", *args, env={"HAR_HOME": str(tmp_path / "home"), "TORCH_HOME": str(tmp_path / "torch")})
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("Downloading:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr


def test_bf16_features_match_fp32(tiny_frames, tmp_path):
    """bf16 autocast (the GPU default) against fp32: cosine similarity per frame. On CPU here;
    the same check runs on CUDA when a device is present (see BENCHMARKS.md)."""
    a = features(FeatureConfig(backbone="resnet50", weights="none", store=tiny_frames[0], out=tmp_path / "a.zarr",
                               device="cpu", precision="fp32"))
    b = features(FeatureConfig(backbone="resnet50", weights="none", store=tiny_frames[0], out=tmp_path / "b.zarr",
                               device="cpu", precision="bf16"))
    ok = read(a.store, "status") == 1
    x = read(a.store, "features")[ok].reshape(-1, 2048).astype(np.float64)
    y = read(b.store, "features")[ok].reshape(-1, 2048).astype(np.float64)
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() >= 0.999, cos.min()


def test_status_follows_the_frame_store(tiny_frames, tmp_path):
    import shutil

    from pipeline.stores.status import store_state

    frames = tmp_path / "frames.zarr"
    shutil.copytree(tiny_frames[0], frames)
    res = features(FeatureConfig(backbone="resnet18", weights="none", store=frames, out=tmp_path / "f.zarr", device="cpu"))
    assert store_state(res.store).current
    shutil.rmtree(frames)
    state = store_state(res.store)
    assert not state.current and "is gone" in state.reason


def test_kill_9_mid_run_then_rerun_finishes_the_rest(tiny_frames, tmp_path):
    import signal
    import time

    out = tmp_path / "f.zarr"
    work = swap.work_path(out)
    cmd = [sys.executable, "-m", "cli", "features", "--store", str(tiny_frames[0]), "--backbone", "resnet50",
           "--weights", "none", "--out", str(out), "--device", "cpu", "--batch-size", "2"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_half_way = False
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        try:
            done = (read(work, "status") == 1).sum()
        except Exception:
            done = 0
        if 0 < done < 4:
            os.kill(p.pid, signal.SIGKILL)
            killed_half_way = True
            break
        time.sleep(0.05)
    p.wait()
    assert killed_half_way, "the run ended before a kill could land half-way"
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "encoded:" in again.stdout and not work.exists()
    fresh = features(FeatureConfig(backbone="resnet50", weights="none", store=tiny_frames[0], out=tmp_path / "g.zarr",
                                   device="cpu", batch_size=2))
    np.testing.assert_array_equal(read(out, "status"), read(fresh.store, "status"))
    np.testing.assert_array_equal(read(out, "features"), read(fresh.store, "features"))
