"""Frame and feature stores: Zarr v3 (default) or HDF5 with the same names (docs/design.md has the schema).

Writers only ever write whole chunks (or whole shards) that no other task touches, so Dask
workers write in parallel with no lock, and a write killed half-way leaves the old bytes
(LocalStore renames a finished temporary file into place). `status` is written after the data
of its videos, so a video whose status is 1 is complete.

Integrity: a Zarr chunk that is missing reads as the fill value (zeros), which would be silently
wrong. So every store carries `checksum` [N, S] (crc32 of each sample's data as a reader will see
it, written with the data and before `status`), the crc32 of each static array in its attrs
(`static_checksums`), and a crc32c codec on every data chunk (damaged bytes fail to read). Readers
open inputs with `open_input` and read data with `read_rows` / `read_sample`, which verify them
(pipeline.stores.inputs; the checksums are `pipeline.stores.checksums`'); a finished store with a
pending video is damaged too (its `status` chunk is gone). A sample's checksum also covers its
place (row, sample and video: attrs `checksum_binding`), so samples moved to another row together
with their checksums are damage too; stores written before that hold the crc32 of the bytes alone
and are read as before. Before any chunk is walked or read, `open_input` checks the shapes each
array declares against the store's own lengths (`pipeline.stores.shapes`).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.decoding import augment
from pipeline.core import location
from pipeline.stores import checksums
from pipeline.core.location import Url
from pipeline.core.registry import Registry

SCHEMA_VERSION = 2  # 2: per-sample checksums, static checksums, crc32c on data chunks
PENDING, OK, FAILED = 0, 1, 2
FORMATS = Registry.of("store format", {"zarr": "Zarr v3 folder (.zarr)", "hdf5": "HDF5 file (.h5)"})
PER_VIDEO_RESULTS = ("frame_idx", "view_params", "num_frames", "fps", "error")  # written by extraction tasks, then status


class StoreError(ValueError):
    """A store that is missing, of the wrong kind, or busy; the message says which."""


class DamagedStoreError(StoreError):
    """A store whose data is missing or damaged: never turned into numbers."""


# what a damaged store's message tells the user to do (extract --verify finds every damage and
# rebuilds; --force rebuilds without looking)
REBUILD = ("rebuild it with the command that made it and --verify (har extract) or --force "
           "(har features); har never reads missing data as numbers")


def video_names(r: "StoreReader", start: int, stop: int) -> np.ndarray:
    """The `video` names of rows [start, stop): what a bound checksum covers."""
    names = checksums.video_table(r.path, r.attrs, lambda: r.read("video"))
    if len(names) < stop:
        raise DamagedStoreError(f"{r.path} is damaged: its video table has {len(names)} rows, the data {stop}; "
                                f"{REBUILD}")
    return names[start:stop]


def _zarr():
    """zarr, with har's lossy frame codec registered (any process may open a --lossy store)."""
    import zarr

    import pipeline.stores.codecs  # noqa: F401  registers "har.jpeg"

    # we always write whole chunks of real data: skip zarr's per-chunk "is it all fill value?"
    # comparison, which cost more than compressing the chunk (a third of the write time)
    zarr.config.set({"array.write_empty_chunks": True})
    return zarr


def format_of(path: Path) -> str:
    return "hdf5" if location.of(path).suffix.lower() in (".h5", ".hdf5") else "zarr"


def choose_format(fmt: str | None, out: Path | None) -> str:
    """The store format for `--format fmt` and `--out out`: given, else out's (.h5: hdf5), else zarr;
    ValueError when fmt is unknown or out's suffix says another format."""
    if fmt is None:
        return format_of(out) if out is not None else "zarr"
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    if out is not None and location.of(out).suffix and format_of(out) != fmt:
        raise ValueError(f"--out {out} does not look like a {fmt} store; use a .zarr folder or an .h5 file to "
                         "match --format")
    return fmt


@dataclass(frozen=True)
class Layout:
    videos: int   # N
    samples: int  # S = clips x (1 + views)
    frames: int   # T
    height: int
    width: int
    batch: int    # videos per task, per shard and per chunk of the per-video arrays

    def batches(self) -> list[tuple[int, int]]:
        return [(b, min(b + self.batch, self.videos)) for b in range(0, self.videos, self.batch)]


def choose_batch(videos: int, bytes_per_video: int, max_bytes: int = 96 << 20, max_batch: int = 64,
                 min_tasks: int = 16) -> int:
    """Videos per task: big enough to keep file counts low (hundreds of files for UCF50), small
    enough that a task's frames fit comfortably in a worker's memory and that small datasets
    still give every worker something to do. Depends on the data only, never on worker count,
    so every run of a recipe lays out the store the same way."""
    by_memory = max(1, max_bytes // max(1, bytes_per_video))
    by_spread = max(1, -(-videos // min_tasks))
    return int(max(1, min(max_batch, by_memory, by_spread)))


def _frame_codecs(lossy: bool):
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

    if lossy:
        from pipeline.stores.codecs import JpegCodec

        return {"serializer": JpegCodec(), "compressors": [Crc32cCodec()]}
    # bit-shuffled zstd level 1: on video frames both smaller and ~4x faster than plain zstd 3
    # (measured on 224 px frames: 1.58x at 700 MB/s vs 1.49x at 190 MB/s; 1 MiB blocks). 4 MiB
    # blocks compress 5 % faster and 0.6 % smaller but cost each worker ~65 MiB more memory and
    # nothing measurable end to end (BENCHMARKS.md)
    return {"compressors": [BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.bitshuffle, typesize=1,
                                       blocksize=1 << 20), Crc32cCodec()]}


def create_zarr(path: Path, layout: Layout, static: dict[str, np.ndarray], attrs: dict,
                lossy: bool = False, data_name: str = "frames", data_dtype: str = "uint8",
                data_tail: tuple[int, ...] | None = None, results: bool = True,
                status: np.ndarray | None = None) -> None:
    """An empty store: the data array (one chunk per sample, one shard per batch), the per-video
    result arrays when `results` (chunked by batch, written by the tasks), `status` (0 pending
    unless given), the static arrays (one chunk each) and the attrs."""
    zarr = _zarr()
    from zarr.codecs import BloscCodec, Crc32cCodec

    n, s, t, b = layout.videos, layout.samples, layout.frames, layout.batch
    tail = data_tail if data_tail is not None else (layout.height, layout.width, 3)
    # the attrs (kind first of all) go in with the group: a kill while the arrays are created leaves
    # a working store that is recognisably har's, so the next run may remove it
    sums = {name: checksums.array_checksum(arr) for name, arr in static.items()}
    root = zarr.create_group(str(path), zarr_format=3, overwrite=True,
                             attributes={**attrs, "static_checksums": sums, "checksum_binding": checksums.BINDING},
                             **location.storage_options(location.of(path)))
    small = {"compressors": [BloscCodec(cname="zstd", clevel=5), Crc32cCodec()]}  # every chunk checked on read
    checked = small
    root.create_array(data_name, shape=(n, s, t, *tail), dtype=data_dtype, chunks=(1, 1, t, *tail),
                      shards=(b, s, t, *tail), fill_value=0, **(_frame_codecs(lossy) if data_name == "frames" else checked))
    root.create_array("checksum", shape=(n, s), dtype="uint32", chunks=(b, s), fill_value=0, **small)
    if results:
        root.create_array("frame_idx", shape=(n, s, t), dtype="int32", chunks=(b, s, t), fill_value=-1, **small)
        # each sample's crop box, flip and jitter (augment.FIELDS order)
        nf = len(augment.FIELDS)
        root.create_array("view_params", shape=(n, s, nf), dtype="float32", chunks=(b, s, nf), fill_value=0.0, **small)
        root.create_array("num_frames", shape=(n,), dtype="int32", chunks=(b,), fill_value=0, **small)
        root.create_array("fps", shape=(n,), dtype="float32", chunks=(b,), fill_value=0.0, **small)
        root.create_array("error", shape=(n,), dtype=str, chunks=(b,), fill_value="", compressors=[Crc32cCodec()])
    st = root.create_array("status", shape=(n,), dtype="int8", chunks=(b,), fill_value=PENDING, **small)
    if status is not None:
        st[:] = status
    for name, arr in static.items():
        arr = np.asarray(arr)
        dtype = str if arr.dtype.kind in "OUT" else arr.dtype
        a = root.create_array(name, shape=arr.shape, dtype=dtype, chunks=arr.shape or (1,),
                              **({"compressors": [Crc32cCodec()]} if dtype is str else small))
        a[...] = arr


def write_batch(path: Path, start: int, data: dict[str, np.ndarray], data_name: str = "frames",
                videos=None) -> None:
    """Write results for videos [start, start+len): the data, the per-video arrays, status last.
    `videos`: the names of these rows (read from the store when not given), which the checksums of
    a store with `checksum_binding` cover; a working store an older har began keeps its own kind."""
    root = _zarr().open_group(str(path), mode="r+", zarr_format=3, **location.storage_options(location.of(path)))
    stop = start + len(data["status"])
    for name in (data_name, *PER_VIDEO_RESULTS):
        if name in data:
            root[name][start:stop] = data[name]
    arr = root[data_name]
    lossy = any(type(c).__name__ == "JpegCodec" for c in _codecs_of(arr))
    attrs = dict(root.attrs)
    if checksums.binds(attrs):
        if videos is None:
            videos = checksums.video_table(path, attrs, lambda: root["video"][...])[start:stop]
        if len(videos) != stop - start:
            raise ValueError(f"write_batch: {len(videos)} video names for rows {start}..{stop - 1}")
    else:
        videos = None
    # the checksum of what a reader will see: a lossy codec's decoded bytes, read back
    seen = np.asarray(arr[start:stop]) if lossy else data[data_name]
    root["checksum"][start:stop] = checksums.sample_checksums(seen, start, videos)
    root["status"][start:stop] = data["status"]


def _codecs_of(arr) -> list:
    """Every codec of a Zarr array, inside its sharding codec too."""
    out = []
    for c in getattr(arr.metadata, "codecs", ()):
        out.append(c)
        out.extend(getattr(c, "codecs", ()))
    return out


def has_results(reader: "StoreReader", layout: Layout | None = None, data_name: str = "frames",
                data_tail: tuple[int, ...] | None = None) -> bool:
    """Does this store hold every array a stage's tasks write (with the layout's shapes)?
    A store written by an older har may not; it is then neither resumed nor copied from."""
    names = set(reader.names())
    if not {data_name, "status", "checksum", *PER_VIDEO_RESULTS} <= names:
        return False
    if layout is None:
        return True
    tail = data_tail if data_tail is not None else (layout.height, layout.width, 3)
    return (reader[data_name].shape == (layout.videos, layout.samples, layout.frames, *tail)
            and reader["status"].shape == (layout.videos,))


def mark_laid_out(path: Path) -> None:
    """Flag a working store whose every array and static value is written (what a task does not
    write): only such a store is resumed after a kill (swap.resumable); one killed while it was
    being created is made again."""
    _zarr().open_group(str(path), mode="r+", zarr_format=3,
                       **location.storage_options(location.of(path))).attrs.update({"laid_out": True})


def mark_complete(path: Path) -> None:
    """Flag a working store whose every video is done (a kill after this only needs the swap), and
    seal its attrs: `attrs_checksum` covers every other attribute, so an edited attribute (classes,
    recipe, lineage) is damage that readers refuse."""
    group = _zarr().open_group(str(path), mode="r+", zarr_format=3, **location.storage_options(location.of(path)))
    attrs = {k: v for k, v in group.attrs.items() if k != "attrs_checksum"}
    attrs["complete"] = True
    group.attrs.update({"complete": True, "attrs_checksum": checksums.attrs_checksum(attrs)})


class StoreReader:
    """Read-only view of a Zarr or HDF5 store: `reader["frames"][i]`, `reader.attrs`.

    A Zarr store's list of arrays and each array's metadata (shape, chunks, codecs) are read once
    per reader and kept; chunks are read each time. Zarr reads an array's metadata on every lookup,
    and har's checks look the same arrays up several times: one request each on object storage."""

    def __init__(self, path: Path):
        self.path = location.of(path)
        self.format = format_of(self.path)
        if not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        if self.format == "hdf5" and isinstance(self.path, Url):
            raise StoreError(f"{self.path}: an HDF5 store cannot be read from object storage; allowed there: Zarr "
                             "stores (.zarr)")
        if self.format == "hdf5":
            import h5py

            try:
                self._h5 = h5py.File(self.path, "r")
                self.attrs = {k: json.loads(v) for k, v in self._h5.attrs.items()}
            except Exception as e:  # truncated or foreign file, damaged attributes
                raise StoreError(f"{self.path} is not a readable har store ({type(e).__name__}: {e})") from None
        else:
            try:
                self._root = _zarr().open_group(str(self.path), mode="r", zarr_format=3,
                                                **location.storage_options(self.path))
            except Exception as e:  # not a zarr v3 group
                raise StoreError(f"{self.path} is not a har store: {e}") from None
            self.attrs = dict(self._root.attrs)
            self._arrays: dict = {}        # name -> zarr array, as looked up
            self._names: list[str] | None = None
        if self.attrs.get("kind") not in ("frames", "features"):
            raise StoreError(f"{self.path} is not a har store (attrs kind={self.attrs.get('kind')!r})")

    def _damaged(self, what: str, e: Exception) -> "DamagedStoreError":
        return DamagedStoreError(f"{self.path} is damaged: {what} cannot be read ({type(e).__name__}: {e}); "
                                 f"{REBUILD}")

    def names(self) -> list[str]:
        try:
            return self._list()
        except StoreError:
            raise
        except Exception as e:  # a damaged array's metadata: zarr and h5py raise many kinds
            raise self._damaged("the list of arrays", e) from None

    def _list(self) -> list[str]:
        if self.format == "hdf5":
            out: list[str] = []
            self._h5.visit(lambda n: out.append(n) if hasattr(self._h5[n], "shape") else None)
            return sorted(out)
        if self._names is None:   # members(), once: arrays() and groups() each read every child's metadata
            zarr, found = _zarr(), {}
            for name, m in self._root.members():
                if isinstance(m, zarr.Group):
                    found.update((f"{name}/{a}", arr) for a, arr in m.members() if isinstance(arr, zarr.Array))
                elif isinstance(m, zarr.Array):
                    found[name] = m
            self._arrays.update(found)
            self._names = sorted(n for n in found if "/" not in n) + sorted(n for n in found if "/" in n)
        return list(self._names)

    def __getitem__(self, name: str):
        try:
            if self.format == "hdf5":
                ds = self._h5[name]
                return ds.asstr() if ds.dtype.kind == "O" else ds
            if name not in self._arrays:
                self._arrays[name] = self._root[name]
            return self._arrays[name]
        except KeyError:
            raise
        except Exception as e:
            raise self._damaged(f"array {name}", e) from None

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Array `name` as numpy, or its rows [start, stop) (only their chunks are read)."""
        try:
            out = np.asarray(self[name][...] if start is None and stop is None else self[name][start:stop])
        except (StoreError, KeyError):
            raise
        except Exception as e:  # crc32c mismatch, a truncated chunk, a codec error
            raise self._damaged(f"array {name}", e) from None
        return np.array(out.tolist(), dtype=object) if out.dtype.kind in "OT" else out

    def close(self) -> None:
        if self.format == "hdf5":
            self._h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def dir_bytes(path: Path) -> int:
    """Bytes on disk of a store (a Zarr folder or an HDF5 file; the objects under a URL)."""
    path = location.of(path)
    if isinstance(path, Url):
        return sum(path.files().values())
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def remove(path: Path) -> None:
    path = location.of(path)
    if isinstance(path, Url):
        path.remove_tree()
        return
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
