"""The damaged-store matrix: delete, truncate or flip bytes in each array's chunk files, edit the
attributes, for Zarr and HDF5, frame and feature stores. Whatever the damage, a reader either
refuses with a StoreError naming the store, or reads exactly what the undamaged store holds —
never zeros or garbage as data, never another exception."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import reversed_pair_features, write_feature_store

from pipeline import store
from pipeline.extract import ExtractConfig, Recipe, extract
from pipeline.status import store_state

DAMAGES = ("delete", "truncate", "flip", "zero")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small frame store (Zarr and HDF5) and a feature store, never damaged themselves."""
    from pipeline.synth import SynthConfig, generate

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
    with store.open_input(path, kind, "test") as r:
        n = len(r.read("status"))
        data = store.read_rows(r, 0, n)
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
