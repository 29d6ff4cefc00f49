"""Test helpers: the command line run in this process or as a real one; videos made on the spot
(frames that carry their own index, bad files, small datasets)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.decoding.video import write_video

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    """What a command gave back: exit code, stdout, stderr (also as a tuple: `code, out, err = har(...)`)."""
    returncode: int
    stdout: str
    stderr: str

    def __iter__(self):
        return iter((self.returncode, self.stdout, self.stderr))

    def __getitem__(self, i):
        return tuple(self)[i]


@contextlib.contextmanager
def _cwd(path: Path | None):
    before = os.getcwd()
    if path:
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def har(*args, env: dict | None = None, cwd: Path | None = None) -> Ran:
    """`har ARGS` in this process (Typer's CliRunner): what a user sees, without starting Python and
    importing torch again. Tests of kills, resumes, signals and concurrent commands use
    `har_process`."""
    from typer.testing import CliRunner

    import cli
    from trainers import console

    # a terminal 300 columns wide, as env COLUMNS says below (Rich fixes a console's width when it is
    # made, and pytest-xdist workers start with COLUMNS=80): long paths stay on one line
    console.out.width = console.err.width = 300
    with _cwd(cwd):
        res = CliRunner().invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "300", **(env or {})})
    err = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):  # escaped the boundary
        err += f"\n[escaped the error boundary] {type(res.exception).__name__}: {res.exception}"
    return Ran(res.exit_code, res.stdout, err)


def har_process(*args, env: dict | None = None, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`har ARGS` as a real process (`python -m cli`)."""
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "300", **(env or {})})

BITS = 10          # indices up to 1023
BLOCK = 16         # px per bit block at full size


def indexed_frames(n: int, h: int = 64, w: int = 96, noise: int = 0) -> np.ndarray:
    """(n, h, w, 3) frames; frame k shows k in binary as 2 rows x 5 black/white blocks.
    `noise` > 0 adds fresh grain of that amplitude to every frame (big packets, as real video has:
    a still grey frame encodes to packets of a few bytes)."""
    out = np.full((n, h, w, 3), 128, np.uint8)
    if noise:
        rng = np.random.default_rng(n)
        out = (out + rng.integers(-noise, noise + 1, out.shape)).astype(np.uint8)
    for k in range(n):
        for b in range(BITS):
            r, c = divmod(b, 5)
            y, x = 8 + r * (BLOCK + 8), 4 + c * (BLOCK + 2)
            out[k, y:y + BLOCK, x:x + BLOCK] = 255 if (k >> b) & 1 else 0
    return out


def read_index(frame: np.ndarray) -> int:
    """Inverse of indexed_frames for a frame at any scale of the original (h, w)."""
    h, w = frame.shape[:2]
    sy, sx = h / 64, w / 96
    k = 0
    for b in range(BITS):
        r, c = divmod(b, 5)
        y, x = (8 + r * (BLOCK + 8) + BLOCK / 2) * sy, (4 + c * (BLOCK + 2) + BLOCK / 2) * sx
        patch = frame[int(y - 2 * sy):int(y + 2 * sy) + 1, int(x - 2 * sx):int(x + 2 * sx) + 1]
        if patch.mean() > 128:
            k |= 1 << b
    return k


# (suffix, codec, options, description)
CODECS = [
    (".avi", "mpeg4", {"bf": "2", "qscale": "2"}, "MPEG-4/Xvid in AVI with B-frames"),
    (".mp4", "libx264", {"bf": "3", "preset": "veryfast", "crf": "12"}, "H.264 in MP4 with B-frames"),
    (".webm", "libvpx-vp9", {"crf": "10", "b": "0", "cpu-used": "8", "deadline": "realtime"}, "VP9 in WebM"),
    (".mkv", "libx264", {"bf": "2", "preset": "veryfast", "crf": "12"}, "H.264 in Matroska"),
]


def write_indexed(path: Path, n: int, codec: str = "mpeg4", options: dict | None = None, fps: float = 25,
                  noise: int = 0) -> Path:
    return write_video(path, indexed_frames(n, noise=noise), fps=fps, codec=codec, options=options)


def write_vfr(path: Path, n: int, seed: int = 0, noise: int = 0, gop: int = 250) -> Path:
    """H.264 MP4 whose frame durations vary between 20 and 90 ms."""
    rng = np.random.default_rng(seed)
    pts = np.cumsum(np.concatenate([[0], rng.integers(20, 90, n - 1)]))
    return write_video(path, indexed_frames(n, noise=noise), fps=25, codec="libx264",
                       options={"bf": "2", "preset": "veryfast", "crf": "12", "g": str(gop)},
                       pts=pts.tolist(), time_base=Fraction(1, 1000))


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def reversed_pair_features(videos_per_class: int = 24, groups: int = 6, frames: int = 8, dim: int = 16,
                           views: int = 1, seed: int = 0):
    """Features where class 1 is class 0 backwards and class 3 is class 2 backwards, on top of a
    per-group appearance offset: (features [N, 1+views, T, D] float16, labels, groups).
    A bag of frames (the mean over time) cannot separate a pair; the order can."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (2, dim))                       # the two motion directions
    look = rng.normal(0, 1.5, (groups, dim))                # group appearance
    t = np.linspace(-1, 1, frames)[:, None]
    feats, labels, grp = [], [], []
    for c in range(4):
        for i in range(videos_per_class):
            g = i % groups
            seq = look[g] + t * base[c // 2] * (1 if c % 2 == 0 else -1) * 1.5
            samples = [seq + rng.normal(0, 0.3, seq.shape) for _ in range(1 + views)]
            feats.append(samples)
            labels.append(c)
            grp.append(g + 1)
    return np.asarray(feats, np.float16), np.asarray(labels), np.asarray(grp)


def write_feature_store(path: Path, feats: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                        classes: list[str], dataset: str = "synthetic", status: np.ndarray | None = None,
                        extra_splits: dict[str, np.ndarray] | None = None) -> Path:
    """A feature store with the real schema, written from arrays (no video, no backbone)."""
    from pipeline.decoding import augment
    from pipeline.datasets import datasets
    from pipeline.core import lineage
    from pipeline.stores import store

    n, s, t, d = feats.shape
    status = np.full(n, store.OK, np.int8) if status is None else status
    key = lineage.fingerprint(feats.tobytes().hex()[:4096])
    splits = {"groups": datasets.group_split(groups, key), "random": datasets.stratified_split(labels, key),
              **datasets.logo_splits(groups), **(extra_splits or {})}
    static = {"video": np.array([f"{classes[l]}/v_{classes[l]}_g{g:02d}_c{i:02d}.avi"
                                 for i, (l, g) in enumerate(zip(labels, groups))]),
              "label": labels.astype(np.int16), "group": groups.astype(np.int16),
              "clip_index": np.zeros((n, s), np.int16), "view_index": np.tile(np.arange(s, dtype=np.int16), (n, 1)),
              **{f"split/{k}": v for k, v in splits.items()}}
    layout = store.Layout(n, s, t, 0, 0, store.choose_batch(n, s * t * d * 2))
    attrs = {"schema_version": store.SCHEMA_VERSION, "kind": "features", "dataset": dataset, "classes": classes,
             "default_split": "groups", "recipe": {}, "backbone": "test", "feature_dim": d,
             "weights": {"kind": "none"}, "pretrained": False, "lineage": {"fingerprint": key}, "complete": True}
    attrs.update(datasets.store_facts(dataset, classes))  # what the dataset's adapter records
    store.create_zarr(path, layout, static, attrs, data_name="features", data_dtype="float16", data_tail=(d,),
                      status=status)
    store.write_batch(path, 0, {"features": feats, "status": status, "frame_idx": np.zeros((n, s, t), np.int32),
                                "view_params": np.zeros((n, s, len(augment.FIELDS)), np.float32), "num_frames": np.full(n, t, np.int32),
                                "fps": np.full(n, 25, np.float32),
                                "error": np.array(["" if x == store.OK else "broken" for x in status])},
                      data_name="features")
    store.mark_complete(path)
    return path


COLOURS = {"Red": (200, 40, 40), "Green": (40, 180, 60), "Blue": (40, 60, 210)}


def colour_frames(name: str, n: int, seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """n frames of one colour class: the class's tint on noise, a grey square moving across."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[name], np.float32) * rng.uniform(0.8, 1.1)
    frames = np.clip(base + rng.normal(0, 18, (n, h, w, 3)), 0, 255).astype(np.uint8)
    for i in range(n):
        x = int((w - 12) * i / max(1, n - 1))
        frames[i, 18:30, x:x + 12] = 128
    return frames


def write_colour_dataset(root: Path, groups: int = 4, clips: int = 2, frames: int = 30) -> Path:
    """A class-per-folder dataset (`--dataset folder`) that any model tells apart by colour."""
    from pipeline.decoding.video import write_video

    for ci, name in enumerate(COLOURS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                write_video(root / name / f"v_{name}_g{g:02d}_c{c:02d}.avi",
                            colour_frames(name, frames, seed=ci * 1000 + g * 10 + c))
    return root


@contextlib.contextmanager
def dask_cluster(tmp_path: Path, workers: int = 2):
    """A real dask.distributed cluster on 127.0.0.1: a scheduler and `workers` worker processes
    (with this process's environment); yields the scheduler's address."""
    import time

    bindir = Path(sys.executable).parent
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        for _ in range(200):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        for _ in range(workers):
            procs.append(subprocess.Popen([str(bindir / "dask"), "worker", "--scheduler-file", str(sched_file),
                                           "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from dask.distributed import Client

        with Client(scheduler_file=str(sched_file), timeout="30s") as c:
            c.wait_for_workers(workers, timeout=60)
            address = c.scheduler.address
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


# ---- tiny Hugging Face video models (VideoMAE, V-JEPA 2, TimeSformer) -----------------------------

MEAN, STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def tiny_model(name: str):
    """A tiny VideoMAE, V-JEPA 2 or TimeSformer (32 px, 4 frames, 32-d, 2 layers): seconds on a CPU."""
    import torch
    import transformers as tf

    torch.manual_seed(7)
    if name == "videomae":
        return tf.VideoMAEModel(tf.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2,
                                                  intermediate_size=64, **TINY))
    if name == "vjepa2":
        return tf.VJEPA2Model(tf.VJEPA2Config(crop_size=32, frames_per_clip=4, patch_size=8, tubelet_size=2, mlp_ratio=2,
                                              pred_hidden_size=16, pred_num_hidden_layers=1, pred_num_attention_heads=2,
                                              **TINY))
    return tf.TimesformerModel(tf.TimesformerConfig(image_size=32, patch_size=8, num_frames=4, intermediate_size=64,
                                                    **TINY))


def processor(name: str):
    """transformers' own processor with a non-default normalisation (the folders save it)."""
    import transformers as tf

    if name == "videomae":  # an image processor: preprocessor_config.json, as VideoMAE's hub folders hold
        return tf.VideoMAEImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                         image_mean=MEAN, image_std=STD)
    if name == "vjepa2":    # a video processor: video_preprocessor_config.json
        return tf.VJEPA2VideoProcessor(crop_size=32, image_mean=MEAN, image_std=STD)
    return tf.TimesformerVideoProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                        image_mean=MEAN, image_std=STD, resample=3)


def save_folder(name: str, path, with_processor: bool = True):
    """A `save_pretrained` folder of a tiny model, with its processor config unless told otherwise."""
    tiny_model(name).save_pretrained(path)
    if with_processor:
        processor(name).save_pretrained(path)
    return path


def needs_export(fmt: str) -> None:
    """Skip an ONNX test where the export extra is not installed."""
    if fmt == "onnx":
        import pytest

        for mod in ("onnx", "onnxruntime"):
            pytest.importorskip(mod, reason=f"{mod} is not installed (pip install 'har[export]')")


def store_arrays(path) -> dict:
    """Every array of a store, read by har's reader: name -> numpy array."""
    from pipeline.stores.store import StoreReader

    with StoreReader(path) as r:
        return {name: r.read(name) for name in r.names()}


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
