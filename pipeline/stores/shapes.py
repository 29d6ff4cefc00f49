"""Declared shapes against a store's own lengths: the check made before any chunk is walked or read.

A Zarr array's shape is a number in its zarr.json. Edited to 10**12 videos, a walk of its chunk
grid runs for hours (or exhausts memory) and a read allocates terabytes; so every check of a
store first compares what each array declares with what the store itself says it holds:

- N, its videos: `lineage.inputs.videos` of a frame store (sealed by `attrs_checksum`), else the
  length most of its per-video arrays agree on;
- S, T, H, W, D from its recipe and `feature_dim` when recorded (S and T, else, are the ones most
  arrays declare);
- at most one chunk (or shard) file per sample in any array's grid (the finest har writes);
- a string array in one chunk needs 4 bytes of that chunk file per string (vlen-utf8 writes each
  string's length), so a `video` table or `missing_videos` declared longer than its file is caught
  too.

`problems` is pure: what the metadata declares (`Declared`) and the attrs in, problems out;
`declared` gathers it from a store's metadata (and, for a one-chunk string array, its file size).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.core.location import Url


class Reader(Protocol):
    """What `declared` reads of an open store (pipeline.stores.store.StoreReader): a protocol, so
    that this module and the store's never import each other, not even for type checking."""
    path: Path | Url
    format: str

    def names(self) -> list[str]: ...

    def __getitem__(self, name: str): ...

PER_VIDEO = ("video", "label", "group", "num_frames", "fps", "status", "error")  # and split/*, source/*
PER_SAMPLE = ("checksum", "clip_index", "view_index")                           # (N, S)
VIEW_PARAMS_WIDTHS = (8, 10)   # view_params fields: stores before rotation and vflip have the first 8
VLEN_BYTES = 4                 # bytes vlen-utf8 writes per string at least (its length)
STRING_CODECS = {"VLenUTF8Codec", "VLenBytesCodec"}
AS_WRITTEN = STRING_CODECS | {"Crc32cCodec"}   # codecs that keep every byte: no compressor


@dataclass(frozen=True)
class Declared:
    shape: tuple[int, ...]
    cells: int                        # chunk (or shard) files its grid names; 1 for HDF5
    string: bool = False
    chunk_bytes: int | None = None    # a one-chunk array's chunk file size (None: several chunks, or unknown)
    last_present: bool | None = None  # whether its grid's last chunk (or shard) file exists (None: not looked)


def per_video(name: str) -> bool:
    return name in PER_VIDEO or name.startswith(("split/", "source/"))


def recorded_videos(attrs: dict) -> int | None:
    """The number of videos a frame store's lineage records (None when it records none)."""
    inputs = (attrs.get("lineage") or {}).get("inputs") or {}
    n = inputs.get("videos")
    if isinstance(inputs.get("sources"), list):   # a store of har <= 2026-12-02
        n = len(inputs["sources"])
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def videos_of(declared: dict[str, Declared], attrs: dict) -> tuple[int | None, str]:
    """(N, where it comes from): the lineage's count, else the length most per-video arrays declare
    (a tie goes to the shorter). (None, "") when the store has neither."""
    n = recorded_videos(attrs)
    if n is not None:
        return n, "its lineage"
    n = _most_common(d.shape[0] for name, d in declared.items() if per_video(name) and len(d.shape) == 1)
    return (n, "its per-video arrays") if n is not None else (None, "")


def _most_common(values) -> int | None:
    """The value most often seen (a tie goes to the smallest); None for none."""
    counts = Counter(values)
    if not counts:
        return None
    best = max(counts.values())
    return min(k for k, c in counts.items() if c == best)


def expected_tail(attrs: dict, data_name: str) -> dict[str, tuple[int | None, ...]]:
    """Each array's dims after N that the attrs fix (None: not recorded; `problems` takes S and T
    from the arrays then, leaves the others free, and the grid bound still holds)."""
    r = attrs.get("recipe") if isinstance(attrs.get("recipe"), dict) else {}

    def num(v):
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    clips, views = num(r.get("clips")), num(r.get("views"))
    s = clips * (1 + views) if clips is not None and views is not None else None
    t, h, w = num(r.get("frames")), num(r.get("height")), num(r.get("width"))
    tail = (t, h, w, 3) if data_name == "frames" else (t, num(attrs.get("feature_dim")))
    return {data_name: (s, *tail), "frame_idx": (s, t), **{name: (s,) for name in PER_SAMPLE}}


def _fmt(shape) -> str:
    return "x".join(str(d) if d is not None else "?" for d in shape)


def problems(declared: dict[str, Declared], attrs: dict, data_name: str) -> list[str]:
    """What the declared shapes get wrong, each naming the array and what the store holds; [] when
    every shape agrees with the store's own lengths and no grid is larger than one file a sample.

    >>> ok = {"video": Declared((4,), 1), "status": Declared((4,), 1)}
    >>> problems({**ok, "status": Declared((10**12,), 10**10)}, {}, "frames")
    ['status declares 1000000000000 videos; the store holds 4 (its per-video arrays)']
    """
    out: list[str] = []
    n, source = videos_of(declared, attrs)
    if n is None:
        return out
    tails = expected_tail(attrs, data_name)
    # S and T: the recipe's when recorded, else the ones most arrays declare (a tie: the smaller)
    s_data = tails["checksum"][0]
    if s_data is None:
        s_data = _most_common(d.shape[1] for name, d in declared.items()
                              if (name in tails or name == "view_params") and len(d.shape) > 1)
    t = tails["frame_idx"][1]
    if t is None:
        t = _most_common(d.shape[2] for name, d in declared.items()
                         if name in (data_name, "frame_idx") and len(d.shape) > 2)
    # a video backbone's features hold its temporal tokens, not the stored frames (attrs clip.positions)
    clip = attrs.get("clip") if data_name == "features" and isinstance(attrs.get("clip"), dict) else {}
    positions = clip.get("positions") if isinstance(clip.get("positions"), int) else None
    tails = {name: (s_data, positions if name == data_name and positions else t, *want[2:])
             if name in (data_name, "frame_idx") else (s_data, *want[1:]) for name, want in tails.items()}
    for name, d in sorted(declared.items()):
        if per_video(name) or name in tails:
            if not d.shape or d.shape[0] != n:
                out.append(f"{name} declares {d.shape[0] if d.shape else 0} videos; the store holds {n} ({source})")
                continue
        want = tails.get(name)
        if want is not None:
            got = d.shape[1:]
            if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
                out.append(f"{name} declares {_fmt(d.shape)}; the store holds {_fmt((n, *want))}")
                continue
        elif name == "view_params":
            if len(d.shape) != 3 or d.shape[0] != n or (s_data is not None and d.shape[1] != s_data) \
                    or d.shape[2] not in VIEW_PARAMS_WIDTHS:
                out.append(f"view_params declares {_fmt(d.shape)}; the store holds "
                           f"{_fmt((n, s_data))}x{' or '.join(map(str, VIEW_PARAMS_WIDTHS))}")
                continue
        finest = max(1, n * (s_data or 1))
        if d.cells > finest:
            out.append(f"{name} declares {d.cells} chunk files; the store has at most {finest} "
                       f"(one a sample of {n} videos)")
        elif d.string and d.chunk_bytes is not None and d.chunk_bytes < VLEN_BYTES * math.prod(d.shape):
            out.append(f"{name} declares {math.prod(d.shape)} strings in a chunk file of {d.chunk_bytes} bytes")
        elif d.last_present is False and attrs.get("complete"):
            # har writes every chunk of a finished store: a grid running past its files was edited longer
            out.append(f"{name} declares {_fmt(d.shape)} but the last chunk file of that grid is missing "
                       "(a shape edited longer, or a store cut short)")
    return out


def declared(r: Reader) -> dict[str, Declared]:
    """What each array of the store declares (shape, grid, a one-chunk string array's file size),
    from its metadata alone: nothing here reads or walks chunks. ValueError for a grid that cannot be."""
    out = {}
    sizes = r.path.files() if r.format == "zarr" and isinstance(r.path, Url) else None   # one listing
    for name in r.names():
        arr = r[name]
        shape = tuple(int(x) for x in arr.shape)
        if r.format != "zarr":   # HDF5 keeps its chunks inside the file: no grid to walk
            out[name] = Declared(shape, 1)
            continue
        grid_of = tuple(int(c) for c in (arr.shards or arr.chunks))
        if len(grid_of) != len(shape) or min(grid_of, default=1) < 1:
            raise ValueError(f"{name} declares chunks of {grid_of} for its shape {shape}")
        grid = [-(-n // c) for n, c in zip(shape, grid_of)]
        cells = math.prod(grid)
        codecs = set()
        for c in getattr(arr.metadata, "codecs", ()):   # a sharding codec's inner codecs too
            codecs |= {type(c).__name__, *(type(i).__name__ for i in getattr(c, "codecs", ()))}
        string = bool(codecs & STRING_CODECS)
        size = None
        if string and cells == 1 and codecs <= AS_WRITTEN:
            key = f"{name}/{arr.metadata.chunk_key_encoding.encode_chunk_key((0,) * len(shape))}"
            if sizes is not None:
                size = sizes.get(key)
            elif (r.path / key).is_file():
                size = (r.path / key).stat().st_size
        last = None
        if grid and min(grid) > 0:   # one look per array: its grid's last cell
            key = f"{name}/{arr.metadata.chunk_key_encoding.encode_chunk_key(tuple(g - 1 for g in grid))}"
            last = key in sizes if sizes is not None else (r.path / key).is_file()
        out[name] = Declared(shape, cells, string, size, last)
    return out
