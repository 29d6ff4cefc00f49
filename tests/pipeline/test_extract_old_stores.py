"""Extraction over stores it did not just write: stores of earlier har versions and layouts (updated
or rebuilt, never resumed half-made), records of the sources kept out of the root attrs, and damaged
records or chunks (damage, decoded again)."""
import os
import shutil
import time

import pytest
from helpers import assert_same_arrays, store_arrays as arrays

from pipeline.stores import checksums
from pipeline.stages.extract import ExtractConfig, Recipe, extract, recorded_sources
from pipeline.stores.status import store_state
from pipeline.stores.store import StoreReader

SMALL = Recipe(frames=8, height=32, width=40, views=1)


def run(root, out=None, recipe=SMALL, **kw):
    return extract(ExtractConfig("synthetic", recipe, root=root, out=out, scheduler="synchronous", **kw))


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_store_of_an_earlier_version_with_8_view_fields_is_updated_not_broken(synthetic_root, tmp_path):
    """Stores written before rotation and vflip existed hold view_params [N, S, 8]; the same recipe
    keeps its fingerprint, so a changed video updates that store: reused rows get 0 rotation and
    no vflip, and the result equals a fresh extraction."""
    import zarr

    root = copy_dataset(synthetic_root, tmp_path / "data")
    out = tmp_path / "s.zarr"
    run(root, out)
    g = zarr.open_group(str(out), mode="r+")
    old = g["view_params"][...]
    del g["view_params"]
    a = g.create_array("view_params", shape=(*old.shape[:2], 8), dtype="float32", chunks=g["status"].chunks + old.shape[1:2] + (8,),
                       fill_value=0.0)
    a[...] = old[..., :8]
    shutil.copy(root / "Grow" / "v_Grow_g02_c02.avi", root / "Grow" / "v_Grow_g01_c01.avi")
    res = run(root, out)
    assert (res.decoded, res.reused) == (1, 23)
    assert_same_arrays(arrays(out), arrays(run(root, tmp_path / "fresh.zarr").store))


def test_the_root_attrs_do_not_grow_with_the_dataset(synthetic_root, tmp_path):
    """Every task parses the store's root zarr.json: per-video lineage lives in arrays source/*, so
    halving the dataset leaves its size as it is (it grew 320 bytes a video before)."""
    big = run(synthetic_root, tmp_path / "big.zarr").store
    root = copy_dataset(synthetic_root, tmp_path / "data")
    for f in sorted(root.rglob("*.avi"))[::2]:
        f.unlink()
    small = run(root, tmp_path / "small.zarr")
    assert small.ok == 12 and len(small.failed) == 0
    sizes = [len((p / "zarr.json").read_bytes()) for p in (big, small.store)]
    assert abs(sizes[0] - sizes[1]) < 64, sizes   # the root paths differ; 12 videos' lineage was 3,800 bytes


def _to_attrs_layout(out):
    """Rewrite a store as har <= 2026-12-02 wrote it: its sources in lineage.inputs, no arrays source/*."""
    import zarr

    from pipeline.core import lineage

    with StoreReader(out) as r:
        sources = [s.as_dict() for s in recorded_sources(r)]
    g = zarr.open_group(str(out), mode="r+")
    del g["source"]
    attrs = dict(g.attrs)
    attrs["lineage"]["inputs"] = {"root": attrs["lineage"]["inputs"]["root"], "sources": sources}
    attrs["static_checksums"] = {k: v for k, v in attrs["static_checksums"].items() if not k.startswith("source/")}
    attrs["attrs_checksum"] = checksums.attrs_checksum(attrs)
    g.attrs.put(attrs)
    assert lineage.SOURCE_FIELDS and not any(n.startswith("source/") for n in StoreReader(out).names())


def test_a_store_with_its_sources_in_the_attrs_stays_current_and_is_updated(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    out = tmp_path / "s.zarr"
    run(root, out)
    _to_attrs_layout(out)
    assert store_state(out).current
    os.utime(root / "Grow" / "v_Grow_g01_c01.avi", (time.time() + 100, time.time() + 100))
    assert run(root, out).up_to_date   # its recorded hashes were read: a touched file is not decoded
    shutil.copy(root / "Grow" / "v_Grow_g02_c02.avi", root / "Grow" / "v_Grow_g01_c01.avi")
    assert store_state(out).reason == "sources: 1 modified"
    res = run(root, out)
    assert (res.decoded, res.reused) == (1, 23)
    assert_same_arrays(arrays(out), arrays(run(root, tmp_path / "fresh.zarr").store))
    with StoreReader(out) as r:
        assert "sources" not in r.attrs["lineage"]["inputs"] and "source/sha256" in r.names()


def test_an_edited_recorded_hash_is_damage(synthetic_root, tmp_path):
    import zarr

    out = run(synthetic_root, tmp_path / "s.zarr").store
    g = zarr.open_group(str(out), mode="r+")
    sha = g["source/sha256"][...]
    sha[3] = "0" * 64
    g["source/sha256"][...] = sha
    state = store_state(out)
    assert state.state == "damaged" and "source/sha256" in state.reason


@pytest.mark.parametrize("array", ["video", "source/sha256", "fps"])
def test_a_rerun_over_a_damaged_chunk_decodes_again_and_never_stops(synthetic_root, tmp_path, array):
    """A flipped byte in a static array (the sources' record too) makes the store damaged: rebuilt.
    One in a per-video result (found only by --verify) is met when a rerun copies that row: the
    video is decoded again, never copied, and the run goes on."""
    root = copy_dataset(synthetic_root, tmp_path / "data")
    out = run(root, tmp_path / "s.zarr").store
    chunk = next(p for p in sorted((out / array / "c").rglob("*")) if p.is_file())
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    chunk.write_bytes(bytes(raw))
    shutil.copy(root / "Grow" / "v_Grow_g02_c02.avi", root / "Grow" / "v_Grow_g01_c01.avi")
    res = run(root, out)
    assert res.ok == 24 and not res.failed
    if array == "fps":
        assert res.decoded > 1   # the changed one and those whose damaged row was not copied
    else:
        assert res.decoded == 24 and any("is damaged" in n for n in res.notes)
    assert_same_arrays(arrays(out), arrays(run(root, tmp_path / "fresh.zarr").store))


def test_stores_from_an_older_layout_are_rebuilt_not_resumed(synthetic_root, tmp_path):
    """A store (or a killed run's working store) missing an array the tasks write, as one from an
    older har would, is neither resumed, copied from, nor taken as up to date."""
    out = tmp_path / "s.zarr"
    run(synthetic_root, out)
    shutil.rmtree(out / "view_params")
    assert "older har" in store_state(out).reason
    res = run(synthetic_root, out)
    assert not res.up_to_date and (res.decoded, res.reused) == (24, 0) and "view_params" in arrays(out)
    # the same for a working store left behind by a kill
    shutil.copytree(out, tmp_path / "t.zarr.partial.zarr")
    shutil.rmtree(tmp_path / "t.zarr.partial.zarr" / "view_params")
    res = run(synthetic_root, tmp_path / "t.zarr")
    assert res.decoded == 24 and not res.failed
    assert_same_arrays(arrays(out), arrays(tmp_path / "t.zarr"))


def test_a_working_store_killed_while_it_was_created_is_made_again_not_resumed(synthetic_root, tmp_path):
    """A kill inside create_zarr leaves a working store with its attrs but without some static arrays
    (its splits): resuming it would publish a store without them. Only a working store marked
    laid out is resumed."""
    import zarr

    out = tmp_path / "s.zarr"
    run(synthetic_root, out)
    work = tmp_path / "t.zarr.partial.zarr"
    shutil.copytree(out, work)
    g = zarr.open_group(str(work), mode="r+")
    attrs = dict(g.attrs)
    attrs.pop("laid_out")
    attrs["complete"] = False
    g.attrs.clear()
    g.attrs.update(attrs)
    shutil.rmtree(work / "split")
    res = run(synthetic_root, tmp_path / "t.zarr")
    assert res.decoded == 24 and not res.failed
    assert_same_arrays(arrays(out), arrays(tmp_path / "t.zarr"))
