"""The extraction stage: schema, reruns, versions, bad inputs, Zarr/HDF5, determinism, locking."""
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, assert_same_arrays, store_arrays as arrays, write_audio_only

from pipeline.core import lineage
from pipeline.stores import hdf5, store, swap
from pipeline.stages.extract import ExtractConfig, Recipe, extract, recorded_sources
from pipeline.stores.status import store_state
from pipeline.stores.store import StoreReader

SYNC = "synchronous"
SMALL = Recipe(frames=8, height=32, width=40, views=1)


def run(root, out=None, recipe=SMALL, **kw):
    return extract(ExtractConfig("synthetic", recipe, root=root, out=out, scheduler=SYNC, **kw))


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_schema_matches_design(synthetic_root, tmp_path):
    res = run(synthetic_root, tmp_path / "s.zarr", Recipe(sampling="multiclip", clips=2, frames=4, height=24, width=32, views=1))
    assert res.ok == 24 and not res.failed and res.decoded == 24
    with StoreReader(res.store) as r:
        a = r.attrs
        assert a["kind"] == "frames" and a["schema_version"] == 2 and a["dataset"] == "synthetic"
        assert a["classes"] == ["Brighten", "Darken", "Grow", "Shrink"]
        assert a["recipe"]["sampling"] == "multiclip"
        lin = a["lineage"]
        assert {"fingerprint", "inputs", "params", "manifest", "versions", "seed"} <= lin.keys()
        sources = recorded_sources(r)   # arrays source/*, not attrs (which every task parses)
        assert "sources" not in lin["inputs"] and lin["inputs"]["videos"] == 24
        assert [s.path for s in sources] == r.read("video").tolist() and len(sources[0].sha256) == 64
        assert all(s.size > 0 and s.inode > 0 and s.mtime_ns > 0 and s.ctime_ns > 0 for s in sources)
        assert {"av", "zarr", "dask", "python"} <= lin["versions"].keys()
        m = lin["versions"]["machine"]   # (torch_cpu too where the process has loaded torch, as this one has)
        assert (m["arch"], m["cpu"]) == (platform.machine(), lineage.cpu_model())
        shapes = {n: (r[n].shape, str(r[n].dtype)) for n in ("frames", "frame_idx", "clip_index", "view_index",
                                                            "label", "group", "num_frames", "fps", "status")}
    assert shapes == {"frames": ((24, 4, 4, 24, 32, 3), "uint8"), "frame_idx": ((24, 4, 4), "int32"),
                      "clip_index": ((24, 4), "int16"), "view_index": ((24, 4), "int16"),
                      "label": ((24,), "int16"), "group": ((24,), "int16"), "num_frames": ((24,), "int32"),
                      "fps": ((24,), "float32"), "status": ((24,), "int8")}
    x = arrays(res.store)
    assert x["clip_index"][0].tolist() == [0, 1, 0, 1] and x["view_index"][0].tolist() == [0, 0, 1, 1]
    assert (x["status"] == 1).all() and (x["error"] == "").all() and (x["fps"] == 25).all()
    assert {"split/groups", "split/random", "split/logo01"} <= x.keys()
    # views differ from the clean sample, the clean samples follow frame_idx
    assert not np.array_equal(x["frames"][0, 0], x["frames"][0, 2])
    assert (x["frame_idx"][:, :, -1] <= x["num_frames"][:, None] - 1).all()


def test_lineage_names_the_cpu_where_the_os_does_and_never_loads_torch_for_it(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f\n")
    arm = tmp_path / "arm"   # most ARM boards' /proc/cpuinfo: no model name
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")
    assert lineage.cpu_model(x86) == "AMD EPYC 9R14"
    assert lineage.cpu_model(arm) is None and lineage.cpu_model(tmp_path / "absent") is None
    code = ("import sys; from pipeline.core import lineage; m = lineage.versions()['machine']; "
            "print('torch' in sys.modules, sorted(m))")
    ran = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ran.stdout.split() == ["False", "['arch',", "'cpu']"], ran.stdout + ran.stderr


def test_sharding_keeps_file_count_small(synthetic_root, tmp_path):
    res = run(synthetic_root, tmp_path / "s.zarr")
    files = sum(1 for f in res.store.rglob("*") if f.is_file())
    # 24 videos x 2 samples = 48 frame chunks; sharded by batch they are a handful of files
    frame_files = sum(1 for f in (res.store / "frames").rglob("*") if f.is_file() and f.name != "zarr.json")
    assert frame_files < 24 and files < 150


def test_rerun_is_a_noop_and_recipe_change_is_a_new_version(synthetic_root):
    first = run(synthetic_root)
    mtime = (first.store / "zarr.json").stat().st_mtime_ns
    again = run(synthetic_root)
    assert again.up_to_date and again.store == first.store and again.decoded == 0
    assert (first.store / "zarr.json").stat().st_mtime_ns == mtime
    other = run(synthetic_root, recipe=Recipe(frames=6, height=32, width=40))
    assert other.store != first.store and first.store.exists() and other.decoded == 24


def test_added_removed_modified_sources_redo_only_them(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    out = tmp_path / "s.zarr"
    before = arrays(run(root, out).store)
    # modify one, remove one, add one
    victim = root / "Grow" / "v_Grow_g01_c01.avi"
    shutil.copy(root / "Grow" / "v_Grow_g02_c02.avi", victim)
    (root / "Darken" / "v_Darken_g03_c02.avi").unlink()
    shutil.copy(root / "Shrink" / "v_Shrink_g01_c01.avi", root / "Shrink" / "v_Shrink_g04_c01.avi")
    assert store_state(out).reason == "sources: 1 added, 1 removed, 1 modified"
    res = run(root, out)
    assert (res.decoded, res.reused) == (2, 22)
    after = arrays(out)
    # equal to extracting the changed dataset from scratch
    assert_same_arrays(after, arrays(run(root, tmp_path / "fresh.zarr").store))
    v = list(after["video"])
    assert "Darken/v_Darken_g03_c02.avi" not in v and "Shrink/v_Shrink_g04_c01.avi" in v
    i, j = v.index("Grow/v_Grow_g01_c01.avi"), v.index("Grow/v_Grow_g02_c02.avi")
    np.testing.assert_array_equal(after["frames"][i, 0], after["frames"][j, 0])  # clean views; augmented
    assert not np.array_equal(after["frames"][i, 1], after["frames"][j, 1])      # ones are seeded per video
    k = list(before["video"]).index("Brighten/v_Brighten_g01_c01.avi")
    np.testing.assert_array_equal(after["frames"][v.index("Brighten/v_Brighten_g01_c01.avi")], before["frames"][k])
    assert store_state(out).current


def test_touched_but_unchanged_source_is_not_redone(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    out = tmp_path / "s.zarr"
    run(root, out)
    os.utime(root / "Grow" / "v_Grow_g01_c01.avi", (time.time() + 100, time.time() + 100))
    assert run(root, out).up_to_date


def test_bad_videos_are_recorded_and_the_rest_extracted(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    (root / "Grow" / "v_Grow_g09_c01.avi").write_bytes(b"")
    (root / "Grow" / "v_Grow_g09_c02.avi").write_text("this is not a video\n" * 100)
    good = (root / "Shrink" / "v_Shrink_g01_c01.avi").read_bytes()
    (root / "Shrink" / "v_Shrink_g09_c01.avi").write_bytes(good[: len(good) // 3])
    write_audio_only(root / "Shrink" / "v_Shrink_g09_c02.mp4")
    (root / "Brighten" / "v_Brighten_g09_c01.mkv").write_bytes(os.urandom(5000))
    res = run(root, tmp_path / "s.zarr")
    failed = dict(res.failed)
    assert res.ok == 24 and len(failed) == 5
    assert "empty file" in failed["Grow/v_Grow_g09_c01.avi"]
    assert "not a readable container" in failed["Grow/v_Grow_g09_c02.avi"]
    assert "truncated" in failed["Shrink/v_Shrink_g09_c01.avi"]
    assert "no video stream" in failed["Shrink/v_Shrink_g09_c02.mp4"]
    assert failed["Brighten/v_Brighten_g09_c01.mkv"]
    x = arrays(res.store)
    bad = x["status"] == 2
    assert bad.sum() == 5 and (x["frame_idx"][bad] == -1).all() and (x["error"][~bad] == "").all()
    # failed videos stay in every split array: nothing silently disappears
    assert len(x["split/groups"]) == 29


def test_same_command_is_bitwise_identical(synthetic_root, tmp_path):
    r = Recipe(sampling="random-uniform", frames=6, height=32, width=40, views=2, seed=3)
    a = arrays(run(synthetic_root, tmp_path / "a.zarr", r).store)
    b = arrays(run(synthetic_root, tmp_path / "b.zarr", r).store)
    assert_same_arrays(a, b)
    c = arrays(run(synthetic_root, tmp_path / "c.zarr", Recipe(**{**r.__dict__, "seed": 4})).store)
    assert not np.array_equal(a["frames"], c["frames"])


def test_decoder_threads_do_not_change_the_store(synthetic_root, tmp_path):
    # FFmpeg's frame threads and OpenCV's resize threads: only speed may depend on them
    r = Recipe(frames=6, height=32, width=40, views=1)
    one = arrays(run(synthetic_root, tmp_path / "one.zarr", r, threads=1).store)
    three = arrays(run(synthetic_root, tmp_path / "three.zarr", r, threads=3).store)
    assert_same_arrays(one, three)


def test_zarr_and_hdf5_hold_the_same_arrays(synthetic_root, tmp_path):
    z = run(synthetic_root, tmp_path / "s.zarr")
    h = run(synthetic_root, tmp_path / "s.h5", format="hdf5")
    assert h.store.is_file() and not (tmp_path / "s.h5.partial.zarr").exists()
    assert_same_arrays(arrays(z.store), arrays(h.store))
    with StoreReader(z.store) as a, StoreReader(h.store) as b:
        assert a.attrs == b.attrs or a.attrs["lineage"]["fingerprint"] == b.attrs["lineage"]["fingerprint"]
    assert run(synthetic_root, tmp_path / "s.h5", format="hdf5").up_to_date


def test_hdf5_copy_deflates_chunks_that_plain_hdf5_reads(tmp_path):
    # the frames are deflated on all cores and written as compressed chunks: the file must be an
    # ordinary gzip-filtered dataset, edge chunks included, equal to the source array, and the
    # same bytes every time
    import h5py

    from pipeline.stores.hdf5 import HDF5_GZIP_LEVEL, zarr_to_hdf5
    from pipeline.stores.store import _zarr

    rng = np.random.default_rng(0)
    data = (np.arange(70)[:, None] + rng.integers(0, 3, (5, 3, 70, 40))).astype(np.uint8)  # edges in 3 dims
    root = _zarr().create_group(str(tmp_path / "src.zarr"), zarr_format=3)
    arr = root.create_array("frames", shape=data.shape, dtype="uint8", chunks=(1, 2, 40, 40),
                            shards=(2, 4, 80, 40), fill_value=0)
    arr[...] = data
    for name in ("status", "fps", "label", "split/groups", "split/random"):
        root.create_array(name, shape=(5,), dtype="int8", chunks=(5,))[...] = np.arange(5)
    root.create_array("video", shape=(5,), dtype=str, chunks=(5,))[...] = np.array(list("abcde"))
    root.attrs["kind"] = "frames"
    zarr_to_hdf5(tmp_path / "src.zarr", tmp_path / "out.h5")
    zarr_to_hdf5(tmp_path / "src.zarr", tmp_path / "again.h5")
    assert (tmp_path / "out.h5").read_bytes() == (tmp_path / "again.h5").read_bytes()  # reproducible files
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        ds = h5["frames"]
        assert (ds.compression, ds.compression_opts, ds.chunks) == ("gzip", HDF5_GZIP_LEVEL, (1, 2, 40, 40))
        np.testing.assert_array_equal(ds[...], data)
        np.testing.assert_array_equal(h5["split/random"][...], np.arange(5))
        assert list(h5["video"].asstr()[...]) == list("abcde")
        assert ds.id.get_storage_size() < data.nbytes  # really compressed


def test_hdf5_copy_leaves_no_half_written_file(synthetic_root, tmp_path, monkeypatch):
    # a full disk or Ctrl-C during the copy removes the partial file (it would keep the disk full);
    # one a kill -9 left behind is removed by the next run, which then finishes the store
    import errno

    out = tmp_path / "s.h5"
    real = hdf5._deflate_into

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hdf5, "_deflate_into", full_disk)
    with pytest.raises(OSError):
        run(synthetic_root, out, format="hdf5")
    assert not out.exists() and not list(tmp_path.glob("s.h5.tmp-*"))
    # as a kill -9 would leave it: h5py writes the signature first; a user's file of that name is kept
    (tmp_path / "s.h5.tmp-999999").write_bytes(b"\x89HDF\r\n\x1a\n" + b"half a copy")
    (tmp_path / "s.h5.tmp-notes").write_bytes(b"a user's file")
    monkeypatch.setattr(hdf5, "_deflate_into", real)
    res = run(synthetic_root, out, format="hdf5")
    assert res.decoded == 0 and out.is_file()  # the videos were done: only the copy was redone
    assert [p.name for p in tmp_path.glob("s.h5.tmp-*")] == ["s.h5.tmp-notes"]
    assert_same_arrays(arrays(out), arrays(run(synthetic_root, tmp_path / "s.zarr").store))


def test_lossy_store_is_smaller_and_close(synthetic_root, tmp_path):
    lossless = run(synthetic_root, tmp_path / "a.zarr", Recipe(frames=8, height=112, width=112))
    lossy = run(synthetic_root, tmp_path / "b.zarr", Recipe(frames=8, height=112, width=112, lossy=True))
    a, b = arrays(lossless.store)["frames"], arrays(lossy.store)["frames"]
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert 10 * np.log10(255**2 / mse) >= 38
    assert lossy.store_bytes < 0.5 * lossless.store_bytes


def test_other_recipe_into_existing_out_is_refused(synthetic_root, tmp_path):
    out = tmp_path / "s.zarr"
    run(synthetic_root, out)
    with pytest.raises(store.StoreError, match="another recipe.*--force"):
        run(synthetic_root, out, Recipe(frames=5, height=32, width=40))
    res = run(synthetic_root, out, Recipe(frames=5, height=32, width=40), force=True)
    assert res.decoded == 24 and arrays(out)["frames"].shape[2] == 5


def test_second_writer_is_refused(synthetic_root, tmp_path):
    out = tmp_path / "s.zarr"
    with swap.WriterLock(out):
        with pytest.raises(store.StoreError, match="being written by pid"):
            run(synthetic_root, out)


@pytest.mark.parametrize("extra", [{}, {"rotate": 15.0, "vflip": True}, {"rotate": 15.0, "hflip": False}])
def test_view_parameters_are_recorded_and_reproduce_the_views(synthetic_root, tmp_path, extra):
    from pipeline.decoding import augment, video

    recipe = Recipe(frames=4, height=48, width=48, views=2, seed=11, **extra)
    res = run(synthetic_root, tmp_path / "s.zarr", recipe)
    x = arrays(res.store)
    with StoreReader(res.store) as r:
        assert r.attrs["view_params_fields"] == list(augment.FIELDS)
    i = 5
    rel = str(x["video"][i])
    decoded = video.decode_all(synthetic_root / rel)
    for s in (1, 2):
        p = augment.ViewParams(*[bool(v) if f in ("flip", "vflip") else float(v)
                                 for f, v in zip(augment.FIELDS, x["view_params"][i, s])])
        # float32-exact round trip
        assert p == augment.params_for(11, rel, s, decoded.shape[1:3], (48, 48), recipe.rotate, recipe.vflip,
                                       recipe.hflip)
        assert (p.rotation != 0) == bool(extra) and abs(p.rotation) <= 15
        assert recipe.hflip or not p.flip
        for t in range(4):
            expected = augment.apply(decoded[x["frame_idx"][i, s, t]], p, (48, 48))
            np.testing.assert_array_equal(x["frames"][i, s, t], expected)
    assert x["view_params"][i, 0].tolist()[4:] == [0, 1, 1, 1, 0, 0]  # the clean view: no flip, jitter, rotation


def test_no_hflip_store_holds_the_mirroring_stores_views_unmirrored(synthetic_root, tmp_path):
    """--no-hflip: a new store version whose augmented views are the mirroring recipe's views with
    the mirror taken off (same crops, colours, frames), recorded flip 0; the clean view unchanged."""
    from helpers import har

    a, b = tmp_path / "flip.zarr", tmp_path / "noflip.zarr"
    common = ["extract", "synthetic", "--root", synthetic_root, "--frames", 4, "--size", 48, "--views", 3,
              "--workers", 1]
    assert har(*common, "--out", a).returncode == 0
    ran = har(*common, "--no-hflip", "--out", b)
    assert ran.returncode == 0, ran.stderr
    x, y = arrays(a), arrays(b)
    with StoreReader(a) as ra, StoreReader(b) as rb:
        assert ra.attrs["recipe"].get("hflip", True) is True and rb.attrs["recipe"]["hflip"] is False
        assert ra.attrs["lineage"]["fingerprint"] != rb.attrs["lineage"]["fingerprint"]
    flip = x["view_params"][..., 4]
    assert y["view_params"][..., 4].max() == 0 and 0 < flip[:, 1:].mean() < 1
    np.testing.assert_array_equal(np.delete(x["view_params"], 4, -1), np.delete(y["view_params"], 4, -1))
    np.testing.assert_array_equal(x["frames"][:, 0], y["frames"][:, 0])
    for i in range(len(flip)):
        for s in range(1, 4):
            want = x["frames"][i, s][:, :, ::-1] if flip[i, s] else x["frames"][i, s]
            np.testing.assert_array_equal(y["frames"][i, s], want)
    # a video model trained on the store follows it unless told otherwise
    for store_, flag, want in ((a, (), True), (b, (), False), (a, ("--no-hflip",), False)):
        out = tmp_path / f"run-{store_.stem}-{len(flag)}"
        ran = har("train-e2e", "small-cnn-rnn", "--frames", store_, "--epochs", 1, "--crop", 32, "--workers", 0,
                  "--batch-size", 8, "--tracker", "none", "--out", out, *flag)
        assert ran.returncode == 0, ran.stderr
        assert json.loads((out / "metrics.json").read_text())["hflip"] is want
        # the mirrored views stored in `a` are still drawn: said, not hidden
        assert ("on-the-fly mirror only" in ran.stderr) == (store_ == a and bool(flag))
    # a recipe that cannot have views says so
    ran = har("extract", "synthetic", "--root", synthetic_root, "--frames", 4, "--size", 48, "--no-hflip",
              "--workers", 1, "--out", tmp_path / "none.zarr")
    assert ran.returncode == 0 and "--no-hflip apply to augmented views" in ran.stderr


def test_a_folder_that_is_not_a_store_is_refused_even_forced(synthetic_root, tmp_path):
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("not a store")
    for force in (False, True):
        with pytest.raises(ValueError, match="not a har frame store.*--force does not change that"):
            run(synthetic_root, out, force=force)
        assert (out / "notes.txt").read_text() == "not a store"  # nothing was touched


def test_a_damaged_har_store_is_replaced_only_when_forced(synthetic_root, tmp_path):
    out = tmp_path / "s.zarr"
    run(synthetic_root, out)
    (out / "status" / "zarr.json").write_text("{garbage")  # ours, but unreadable
    with pytest.raises(store.StoreError, match="not a readable har store.*--force"):
        run(synthetic_root, out)
    res = run(synthetic_root, out, force=True)
    assert res.ok == 24


def test_the_result_says_how_much_of_the_sources_was_decoded(synthetic_root, tmp_path):
    """Two uniform frames are each video's first and last: partial decoding gives the decoder the
    first packet and the last GOP only (the GOPs come from the encoder, which adds keyframes at
    scene changes); the result's totals say so, and a recipe that needs every frame decodes all."""
    from pipeline.decoding import video

    res = run(synthetic_root, tmp_path / "two.zarr", recipe=Recipe(frames=2, height=32, width=40))
    with StoreReader(res.store) as r:
        n = r.read("num_frames").astype(int)
        assert (r.read("frame_idx")[:, 0, 1] == n - 1).all()
        paths = [synthetic_root / v for v in r.read("video")]
    plans = [video.packet_plan(p) for p in paths]
    assert all(p is not None for p in plans)
    assert res.frames_in_source == n.sum()
    assert res.frames_decoded == sum(p.packets_for([0, p.frames - 1]).sum() for p in plans) < n.sum()
    again = run(synthetic_root, tmp_path / "all.zarr", recipe=Recipe(frames=40, height=32, width=40))  # > n
    assert again.frames_decoded == again.frames_in_source == n.sum()


def test_the_summary_counts_each_source_frame_once_and_never_above_100_percent(synthetic_root, tmp_path, monkeypatch):
    """Issue 28: "decoded 2,392 of 1,722 source frames, 139 %". A header whose frame count is wrong
    makes extraction decode a file twice; the views fill more stored frames from the same decoded
    ones: neither is a source frame more."""
    from dataclasses import replace

    from pipeline.decoding import video

    probe = video.probe
    monkeypatch.setattr(video, "packet_plan", lambda path: None)   # no partial decoding: every frame, each pass
    monkeypatch.setattr(video, "probe", lambda path: replace(probe(path), frames_estimate=probe(path).frames_estimate - 3))
    res = run(synthetic_root, tmp_path / "s.zarr", Recipe(frames=8, height=32, width=40, views=2))
    with StoreReader(res.store) as r:
        n = r.read("num_frames").astype(int)
    assert res.decoded == res.decoded_ok == 24 and res.decoded_twice > 0   # the wrong headers were decoded again
    assert res.frames_in_source == n.sum() and res.frames_decoded == n.sum()   # each frame once, not twice
    assert res.frames == 24 * 3 * 8 and res.per_video == (1, 3, 8)
    text = res.summary()
    assert f"frames:  576 (decoded {n.sum():,} of {n.sum():,} source frames, 100%)" in text, text
    assert "stored: 24 videos x 1 clip x 3 views x 8 frames" in text
    assert f"source: the 24 videos decoded this run, each frame counted once ({res.decoded_twice} decoded twice" in text
    monkeypatch.undo()
    again = run(synthetic_root, tmp_path / "partial.zarr", Recipe(frames=2, height=32, width=40, views=2))
    assert 0 < again.frames_decoded < again.frames_in_source and again.decoded_twice == 0   # partial decoding
    pct = int(again.summary().split("source frames, ")[1].split("%")[0])
    assert pct == round(100 * again.frames_decoded / again.frames_in_source) < 100
