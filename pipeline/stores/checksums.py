"""The checksums of a store: what `pipeline.stores.store` writes beside the data and
`pipeline.stores.inputs` verifies on every read (docs/design.md, "Integrity").

- a sample's crc32 (`sample_checksum`; `sample_checksums` for rows of samples), bound to its
  place (row, sample and video: `BINDING`, recorded in attrs `checksum_binding`) so that samples
  moved to another row with their checksums do not verify; stores written before the binding hold
  the crc32 of the bytes alone (`binds`);
- a static array's crc32 (`array_checksum`, in attrs `static_checksums`);
- the attributes' own fingerprint (`attrs_checksum`), which seals a finished store's attrs;
- `video_table`: a store's `video` names, read once per process and store (what a bound checksum covers).

zlib's crc32 (a library, seeded with the place for bound checksums) rather than a cryptographic
hash: it detects damage and misplacement, not forgery, and costs a fraction of a read.
"""
from __future__ import annotations

import zlib

import numpy as np


# attrs `checksum_binding` of a store whose sample checksums cover their place: crc32 of
# "row/sample/video\n" followed by the sample's bytes. A store without it (har before 2026-12)
# holds the crc32 of the bytes alone: still read and verified, as it was written
BINDING = "row/sample/video"


def binds(attrs: dict) -> bool:
    """Do this store's sample checksums cover each sample's row, sample index and video?"""
    return attrs.get("checksum_binding") == BINDING


def sample_checksum(x: np.ndarray, row: int, sample: int, video=None) -> int:
    """crc32 of one sample's bytes; with its `video` name, started from its place (row, sample, video)."""
    seed = 0 if video is None else zlib.crc32(f"{row}/{sample}/{video}\n".encode())
    return zlib.crc32(np.ascontiguousarray(x), seed)


def sample_checksums(data: np.ndarray, start: int = 0, videos=None) -> np.ndarray:
    """(m, S) uint32: crc32 of each sample data[i, s] (any trailing shape), as stored bytes; with
    `videos` (the names of rows start..start+m) bound to its place, so that the same bytes in another
    row, sample or video give another checksum (rows swapped with their checksums do not verify).

    >>> x = np.zeros((2, 1, 3), np.uint8)
    >>> int(sample_checksums(x)[0, 0]) == int(sample_checksums(x)[1, 0])       # unbound: the same
    True
    >>> int(sample_checksums(x, 0, ["a", "b"])[0, 0]) == int(sample_checksums(x, 0, ["a", "b"])[1, 0])
    False
    """
    m, s = data.shape[:2]
    out = np.zeros((m, s), np.uint32)
    for i in range(m):
        for j in range(s):
            out[i, j] = sample_checksum(data[i, j], start + i, j, None if videos is None else str(videos[i]))
    return out


_NAMES: dict[tuple[str, int], np.ndarray] = {}   # (store, crc32 of its `video`) -> the names


def video_table(path, attrs: dict, read) -> np.ndarray:
    """A store's whole `video` table (`read()` reads it), once per process and store: a Zarr `video`
    is one chunk, and features reads and writes a shard at a time. Keyed by the table's recorded
    checksum, so a store replaced by one with other videos is read again; a damaged table is never
    kept."""
    crc = attrs.get("static_checksums", {}).get("video")
    key = (str(path), crc)
    names = _NAMES.get(key) if crc is not None else None
    if names is None:
        names = np.array(np.asarray(read()).tolist(), dtype=object)
        if crc is not None and array_checksum(names) == crc:
            if len(_NAMES) >= 8:
                _NAMES.pop(next(iter(_NAMES)))
            _NAMES[key] = names
    return names


def array_checksum(arr: np.ndarray) -> int:
    """crc32 of a static array's values (strings as UTF-8 lines)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OUT":
        return zlib.crc32("\n".join(str(x) for x in arr.ravel()).encode())
    return zlib.crc32(np.ascontiguousarray(arr))


def attrs_checksum(attrs: dict) -> str:
    """Fingerprint of a store's attributes other than itself (canonical JSON: Zarr and HDF5 agree)."""
    from pipeline.core.lineage import fingerprint

    return fingerprint({k: v for k, v in attrs.items() if k != "attrs_checksum"})[:16]
