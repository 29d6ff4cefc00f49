"""Replacing a store safely: one writer at a time (`WriterLock`), the next version built in a
working store beside the target (`work_path`) that a killed run resumes (`resumable`), swapped in
when finished (`swap_in`), and what a kill left behind cleaned up (`recover`). Only files har
recognises as its own are ever removed.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pipeline.hdf5 import zarr_to_hdf5
from pipeline.store import (SCHEMA_VERSION, Layout, StoreError, StoreReader, format_of, has_results,
                            remove)


class WriterLock:
    """One writer per store: an flock on `<store>.lock`, released by the OS even on kill -9."""

    def __init__(self, store: Path):
        self.path = Path(str(store) + ".lock")
        self._fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"{self.path.name[:-5]} is being written by {holder}; "
                             "wait for it to finish (a second writer is refused)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def work_path(target: Path) -> Path:
    """Where a stage builds the next version of `target`; a killed run resumes it."""
    return target.with_name(target.name + ".partial.zarr")


def resumable(work: Path, fingerprint: str, layout: Layout, data_name: str = "frames",
              data_tail: tuple[int, ...] | None = None) -> bool:
    """Keep a killed run's working store if it was started for the same lineage fingerprint and
    holds every array with the layout's shapes; otherwise remove it. True when it was kept."""
    if not work.exists():
        return False
    from pipeline.outputs import store_kind

    if store_kind(work) is None and not _zarr_only(work):  # never delete what is not ours, whatever its name
        raise StoreError(f"{work} is in the way: it is not a har working store; move it away")
    try:
        with StoreReader(work) as w:
            keep = (w.attrs.get("lineage", {}).get("fingerprint") == fingerprint
                    and w.attrs.get("schema_version") == SCHEMA_VERSION
                    and has_results(w, layout, data_name, data_tail))
    except StoreError:
        keep = False
    if not keep:
        remove(work)
    return keep


def _zarr_only(path: Path) -> bool:
    """A folder holding nothing but Zarr's own files (zarr.json, chunks under c/): what a kill
    while a working store's group is created leaves behind."""
    if not path.is_dir():
        return False
    for p in path.rglob("*"):
        rel = p.relative_to(path).parts
        if p.is_file() and not (p.name == "zarr.json" or "c" in rel[:-1] or p.name.startswith(".")):
            return False
    return True


def recover(target: Path) -> None:
    """Finish a swap that a kill interrupted; drop old versions and half-written HDF5 copies left
    behind (call it holding the store's WriterLock: no other writer can be using them)."""
    from pipeline.outputs import store_kind

    for partial in target.parent.glob(target.name + ".tmp-*"):
        if partial.name.rsplit("-", 1)[-1].isdigit() and (store_kind(partial) is not None or _hdf5_file(partial)):
            remove(partial)
    work = work_path(target)
    if not target.exists() and work.exists() and format_of(target) == "zarr":
        try:
            if StoreReader(work).attrs.get("complete"):
                os.rename(work, target)
        except StoreError:
            pass
    if target.exists():
        for old in target.parent.glob(target.name + ".old-*"):
            if old.name.rsplit("-", 1)[-1].isdigit() and store_kind(old) is not None:
                remove(old)


def _hdf5_file(path: Path) -> bool:
    """An HDF5 file by its signature (a half-written copy is one before it is readable)."""
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def swap_in(work: Path, target: Path, fmt: str) -> None:
    """Replace `target` by the finished working store (Zarr: two renames; HDF5: a conversion
    written to a temporary file and renamed). `recover` finishes a swap a kill interrupted."""
    if fmt == "hdf5":
        zarr_to_hdf5(work, target)
        remove(work)
        return
    if target.exists():
        trash = target.with_name(target.name + f".old-{os.getpid()}")
        os.rename(target, trash)
        os.rename(work, target)
        remove(trash)
    else:
        os.rename(work, target)
