"""The trust guarantees for what is stored (issue 12's findings 5, issue 28's case 13), tried as a
hostile user would: a chunk deleted, flipped, zeroed or moved with its checksum is damage, named
with the store and the videos, never read as zeros; a rerun rebuilds it. The rest of issue 12's
catalogue is in test_trust.py, whose small dataset and helpers these tests share.
"""
from pathlib import Path

import pytest
from helpers import har
from test_trust import data, dataset, one_line_error, run  # noqa: F401  (fixtures by name)

from pipeline.stores import checksums, inputs, store
from pipeline.stores.status import store_state


# ---- 5. a deleted chunk is never read as zeros ------------------------------------------------

def shard_files(path: Path, name: str) -> list[Path]:
    return sorted(p for p in (path / name / "c").rglob("*") if p.is_file())


def test_a_deleted_frames_shard_is_damage_everywhere(data, tmp_path):
    frames = run(data, tmp_path / "f.zarr").store
    shard_files(frames, "frames")[0].unlink()
    state = store_state(frames)
    assert state.state == "damaged" and "chunk files missing" in state.reason and "/v_" in state.reason
    code, out, _ = har("status", frames)
    assert code == 3 and "damaged" in out
    code, _, err = har("features", "--store", frames, "--out", tmp_path / "feat.zarr", "--backbone", "resnet18",
                       "--weights", "none", "--device", "cpu")
    line = one_line_error(code, err)
    assert str(frames) in line and "damaged" in line and ".avi" in line
    assert not (tmp_path / "feat.zarr").exists()
    again = run(data, frames)  # a rerun is not "up to date": it rebuilds the store
    assert not again.up_to_date and any("damaged" in n for n in again.notes)
    assert store_state(frames).current


def test_a_deleted_status_chunk_never_drops_videos(data, tmp_path):
    frames = run(data, tmp_path / "f.zarr").store
    shard_files(frames, "status")[0].unlink()
    assert store_state(frames).state == "damaged"
    with pytest.raises(store.DamagedStoreError, match="no status|missing"):
        inputs.open_input(frames, "frames", "test")


def test_flipped_bytes_in_a_chunk_name_the_store_and_the_videos(data, tmp_path):
    frames = run(data, tmp_path / "f.zarr").store
    shard = shard_files(frames, "frames")[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with inputs.open_input(frames, "frames", "test") as r:  # metadata is sound: only reading finds it
        with pytest.raises(store.DamagedStoreError) as e:
            inputs.read_rows(r, 0, r["status"].shape[0])
    assert str(frames) in str(e.value) and ".avi" in str(e.value) and "Stored and computed" not in str(e.value)[:60]
    assert store_state(frames, verify=True).state == "damaged"


def test_a_zero_filled_sample_is_caught_by_its_checksum(data, tmp_path):
    """A chunk replaced by zeros (or by another sample's bytes) decodes fine: the checksum tells."""
    frames = run(data, tmp_path / "f.zarr").store
    import zarr

    arr = zarr.open_group(str(frames), mode="r+")["frames"]
    arr[1, 0] = 0
    with inputs.open_input(frames, "frames", "test") as r:
        with pytest.raises(store.DamagedStoreError, match="checksums"):
            inputs.read_rows(r, 0, 3)


def test_static_arrays_and_schema_version_are_checked(data, tmp_path):
    import zarr

    frames = run(data, tmp_path / "f.zarr").store
    g = zarr.open_group(str(frames), mode="r+")
    g["label"][0] = 2 if g["label"][0] != 2 else 1
    with pytest.raises(store.DamagedStoreError, match="label does not match its checksum"):
        inputs.open_input(frames, "frames", "test")
    frames2 = run(data, tmp_path / "g.zarr").store
    zarr.open_group(str(frames2), mode="r+").attrs["schema_version"] = 99
    with pytest.raises(store.StoreError, match="schema version 99"):
        inputs.open_input(frames2, "frames", "test")
    assert store_state(frames2).state == "incomplete"


def test_damage_inside_a_chunk_is_rebuilt_by_extract_verify_and_force(data, tmp_path):
    """A flipped byte that only reading finds: `--verify` finds and rebuilds it, `--force` rebuilds;
    an edited attribute is found without reading."""
    frames = run(data, tmp_path / "f.zarr").store
    shard = shard_files(frames, "frames")[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert run(data, frames).up_to_date  # not visible without reading ...
    again = run(data, frames, verify=True)  # ... --verify reads it
    assert not again.up_to_date and any("damaged" in n for n in again.notes)
    assert store_state(frames, verify=True).current
    assert not run(data, frames, force=True).up_to_date
    import zarr

    zarr.open_group(str(frames), mode="r+").attrs["classes"] = ["X", "Y", "Z"]
    assert store_state(frames).state == "damaged"
    assert not run(data, frames).up_to_date and store_state(frames).current


# ---- issue 28, item 13: a sample's checksum binds its row, its sample and its video ---------------

def swap_paths(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swapping")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def test_rows_swapped_with_their_checksums_are_damage_naming_both(data, tmp_path):
    """Swapping two videos' frame chunks together with their checksum chunks passed --verify: a
    checksum covered the bytes alone."""
    import numpy as np

    from trainers.data import clips, views as training_data

    frames = run(data, tmp_path / "f.zarr").store
    with store.StoreReader(frames) as r:
        assert checksums.binds(r.attrs) and r["frames"].shards[0] == 1 and r["checksum"].chunks[0] == 1  # a file a row
        videos = r.read("video")
        before = np.asarray(r["frames"][...])
    assert har("status", frames, "--verify")[0] == 0
    for name in ("frames", "checksum"):   # rows 1 and 4: each row's chunk files, as a user would move them
        swap_paths(frames / name / "c" / "1", frames / name / "c" / "4")
    with store.StoreReader(frames) as r:   # the bytes moved with their checksums: each row reads, as its neighbour
        assert np.array_equal(np.asarray(r["frames"][1]), before[4])
    code, out, _ = har("status", frames, "--verify")
    assert code == 3 and "damaged" in out and "rows 1" in out and "rows 4" in out, out
    assert videos[1] in out and videos[4] in out
    with inputs.open_input(frames, "frames", "test") as r, pytest.raises(store.DamagedStoreError, match="rows 1, 4"):
        inputs.read_rows(r, 0, len(videos))
    cs = training_data.open_view(frames, "frames")
    with pytest.raises(store.DamagedStoreError, match="video #1 does not match"):
        clips.ClipDataset(cs.path, cs.labels, cs.fingerprint)[1, 0]
    assert not run(data, frames, verify=True).up_to_date   # extract --verify finds it and rebuilds
    assert store_state(frames, verify=True).current


def test_samples_swapped_inside_a_feature_store_are_damage(tmp_path):
    import numpy as np
    import zarr
    from helpers import reversed_pair_features, write_feature_store

    from trainers.data import views as training_data

    feats, labels, groups = reversed_pair_features(videos_per_class=3, groups=3, frames=4, dim=8)
    for swap_what in ("rows", "samples"):
        path = write_feature_store(tmp_path / f"{swap_what}.zarr", feats, labels, groups, ["A", "B", "C", "D"])
        g = zarr.open_group(str(path), mode="r+")
        x, sums = np.asarray(g["features"][...]), np.asarray(g["checksum"][...])
        a, b = ((0, slice(None)), (5, slice(None))) if swap_what == "rows" else ((2, 0), (2, 1))
        g["features"][a], g["features"][b] = x[b], x[a]
        g["checksum"][a], g["checksum"][b] = sums[b], sums[a]
        state = store_state(path, verify=True)
        assert state.state == "damaged" and "checksums" in state.reason, state
        with pytest.raises(store.DamagedStoreError, match="do not match their checksums"):
            training_data.load(path)


def as_written_before_binding(path: Path) -> None:
    """Make `path` a store as har wrote it before checksums bound their place: no attr
    checksum_binding, each checksum the crc32 of the sample's bytes alone, attrs sealed."""
    import numpy as np
    import zarr

    g = zarr.open_group(str(path), mode="r+")
    name = "features" if g.attrs["kind"] == "features" else "frames"
    g["checksum"][...] = checksums.sample_checksums(np.asarray(g[name][...]))
    attrs = dict(g.attrs)
    attrs.pop("checksum_binding")
    attrs["attrs_checksum"] = checksums.attrs_checksum(attrs)
    g.attrs.clear()
    g.attrs.update(attrs)


def test_a_store_written_before_checksums_bound_their_place_still_reads_and_is_not_redone(data, tmp_path):
    """Old stores: read and verified as written; a rerun with nothing changed does nothing (the
    checksum format is no input of the fingerprint); the next rebuild writes bound checksums."""
    import numpy as np

    from trainers.data import clips, views as training_data

    frames = run(data, tmp_path / "f.zarr").store
    as_written_before_binding(frames)
    with store.StoreReader(frames) as r:
        assert not checksums.binds(r.attrs)
    assert store_state(frames, verify=True).current
    code, out, _ = har("status", frames, "--verify")
    assert code == 0 and "current" in out
    with inputs.open_input(frames, "frames", "test") as r:
        n = len(r.read("video"))
        old = inputs.read_rows(r, 0, n)
    cs = training_data.open_view(frames, "frames")
    assert np.array_equal(clips.ClipDataset(cs.path, cs.labels, cs.fingerprint)[2, 0][0].numpy(), old[2, 0])
    meta = (frames / "zarr.json").read_bytes()
    again = run(data, frames)
    assert again.up_to_date and (frames / "zarr.json").read_bytes() == meta   # nothing changed: nothing done
    feat = tmp_path / "feat.zarr"    # a feature store made from it is of the new kind
    code, _, err = har("features", "--store", frames, "--out", feat, "--backbone", "resnet18", "--weights", "none",
                       "--device", "cpu", "--resize", "stored")
    assert code == 0, err
    with store.StoreReader(feat) as r:
        assert checksums.binds(r.attrs)
    assert store_state(feat, verify=True).current

    sorted(data.rglob("*.avi"))[0].unlink()   # one video gone: rebuilt, the others copied (verified as written)
    res = run(data, frames)
    assert res.reused == n - 1 and res.decoded == 0
    with inputs.open_input(frames, "frames", "test") as r:
        assert checksums.binds(r.attrs)
        assert np.array_equal(inputs.read_rows(r, 0, n - 1), old[1:])
    assert store_state(frames, verify=True).current
