"""The synthetic dataset: deterministic, UCF50 layout, reversed pairs, separable through a frozen,
randomly initialised CNN with global average pooling (what the feature stage will see)."""
import hashlib
import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.datasets import datasets, synth
from pipeline.stages.extract import ExtractConfig, Recipe, extract
from pipeline.stores.store import StoreReader


def test_layout_and_metadata(tmp_path):
    tmp_path = tmp_path / "d"   # the test's own folder holds its $HAR_HOME, which no output may contain
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
    tmp_path = tmp_path / "d"
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
    tmp_path = tmp_path / "d"
    cfg = synth.SynthConfig(classes=2, groups=1, clips=1, frames=8, width=64, height=48)
    synth.generate(tmp_path, cfg, masks=True)
    boxes = json.loads((tmp_path / synth.MASKS).read_text())
    assert sorted(boxes) == ["Grow/v_Grow_g01_c01.avi", "Shrink/v_Shrink_g01_c01.avi"]
    assert boxes["Shrink/v_Shrink_g01_c01.avi"] == boxes["Grow/v_Grow_g01_c01.avi"][::-1]
    assert datasets.load("synthetic", tmp_path).classes == ("Grow", "Shrink")  # masks.json is not a class
    synth.generate(tmp_path, cfg)
    assert not (tmp_path / synth.MASKS).exists()


def test_a_masks_json_har_did_not_write_is_never_replaced_or_removed(tmp_path):
    tmp_path = tmp_path / "d"
    cfg = synth.SynthConfig(classes=2, groups=1, clips=1, frames=8, width=64, height=48)
    synth.generate(tmp_path, cfg)
    (tmp_path / synth.MASKS).write_text("my annotations")           # beside har's files, not listed
    for masks in (False, True):
        with pytest.raises(ValueError, match="holds masks.json, which its synth.json does not list"):
            synth.generate(tmp_path, cfg, masks=masks)
        assert (tmp_path / synth.MASKS).read_text() == "my annotations"


# ---- har synth OUT: the output rules of every har writer ---------------------------------------------

TINY = ["--classes", 2, "--groups", 2, "--clips", 1, "--frames", 8]


def _one_line(ran, *parts):
    assert ran.returncode == 2, ran.stderr
    lines = [ln for ln in ran.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in ran.stderr, ran.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _snapshot(folder):
    """Every entry under `folder` (links not followed) -> its bytes (None for a folder or a link)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


def _made(tmp_path, *args):
    from helpers import har

    out = tmp_path / "syn"
    assert har("synth", out, *(args or TINY)).returncode == 0
    return out


@pytest.mark.parametrize("user_file, named", [
    ("Grow/v_Grow_g99_c01.avi", None), ("Grow/v_Grow_g01_c01.tmp2.avi", None), ("notes.txt", None),
    ("Blink/v_Blink_g01_c01.avi", "Blink"), ("Grow/mine/clip.avi", "Grow/mine"), ("masks.json", None),
    (".synth.json.abc.tmp", None), ("Grow/...abcdefgh.tmp", None)])   # the last: a temporary name of "." crashed
@pytest.mark.parametrize("rerun", [TINY, ["--classes", 1, "--groups", 1, "--clips", 1, "--frames", 8],
                                   ["--classes", 3, "--groups", 3, "--clips", 1, "--frames", 9, "--masks"]],
                         ids=["same", "smaller", "larger"])
def test_a_file_synth_did_not_write_in_its_own_output_is_refused_and_kept(tmp_path, user_file, named, rerun):
    """Stale-clip removal used to match the name pattern alone: a user's v_Grow_g99_c01.avi was
    deleted, another of theirs overwritten. Now anything synth.json does not list stops the run."""
    from helpers import har

    out = _made(tmp_path)
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_bytes(b"the user's own bytes")
    before = _snapshot(out)
    _one_line(har("synth", out, *rerun), f"OUT {out} holds {named or user_file}, which its synth.json does not list")
    assert _snapshot(out) == before


@pytest.mark.parametrize("manifest", [
    b"not json {", b"\xff\xfe", b"[1, 2]", b'{"generator": "my own tool", "files": []}', b'"har synth"',
    b'{"generator": "har synth", "files": "Grow"}', b'{"generator": "har synth", "files": [1]}',
    b'{"generator": "har synth"}', b'{"generator": "har synth", "classes": ["Grow"], "config": {"groups": 0, "clips": 1}}',
], ids=["text", "binary", "list", "another-tool", "string", "files-a-string", "files-numbers", "no-files-no-config",
        "legacy-zero-groups"])
def test_a_synth_json_har_did_not_write_is_refused_and_the_folder_kept(tmp_path, manifest):
    from helpers import har

    out = tmp_path / "mine"
    (out / "Grow").mkdir(parents=True)
    (out / "Grow" / "v_Grow_g01_c01.avi").write_bytes(b"my video")
    (out / "synth.json").write_bytes(manifest)
    before = _snapshot(out)
    line = _one_line(har("synth", out, *TINY), f"OUT {out} holds a ")
    assert "synth.json" in line and "allowed: a new or empty folder, or har synth's own earlier output" in line
    assert _snapshot(out) == before


@pytest.mark.parametrize("listed", ["../outside.avi", "Grow/../../outside.avi", "/ABS/outside.avi", "./Grow/x.avi",
                                    "Grow//x.avi", "", "Grow\\..\\..\\outside.avi"])
def test_a_synth_json_listing_paths_outside_its_folder_never_reaches_them(tmp_path, listed):
    """A hostile or damaged manifest of har's own shape: nothing outside the folder is deleted or
    written, and nothing inside either; one line names the path."""
    from helpers import har

    out = _made(tmp_path)
    outside = tmp_path / "outside.avi"
    outside.write_bytes(b"not synth's")
    listed = listed.replace("/ABS", str(tmp_path))
    meta = json.loads((out / "synth.json").read_text())
    meta["files"].append(listed)
    meta["config"]["groups"] = 9   # a rerun with TINY would remove every file of the other config
    (out / "synth.json").write_text(json.dumps(meta))
    before, outside_before = _snapshot(out), _snapshot(tmp_path)
    _one_line(har("synth", out, *TINY), f"holds a synth.json listing {listed!r}, a path outside the folder")
    assert _snapshot(out) == before and _snapshot(tmp_path) == outside_before


@pytest.mark.parametrize("listed", ["notes.txt", "Grow/notes.txt", "Grow/v_Grow_g01_c01.mp4", "Grow/v_Shrink_g01_c01.avi",
                                    "x/y/z.avi", "Grow/v_Grow_g1_c01.avi"])
def test_a_synth_json_listing_a_file_synth_never_writes_is_refused_and_the_file_kept(tmp_path, listed):
    """A forged manifest of har's own shape that lists a user's file beside it (found by an audit:
    `notes.txt` was deleted by the next rerun): refused in one line, nothing removed."""
    from helpers import har

    out = _made(tmp_path)
    (out / listed).parent.mkdir(parents=True, exist_ok=True)
    (out / listed).write_bytes(b"the user's")
    meta = json.loads((out / "synth.json").read_text())
    meta["files"].append(listed)
    meta["config"]["groups"] = 9   # a rerun with TINY would remove every file of the other config
    (out / "synth.json").write_text(json.dumps(meta))
    before = _snapshot(out)
    _one_line(har("synth", out, *TINY), f"holds a synth.json listing {listed!r}, which is not a file har synth writes")
    assert _snapshot(out) == before and (out / listed).read_bytes() == b"the user's"


def test_a_symlink_in_synths_output_is_refused_and_never_followed(tmp_path):
    from helpers import har

    out = _made(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "v_Brighten_g01_c01.avi").write_bytes(b"mine")
    (out / "Brighten").symlink_to(elsewhere, target_is_directory=True)  # a class a larger rerun writes into
    before = _snapshot(tmp_path)
    _one_line(har("synth", out, "--classes", 3, "--groups", 2, "--clips", 1, "--frames", 8),
              "holds Brighten, which its synth.json does not list")
    assert _snapshot(tmp_path) == before


def test_a_folder_of_other_files_or_a_file_is_refused(tmp_path):
    from helpers import har

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg")
    _one_line(har("synth", folder, *TINY), f"OUT {folder} holds a.jpg and no synth.json of har synth",
              "allowed: a new or empty folder")
    assert _snapshot(folder) == {"a.jpg": b"jpeg"}
    _one_line(har("synth", folder / "a.jpg", *TINY), f"OUT {folder / 'a.jpg'} is a file, not a har synth folder")
    assert _snapshot(folder) == {"a.jpg": b"jpeg"}


@pytest.mark.parametrize("spelling", [".", "", "./", "sub/.."])
def test_synth_into_the_current_directory_is_refused(tmp_path, spelling):
    from helpers import har

    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    _one_line(har("synth", spelling, *TINY, cwd=cwd), "is the current directory")
    assert _snapshot(cwd) == {"notes.txt": b"mine"}


def test_rerunning_into_its_own_output_keeps_it_and_removes_only_its_own_stale_files(tmp_path):
    from helpers import har

    out = _made(tmp_path, "--classes", 4, "--groups", 3, "--clips", 2, "--frames", 8, "--masks")
    first = _snapshot(out)
    ran = har("synth", out, "--classes", 4, "--groups", 3, "--clips", 2, "--frames", 8, "--masks")
    assert ran.returncode == 0, ran.stderr
    assert _snapshot(out) == first                                   # the same config: nothing rewritten
    assert har("synth", out, "--classes", 2, "--groups", 1, "--clips", 1, "--frames", 8).returncode == 0
    assert sorted(_snapshot(out)) == ["Grow", "Grow/v_Grow_g01_c01.avi", "Shrink", "Shrink/v_Shrink_g01_c01.avi",
                                      "synth.json"]
    meta = json.loads((out / "synth.json").read_text())
    assert meta["complete"] is True and meta["files"] == ["Grow/v_Grow_g01_c01.avi", "Shrink/v_Shrink_g01_c01.avi"]
    assert datasets.load("synthetic", out).classes == ("Grow", "Shrink")
    fresh = _made(tmp_path / "b", "--classes", 2, "--groups", 1, "--clips", 1, "--frames", 8)
    assert _snapshot(out) == _snapshot(fresh)                        # the shrunk folder is a fresh one
    # grown again: the output of a fresh run with that config, byte for byte
    assert har("synth", out, "--classes", 3, "--groups", 2, "--clips", 1, "--frames", 8).returncode == 0
    assert _snapshot(out) == _snapshot(_made(tmp_path / "c", "--classes", 3, "--groups", 2, "--clips", 1,
                                             "--frames", 8))


# what a kill -9 leaves: a half-written clip, or synth.json's own atomic write (a review found the
# latter, once listed by an interrupted run, refused by the next as "not a file har synth writes")
@pytest.mark.parametrize("leftover", ["Grow/v_Grow_g01_c01.tmp.avi", ".synth.json.abcd1234.tmp"])
def test_a_killed_rewrite_is_refused_by_the_reader_and_finished_by_the_next_run(tmp_path, leftover):
    out = tmp_path / "d"
    synth.generate(out, synth.SynthConfig(classes=2, groups=3, clips=1, frames=8, width=64, height=48))
    (out / leftover).write_bytes(b"a kill -9's half-written file")
    smaller = synth.SynthConfig(classes=2, groups=2, clips=1, frames=9, width=64, height=48)

    def killed(path, done=iter(range(2))):
        if next(done, None) is None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.generate(out, smaller, on_video=killed)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["complete"] is False and "Grow/v_Grow_g03_c01.avi" in meta["files"]  # the old files stay listed
    assert leftover in meta["files"]
    with pytest.raises(datasets.DatasetError, match="half written"):
        datasets.load("synthetic", out)
    synth.generate(out, smaller)
    fresh = tmp_path / "fresh"
    synth.generate(fresh, smaller)
    assert _snapshot(out) == _snapshot(fresh)


def test_a_synth_json_from_before_files_were_listed_still_owns_its_clips(tmp_path):
    """Folders written by an older har synth (no "files"): it owns the clips its config names, and
    nothing else."""
    from helpers import har

    out = _made(tmp_path, "--classes", 2, "--groups", 3, "--clips", 1, "--frames", 8)
    meta = json.loads((out / "synth.json").read_text())
    old = {k: v for k, v in meta.items() if k not in ("files", "complete")}
    (out / "synth.json").write_text(json.dumps(old))
    (out / "Grow" / "v_Grow_g99_c01.avi").write_bytes(b"mine")
    before = _snapshot(out)
    _one_line(har("synth", out, *TINY), "holds Grow/v_Grow_g99_c01.avi, which its synth.json does not list")
    assert _snapshot(out) == before
    (out / "Grow" / "v_Grow_g99_c01.avi").unlink()
    assert har("synth", out, *TINY).returncode == 0
    assert _snapshot(out) == _snapshot(_made(tmp_path / "b"))
