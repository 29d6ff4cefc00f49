"""The damaged-store matrix: delete, truncate or flip bytes in each array's chunk files, edit the
attributes, for Zarr and HDF5, frame and feature stores. Whatever the damage, a reader either
refuses with a StoreError naming the store, or reads exactly what the undamaged store holds —
never zeros or garbage as data, never another exception."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import reversed_pair_features, write_feature_store

from pipeline.stores import inputs, store
from pipeline.stages.extract import ExtractConfig, Recipe, extract
from pipeline.stores.status import store_state

DAMAGES = ("delete", "truncate", "flip", "zero")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small frame store (Zarr and HDF5) and a feature store, never damaged themselves."""
    from pipeline.datasets.synth import SynthConfig, generate

    base = tmp_path_factory.mktemp("damage")
    generate(base / "data", SynthConfig(classes=2, groups=2, clips=1, frames=10))
    recipe = Recipe(frames=3, height=16, width=16, views=1)
    z = extract(ExtractConfig("synthetic", recipe, root=base / "data", out=base / "frames.zarr",
                              scheduler="synchronous")).store
    h = extract(ExtractConfig("synthetic", recipe, root=base / "data", out=base / "frames.h5", format="hdf5",
                              scheduler="synchronous")).store
    feats, labels, groups = reversed_pair_features(videos_per_class=6, groups=3, frames=4, dim=8)
    f = write_feature_store(base / "features.zarr", feats, labels, groups, ["A", "B", "C", "D"])
    return {"frames": z, "hdf5": h, "features": f}


def consume(path: Path, kind: str):
    """Everything a later stage reads: the data verified, every array, the attributes."""
    with inputs.open_input(path, kind, "test") as r:
        n = len(r.read("status"))
        data = inputs.read_rows(r, 0, n)
        arrays = {name: r.read(name) for name in r.names()}
        return data, arrays, r.attrs


def same(a, b) -> bool:
    (da, aa, ta), (db, ab, tb) = a, b
    return (np.array_equal(da, db) and aa.keys() == ab.keys()
            and all(np.array_equal(aa[k], ab[k]) for k in aa) and json.dumps(ta, sort_keys=True) == json.dumps(tb, sort_keys=True))


def damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "flip":
        b = bytearray(raw)
        b[len(b) // 2] ^= 0x5A
        path.write_bytes(bytes(b))
    else:  # zero: the file is there, its bytes are not
        path.write_bytes(bytes(len(raw)))


def expect_refused_or_same(path: Path, kind: str, reference) -> str:
    try:
        got = consume(path, kind)
    except store.StoreError as e:
        assert str(path) in str(e), e
        return "refused"
    assert same(got, reference), "damage read as data"
    return "same"


def chunk_files(root: Path) -> list[tuple[str, Path]]:
    """(array name, its first chunk file) for every array of a Zarr store."""
    out = []
    for meta in sorted(root.rglob("zarr.json")):
        folder = meta.parent
        c = folder / "c"
        chunks = [c] if c.is_file() else sorted(p for p in c.rglob("*") if p.is_file()) if c.exists() else []
        if chunks:
            out.append((str(folder.relative_to(root)), chunks[0]))
    return out


@pytest.mark.parametrize("which", ["frames", "features"])
@pytest.mark.parametrize("how", DAMAGES)
def test_damage_matrix_chunks(pristine, tmp_path, which, how):
    kind = "frames" if which == "frames" else "features"
    reference = consume(pristine[which], kind)
    outcomes = {}
    for name, chunk in chunk_files(pristine[which]):
        copy = tmp_path / f"{name.replace('/', '_')}.zarr"
        shutil.copytree(pristine[which], copy)
        damage(copy / chunk.relative_to(pristine[which]), how)
        outcomes[name] = expect_refused_or_same(copy, kind, reference)
        if outcomes[name] == "refused" and name in ("frames", "features", "checksum", "status", "label", "error"):
            assert store_state(copy, verify=True).state in ("damaged", "unreadable", "incomplete"), name
    assert len(outcomes) >= 10 and list(outcomes.values()).count("refused") >= len(outcomes) - 1, outcomes


@pytest.mark.parametrize("which", ["frames", "features"])
@pytest.mark.parametrize("edit", ["classes", "kind", "complete", "schema_version", "recipe", "lineage",
                                  "array metadata"])
def test_damage_matrix_attributes(pristine, tmp_path, which, edit):
    kind = "frames" if which == "frames" else "features"
    reference = consume(pristine[which], kind)
    copy = tmp_path / "s.zarr"
    shutil.copytree(pristine[which], copy)
    if edit == "array metadata":
        meta = copy / "label" / "zarr.json"
        meta.write_text(meta.read_text().replace('"int16"', '"int32"'))
    else:
        meta = copy / "zarr.json"
        doc = json.loads(meta.read_text())
        a = doc["attributes"]
        a[edit] = {"classes": ["A", "B", "C", "D", "E"], "kind": "features" if kind == "frames" else "frames",
                   "complete": False, "schema_version": 99, "recipe": {"frames": 99},
                   "lineage": {"fingerprint": "0" * 64}}[edit]
        meta.write_text(json.dumps(doc))
    assert expect_refused_or_same(copy, kind, reference) == "refused"


@pytest.mark.parametrize("how", ["truncate", "flip", "zero"])
def test_damage_matrix_hdf5(pristine, tmp_path, how):
    reference = consume(pristine["hdf5"], "frames")
    size = pristine["hdf5"].stat().st_size
    outcomes = []
    for at in (0.05, 0.3, 0.6, 0.9):  # metadata near the start, chunks further on
        copy = tmp_path / f"s{at}.h5"
        raw = bytearray(pristine["hdf5"].read_bytes())
        i = int(size * at)
        if how == "truncate":
            raw = raw[:i]
        elif how == "flip":
            raw[i] ^= 0x5A
        else:
            raw[i:i + 4096] = bytes(len(raw[i:i + 4096]))
        copy.write_bytes(bytes(raw))
        outcomes.append(expect_refused_or_same(copy, "frames", reference))
    assert "refused" in outcomes


# ---- declared shapes (issue 28, item 11): checked against the store's own lengths before any walk -----

def declare(path: Path, name: str, dim: int, value: int) -> None:
    """Edit one array's zarr.json as a hostile user would: its shape's `dim` becomes `value`."""
    meta = path / name / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][dim] = value
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize("which,name,dim,value", [
    ("frames", "frames", 0, 10**7), ("frames", "frames", 0, 10**12), ("frames", "status", 0, 10**12),
    ("frames", "checksum", 0, 10**9), ("frames", "video", 0, 10**12), ("frames", "frames", 1, 10**9),
    ("frames", "frame_idx", 2, 10**8), ("frames", "source/sha256", 0, 10**10),
    ("features", "features", 0, 10**12), ("features", "status", 0, 10**7), ("features", "features", 2, 10**9),
])
def test_a_store_declaring_huge_shapes_is_damaged_within_seconds_and_the_others_are_listed(
        pristine, tmp_path, which, name, dim, value):
    """A walk of a 10**12-video grid ran for hours (10**7: minutes) or ran out of memory, and the
    healthy store beside it was never listed."""
    import time

    from helpers import har

    kind = "frames" if which == "frames" else "features"
    bad, healthy = tmp_path / "bad.zarr", tmp_path / "healthy.zarr"
    shutil.copytree(pristine[which], bad)
    shutil.copytree(pristine["frames"], healthy)
    declare(bad, name, dim, value)
    t0 = time.perf_counter()
    code, out, err = har("status", bad, healthy, "--verify")
    assert time.perf_counter() - t0 < 20, "status walked the declared grid"
    assert code == 3 and "Traceback" not in err and "memory" not in err + out, err
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "damaged" in rows[str(bad)] and f"{name} declares" in rows[str(bad)] and str(value) in rows[str(bad)]
    assert "current" in rows[str(healthy)]
    for verify in (False, True):
        state = store_state(bad, verify=verify)
        assert state.state == "damaged" and f"{name} declares" in state.reason and str(value) in state.reason, state
    with pytest.raises(store.DamagedStoreError, match=f"{name} declares .*{value}"):
        inputs.open_input(bad, kind, "test")
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("which, videos, lineage_too", [("features", 10**5, False), ("features", 10**7, False),
                                                       ("frames", 10**6, False), ("frames", 10**6, True)])
def test_every_array_edited_to_the_same_length_is_damage_found_before_any_walk(pristine, tmp_path, which, videos,
                                                                               lineage_too):
    """Every array's N edited together (an audit found 10**5 walked for 82 s, 10**6 for over 5
    minutes): the arrays agree with one another, but their grids run past the chunk files har wrote."""
    import time

    bad, healthy = tmp_path / "bad.zarr", tmp_path / "healthy.zarr"
    shutil.copytree(pristine[which], bad)
    shutil.copytree(pristine["frames"], healthy)
    for meta in bad.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "array" and doc["shape"] and meta.parent.name not in ("classes",):
            with store.StoreReader(pristine[which]) as r:
                n = len(r.read("status"))
            if doc["shape"][0] == n:
                declare(bad, meta.parent.relative_to(bad).as_posix(), 0, videos)
    if lineage_too:   # the frame store's recorded count as well (its attrs_checksum no longer matches)
        doc = json.loads((bad / "zarr.json").read_text())
        doc["attributes"]["lineage"]["inputs"]["videos"] = videos
        (bad / "zarr.json").write_text(json.dumps(doc))
    t0 = time.perf_counter()
    from helpers import har

    code, out, _ = har("status", bad, healthy)
    assert time.perf_counter() - t0 < 20, "status walked the declared grid"
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert code == 3 and "damaged" in rows[str(bad)] and "current" in rows[str(healthy)]
    # a frame store's lineage records its videos (sealed); a feature store's grids are checked against their files
    says = ("the store holds 4 (its lineage)" if which == "frames" and not lineage_too
            else "last chunk file of that grid is missing")
    state = store_state(bad)
    assert state.state == "damaged" and says in state.reason and str(videos) in state.reason, state
    with pytest.raises(store.DamagedStoreError, match=re.escape(says)):
        inputs.open_input(bad, which, "test")


def test_a_chunk_grid_finer_than_one_file_a_sample_is_never_walked(pristine, tmp_path):
    """Shapes intact, chunks edited to one element each: a grid of millions of files is damage, not a walk."""
    bad = tmp_path / "bad.zarr"
    shutil.copytree(pristine["frames"], bad)
    meta = bad / "frames" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [1] * len(doc["shape"])
    doc["codecs"] = doc["codecs"][0]["configuration"]["codecs"]   # unsharded: the grid is the chunks
    meta.write_text(json.dumps(doc))
    state = store_state(bad)
    assert state.state == "damaged" and "frames declares" in state.reason and "chunk files" in state.reason, state


SHAPE_TABLE = [
    # (what the arrays declare, attrs, the problem expected or None)
    ({"video": ((4,), 1), "status": ((4,), 1), "frames": ((4, 2, 3, 8, 8, 3), 4)}, {}, None),
    ({"video": ((4,), 1), "status": ((10**12,), 10**10)}, {}, "status declares 1000000000000 videos; the store holds 4"),
    # the lineage's count wins over arrays that agree with each other
    ({"video": ((9,), 1), "status": ((9,), 1)}, {"lineage": {"inputs": {"videos": 4}}}, "video declares 9 videos"),
    # an older store's sources in the lineage count too
    ({"video": ((3,), 1)}, {"lineage": {"inputs": {"sources": [{}] * 2}}}, "video declares 3 videos; the store holds 2"),
    # the recipe fixes S, T, H, W
    ({"video": ((4,), 1), "frames": ((4, 2, 3, 8, 9, 3), 4)},
     {"recipe": {"clips": 1, "views": 1, "frames": 3, "height": 8, "width": 8}}, "frames declares 4x2x3x8x9x3"),
    ({"video": ((4,), 1), "features": ((4, 2, 3, 7), 4)}, {"feature_dim": 8, "recipe": {"frames": 3}},
     "features declares 4x2x3x7"),
    # without a recipe, S is the one most per-sample arrays declare
    ({"video": ((4,), 1), "checksum": ((4, 2), 1), "clip_index": ((4, 2), 1), "frames": ((4, 10**9, 3, 8, 8, 3), 4)},
     {}, "frames declares 4x1000000000"),
    ({"video": ((4,), 1), "view_params": ((4, 2, 10), 1), "checksum": ((4, 2), 1)}, {}, None),
    ({"video": ((4,), 1), "view_params": ((4, 2, 8), 1), "checksum": ((4, 2), 1)}, {}, None),   # an earlier version's
    ({"video": ((4,), 1), "view_params": ((4, 2, 10**6), 1)}, {}, "view_params declares 4x2x1000000"),
    # a grid finer than one file a sample
    ({"video": ((4,), 1), "checksum": ((4, 2), 1), "label": ((4,), 10**6)}, {}, "label declares 1000000 chunk files"),
    # a one-chunk string table longer than its file can hold (4 bytes a string at least)
    ({"video": ((4,), 1), "missing_videos": ((10**9,), 1, True, 300)}, {}, "missing_videos declares 1000000000 strings"),
    ({"video": ((4,), 1), "missing_videos": ((70,), 1, True, 300)}, {}, None),
    ({}, {}, None),   # nothing to hold it against: an empty group
]


@pytest.mark.parametrize("arrays,attrs,expected", SHAPE_TABLE)
def test_declared_shapes_table(arrays, attrs, expected):
    from pipeline.stores import shapes

    found = shapes.problems({k: shapes.Declared(*v) for k, v in arrays.items()}, attrs, "features" if "features" in arrays else "frames")
    if expected is None:
        assert found == []
    else:
        assert any(expected in p for p in found), found
