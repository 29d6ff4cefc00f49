"""A store as an input: the one place that decides whether a store may be read, and reads it
verified. Every stage and trainer opens the stores it reads with `open_input` (the finished store
of the kind it needs, this schema version, its shapes and quick checks sound) and reads data with
`read_rows` / `read_sample`, which compare every sample with its checksum (bound to its place:
row, sample, video) and turn a missing, changed or moved chunk into `DamagedStoreError`, never
into numbers. `verify` reads everything (`har extract --verify`, `har status --verify`).

The store itself (layout, writes, the reader, the schema): pipeline.stores.store; the checksums'
formulas: pipeline.stores.checksums; the declared shapes: pipeline.stores.shapes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core import location
from pipeline.core.location import Url
from pipeline.stores import checksums, shapes
from pipeline.stores.store import (PENDING, REBUILD, SCHEMA_VERSION, DamagedStoreError, StoreError, StoreReader,
                                   has_results, video_names)


def _names(videos: np.ndarray, rows, limit: int = 3) -> str:
    rows = list(rows)
    shown = ", ".join(str(videos[i]) if i < len(videos) else f"#{i}" for i in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def open_input(path: Path, kind: str, needs: str) -> StoreReader:
    """The finished `kind` store at `path`, opened to be read; StoreError saying what is
    wrong otherwise: missing, another kind, unfinished (a .partial.zarr), another schema version,
    written by an older har, damaged static arrays or a lost `status` chunk. `needs` completes
    the message for another kind: "{path} is a frames store; {needs}"."""
    path = location.of(path)
    if not path.exists():
        make = "har extract" if kind == "frames" else "har features"
        raise StoreError(f"{kind} store {path} does not exist; run `{make}` first")
    r = StoreReader(path)
    try:
        a = r.attrs
        if a.get("kind") != kind:
            raise StoreError(f"{path} is a {a.get('kind')} store; {needs}")
        if a.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {a.get('schema_version')!r}; this har reads version "
                             f"{SCHEMA_VERSION}: run the stage that made it again")
        if not a.get("complete") or path.name.endswith(".partial.zarr"):
            raise StoreError(f"{path} is unfinished (an interrupted run's working store); run the command that "
                             "made it again to finish it")
        if not has_results(r, data_name=kind):
            raise StoreError(f"{path} was written by an older har and lacks arrays; run the stage again")
        problems = quick_check(r)
        if problems:
            raise DamagedStoreError(f"{path} is damaged: {'; '.join(problems[:3])}; {REBUILD}")
    except BaseException:
        r.close()
        raise
    return r


def shape_problems(r: "StoreReader") -> list[str]:
    """What the arrays declare that the store cannot hold (`pipeline.stores.shapes`); [] when sound. Checked
    before any chunk is walked or read: a shape edited to 10**12 is damage, found in a moment."""
    data_name = "features" if r.attrs.get("kind") == "features" else "frames"
    try:
        found = shapes.declared(r)
    except StoreError as e:
        return [str(e).split(" is damaged: ", 1)[-1]]
    except Exception as e:  # metadata zarr parsed but that makes no grid (a chunk shape of 0, ...)
        return [f"array metadata unusable ({type(e).__name__}: {e})"]
    return shapes.problems(found, r.attrs, data_name)


def quick_check(r: "StoreReader") -> list[str]:
    """What is wrong with a finished store without reading its data: declared shapes against the
    store's own lengths (first: nothing is read while they are wrong), static arrays against their
    checksums, a video without status, and (Zarr) every chunk file present, since a missing one
    reads as zeros. [] when nothing is found; --verify (`verify`) reads everything."""
    problems = []
    if r.attrs.get("complete") and r.attrs.get("attrs_checksum") != checksums.attrs_checksum(r.attrs):
        problems.append("its attributes were changed since it was written (attrs_checksum)")
    shape = shape_problems(r)
    if shape:
        return problems + shape
    bad = check_static(r)
    if bad:
        problems.append(bad)
    try:
        status = r.read("status")
        videos = r.read("video")
    except Exception as e:
        return problems + [f"status or video unreadable ({type(e).__name__}: {e})"]
    pending = np.flatnonzero(status == PENDING)
    if len(pending):
        problems.append(f"{len(pending)} videos have no status ({_names(videos, pending)}): "
                        "a chunk of `status` is missing")
    missing = missing_chunks(r)
    for name, rows in sorted(missing.items()):
        problems.append(f"{name}: chunk files missing for {_names(videos, rows)}")
    return problems


def missing_chunks(r: "StoreReader") -> dict[str, list[int]]:
    """{array: first rows of the missing chunk (or shard) files} of a Zarr store; har writes every
    chunk (write_empty_chunks), so a finished store has them all. HDF5 keeps chunks inside one file."""
    if r.format != "zarr":
        return {}
    out: dict[str, list[int]] = {}
    listed = set(r.path.files()) if isinstance(r.path, Url) else None   # one listing, not a request per chunk
    for name in r.names():
        try:
            arr = r[name]
            grid_of = arr.shards or arr.chunks
            enc = arr.metadata.chunk_key_encoding
        except Exception as e:
            out.setdefault(f"{name} (metadata unreadable: {type(e).__name__})", []).append(0)
            continue
        if not arr.shape:
            continue
        grid = [-(-n // c) for n, c in zip(arr.shape, grid_of)]
        for idx in np.ndindex(*grid):
            key = f"{name}/{enc.encode_chunk_key(idx)}"
            if not (key in listed if listed is not None else (r.path / key).exists()):
                out.setdefault(name, []).append(int(idx[0]) * int(grid_of[0]))
    return out


def check_static(r: "StoreReader") -> str:
    """"" when every static array matches its recorded checksum, else what does not."""
    bad = []
    for name, crc in r.attrs.get("static_checksums", {}).items():
        try:
            ok = checksums.array_checksum(r.read(name)) == crc
        except Exception as e:  # a missing or damaged chunk or metadata file
            bad.append(f"{name} unreadable ({type(e).__name__}: {e})")
            continue
        if not ok:
            bad.append(f"{name} does not match its checksum (a chunk is missing or changed)")
    return "; ".join(bad)


def read_rows(r: "StoreReader", start: int, stop: int, status: np.ndarray | None = None) -> np.ndarray:
    """The data array's rows [start, stop), each sample checked against `checksum` (videos whose
    status is not OK carry zeros and are checked too: they were written as such)."""
    name = "features" if r.attrs.get("kind") == "features" else "frames"
    try:
        data = np.asarray(r[name][start:stop])
        sums = np.asarray(r["checksum"][start:stop])
    except Exception as e:  # zarr's crc32c / shard index / codec errors, a truncated HDF5 chunk
        raise DamagedStoreError(f"{r.path} is damaged: {name} of videos {_names(r.read('video'), range(start, stop))} "
                                f"cannot be read ({type(e).__name__}: {e}); {REBUILD}") from None
    videos = video_names(r, start, stop) if checksums.binds(r.attrs) else None
    bad = np.flatnonzero((checksums.sample_checksums(data, start, videos) != sums).any(axis=1))
    if len(bad):
        rows = ", ".join(str(i) for i in (bad + start)[:3]) + (", ..." if len(bad) > 3 else "")
        raise DamagedStoreError(f"{r.path} is damaged: {name} of {_names(r.read('video'), bad + start)} (rows {rows}) "
                                f"do not match their checksums (a chunk is missing, changed or moved); {REBUILD}")
    return data


def read_sample(arr, sums, path: Path, v: int, s: int, video: str | None = None) -> np.ndarray:
    """One sample data[v, s], checked against checksum[v, s] (`arr`, `sums` opened by the caller);
    `video`: row v's name, for a store whose checksums bind it (`binds`), else None."""
    try:
        x = np.asarray(arr[v, s])
        crc = int(sums[v, s])
    except Exception as e:
        raise DamagedStoreError(f"{path} is damaged: sample {s} of video #{v} cannot be read "
                                f"({type(e).__name__}: {e}); {REBUILD}") from None
    if checksums.sample_checksum(x, v, s, None if video is None else str(video)) != crc:
        raise DamagedStoreError(f"{path} is damaged: sample {s} of video #{v} does not match its checksum "
                                f"(a chunk is missing, changed or moved); {REBUILD}")
    return x


def verify(r: "StoreReader") -> list[str]:
    """Every problem of a store, reading all of it (har status --verify); [] when sound."""
    problems = quick_check(r)
    if shape_problems(r):   # nothing is read of a store whose shapes are wrong
        return problems
    data_name = "features" if r.attrs.get("kind") == "features" else "frames"
    try:
        for name in r.names():  # every array but the data decodes (each chunk's crc32c)
            if name != data_name:
                r.read(name)
        n = len(r.read("status"))
    except StoreError as e:
        return problems + [str(e).split(" is damaged: ", 1)[-1]]
    step = max(1, int(r["checksum"].chunks[0]) if hasattr(r["checksum"], "chunks") and r["checksum"].chunks else 1)
    for a in range(0, n, step):
        try:
            read_rows(r, a, min(n, a + step))
        except DamagedStoreError as e:
            problems.append(str(e).split(" is damaged: ", 1)[-1])
            if len(problems) > 5:
                break
    return problems
