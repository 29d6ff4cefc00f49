"""The synthetic dataset: deterministic, UCF50 layout, reversed pairs, separable through a frozen,
randomly initialised CNN with global average pooling (what the feature stage will see)."""
import hashlib
import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from pipeline import datasets, synth
from pipeline.extract import ExtractConfig, Recipe, extract
from pipeline.store import StoreReader


def test_layout_and_metadata(tmp_path):
    cfg = synth.SynthConfig(classes=3, groups=2, clips=2, frames=10)
    paths = synth.generate(tmp_path, cfg)
    assert len(paths) == 12
    assert (tmp_path / "Grow" / "v_Grow_g02_c01.avi").exists()
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["classes"] == ["Grow", "Shrink", "Brighten"] and meta["reversed_pairs"] == [["Grow", "Shrink"]]
    index = datasets.load("synthetic", tmp_path)
    assert index.classes == ("Brighten", "Grow", "Shrink") and {v.group for v in index.videos} == {1, 2}
    import av

    with av.open(str(paths[0])) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height, s.average_rate) == ("mpeg4", 320, 240, 25)
        assert s.codec_tag == "XVID"


def test_deterministic_from_seed(tmp_path):
    cfg = synth.SynthConfig(classes=2, groups=1, clips=1, frames=10)
    digest = lambda root: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in synth.generate(root, cfg)}
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    other = synth.SynthConfig(classes=2, groups=1, clips=1, frames=10, seed=1)
    assert not np.array_equal(synth.render_clip(cfg, 0, 1, 1), synth.render_clip(other, 0, 1, 1))


@pytest.mark.parametrize("forward, backward", [(0, 1), (2, 3), (4, 5), (6, 7)])
def test_reversed_pairs_are_the_same_frames_backwards(forward, backward):
    cfg = synth.SynthConfig(classes=10, frames=12)
    a, b = synth.render_clip(cfg, forward, 3, 2), synth.render_clip(cfg, backward, 3, 2)
    np.testing.assert_array_equal(a, b[::-1])


def _random_cnn_features(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, T, H, W, 3) uint8 -> (N, T, 64): two random conv layers, ReLU, global average pool."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1, (7, 7, 3, 32)).astype(np.float32) / np.sqrt(147)
    w2 = rng.normal(0, 1, (3, 3, 32, 64)).astype(np.float32) / np.sqrt(288)
    conv = lambda x, w, s: np.einsum("bhwcij,ijco->bhwo", sliding_window_view(x, w.shape[:2], axis=(1, 2))[:, ::s, ::s], w)
    n, t = frames.shape[:2]
    x = frames.reshape(n * t, *frames.shape[2:]).astype(np.float32) / 255 - 0.5
    h = np.maximum(conv(np.maximum(conv(x, w1, 4), 0), w2, 2), 0)
    return h.mean((1, 2)).reshape(n, t, -1)


def _nearest_centroid_logo(z: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """Leave-one-group-out accuracy of a nearest-centroid classifier on standardised features."""
    accs = []
    for held in np.unique(g):
        te = g == held
        mu, sd = z[~te].mean(0), z[~te].std(0) + 1e-6
        a, b = (z[~te] - mu) / sd, (z[te] - mu) / sd
        cents = np.stack([a[y[~te] == c].mean(0) for c in np.unique(y)])
        accs.append((((b[:, None] - cents[None]) ** 2).sum(-1).argmin(1) == y[te]).mean())
    return float(np.mean(accs))


def test_classes_separable_across_groups_through_a_random_frozen_cnn(tmp_path):
    synth.generate(tmp_path / "d", synth.SynthConfig(classes=6, groups=4, clips=2, frames=24))
    res = extract(ExtractConfig("synthetic", Recipe(frames=8, height=64, width=64), root=tmp_path / "d",
                                out=tmp_path / "s.zarr", scheduler="synchronous"))
    with StoreReader(res.store) as r:
        f = _random_cnn_features(r.read("frames")[:, 0])
        y, g, classes = r.read("label"), r.read("group"), r.attrs["classes"]
    # the sequence of pooled features, centred per video (a sequence model sees the change over time)
    seq = _nearest_centroid_logo((f - f.mean(1, keepdims=True)).reshape(len(f), -1), y, g)
    bag = _nearest_centroid_logo(f.mean(1), y, g)
    assert seq >= 0.6, f"unseen-group accuracy {seq:.2f} with 6 classes (chance 0.17)"
    assert seq > bag + 0.3
    # a bag of frames cannot tell a reversed pair apart: its mean features are the same
    videos = list(StoreReader(res.store).read("video"))
    for fwd, bwd in (("Grow", "Shrink"), ("Brighten", "Darken"), ("CountUp", "CountDown")):
        i = videos.index(f"{fwd}/v_{fwd}_g02_c01.avi")
        j = videos.index(f"{bwd}/v_{bwd}_g02_c01.avi")
        other = videos.index(f"{fwd}/v_{fwd}_g03_c01.avi")
        same_pair = np.abs(f[i].mean(0) - f[j].mean(0)).sum()
        assert same_pair < 0.1 * np.abs(f[i].mean(0) - f[other].mean(0)).sum()
        assert np.abs(f[i] - f[j]).sum() > 5 * same_pair  # while the sequences differ
    assert classes[y[i]] == fwd


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="--classes 0 is out of range; allowed: 1..10"):
        synth.SynthConfig(classes=0).validate()


def test_smaller_config_removes_the_clips_it_no_longer_has(tmp_path):
    synth.generate(tmp_path, synth.SynthConfig(classes=4, groups=2, clips=2, frames=8))
    synth.generate(tmp_path, synth.SynthConfig(classes=2, groups=1, clips=2, frames=8))
    (tmp_path / "notes.txt").write_text("mine")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.avi")) == [
        "Grow/v_Grow_g01_c01.avi", "Grow/v_Grow_g01_c02.avi", "Shrink/v_Shrink_g01_c01.avi", "Shrink/v_Shrink_g01_c02.avi"]
    assert (tmp_path / "notes.txt").exists() and not (tmp_path / "Brighten").exists()


@pytest.mark.parametrize("class_i", range(len(synth.CLASSES)))
def test_object_boxes_hold_every_object_pixel_and_fit_it(class_i):
    """masks.json's boxes: every pixel the objects changed is inside a box of its frame, and each
    box is tight (a visible object fills its rows and columns to within a few pixels; a dim one,
    as Brighten starts, may not differ from the background at all)."""
    cfg = synth.SynthConfig(classes=10, frames=16, width=96, height=72)
    frames = synth.render_clip(cfg, class_i, 2, 1).astype(np.int16)
    boxes = synth.object_boxes(cfg, class_i, 2, 1)
    bg = synth._clip(cfg, class_i, 2, 1).bg
    assert len(boxes) == len(frames)
    for img, frame_boxes in zip(frames, boxes):
        changed = np.abs(img - bg).max(axis=2) > 40  # the sensor noise is sd 3
        inside = np.zeros_like(changed)
        for t, le, b, r in frame_boxes:
            inside[int(t):int(np.ceil(b)), int(le):int(np.ceil(r))] = True
            rows, cols = np.nonzero(changed[int(t):int(np.ceil(b)), int(le):int(np.ceil(r))])
            if len(rows) < 20:
                assert synth.CLASSES[class_i][1] in ("brightness", "colour")
                continue
            assert rows.min() <= 2 and cols.min() <= 2
            assert rows.max() >= np.ceil(b) - int(t) - 4 and cols.max() >= np.ceil(r) - int(le) - 4
        assert not (changed & ~inside).any()
        assert frame_boxes or not changed.any()


def test_masks_are_written_with_the_videos_and_removed_without(tmp_path):
    cfg = synth.SynthConfig(classes=2, groups=1, clips=1, frames=8, width=64, height=48)
    synth.generate(tmp_path, cfg, masks=True)
    boxes = json.loads((tmp_path / synth.MASKS).read_text())
    assert sorted(boxes) == ["Grow/v_Grow_g01_c01.avi", "Shrink/v_Shrink_g01_c01.avi"]
    assert boxes["Shrink/v_Shrink_g01_c01.avi"] == boxes["Grow/v_Grow_g01_c01.avi"][::-1]
    assert datasets.load("synthetic", tmp_path).classes == ("Grow", "Shrink")  # masks.json is not a class
    synth.generate(tmp_path, cfg)
    assert not (tmp_path / synth.MASKS).exists()


def test_a_masks_json_har_did_not_write_is_never_replaced_or_removed(tmp_path):
    cfg = synth.SynthConfig(classes=2, groups=1, clips=1, frames=8, width=64, height=48)
    (tmp_path / synth.MASKS).write_text("my annotations")
    synth.generate(tmp_path, cfg)                                   # without --masks: left alone
    assert (tmp_path / synth.MASKS).read_text() == "my annotations"
    with pytest.raises(ValueError, match="was not written by har synth"):
        synth.generate(tmp_path, cfg, masks=True)                   # with --masks: refused, kept
    assert (tmp_path / synth.MASKS).read_text() == "my annotations"
