"""Replacing a store safely: one writer at a time (`WriterLock`), the next version built in a
working store beside the target (`work_path`) that a killed run resumes (`resumable`), swapped in
when finished (`swap_in`), and what a kill left behind cleaned up (`recover`). Only files har
recognises as its own are ever removed.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from pipeline.stores.hdf5 import zarr_to_hdf5
from pipeline.core.location import Url
from pipeline.stores.store import (SCHEMA_VERSION, Layout, StoreError, StoreReader, format_of, has_results,
                            remove)


def WriterLock(store):  # noqa: N802  (a class for the caller: `with WriterLock(target):`)
    """One writer per store: an flock on a local store's `<store>.lock`, a lock object on object
    storage (`ObjectLock`)."""
    return ObjectLock(store) if isinstance(store, Url) else FileLock(store)


class FileLock:
    """An flock on `<store>.lock`, released by the OS even on kill -9."""

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


class ObjectLock:
    """One writer per store on object storage, which has no file locks: the object `<store>.lock`,
    created only if absent (an atomic create on the server), holding the writer's host, pid and a
    heartbeat it rewrites every HEARTBEAT seconds; deleted when the writer finishes. A lock whose
    writer is gone is taken over: on the same host when its pid is no longer running (a kill -9),
    from anywhere once its heartbeat is older than STALE seconds."""

    HEARTBEAT = 30.0
    STALE = 300.0

    def __init__(self, store: Url):
        self.path = Url(str(store) + ".lock")
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                           "token": self.token, "heartbeat": time.time()}).encode()

    def _stale(self, held: dict) -> bool:
        if held.get("host") == socket.gethostname():
            try:
                os.kill(int(held.get("pid", 0)), 0)
            except ProcessLookupError:
                return True    # its writer was killed: nothing else on this host holds it
            except (PermissionError, ValueError, OverflowError):
                pass
        return time.time() - float(held.get("heartbeat", 0)) > self.STALE

    def __enter__(self):
        self.started, self.token = time.time(), secrets.token_hex(8)   # the token: this lock, not another of this pid
        for _ in range(3):
            if self.path.put_if_absent(self._body()):
                break
            try:
                raw = self.path.read_bytes()
                held = json.loads(raw)
            except FileNotFoundError:
                continue        # released meanwhile: try again
            except ValueError:
                held, raw = {}, None
            if self._names_us(held):
                break           # our own create, answered 'exists' on a retry after its reply was lost
            if not self._stale(held):
                age = time.time() - float(held.get("heartbeat", 0) or 0)
                raise StoreError(f"{str(self.path)[:-5]} is being written by pid {held.get('pid', '?')} on "
                                 f"{held.get('host', '?')} (lock {self.path}, heartbeat {age:.0f} s ago); wait for it "
                                 "to finish (a second writer is refused)")
            try:   # take over a dead writer's lock, unless another writer just did
                if raw is None or self.path.read_bytes() == raw:
                    self.path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        else:
            raise StoreError(f"{self.path}: could not take the writer lock; try again")
        self._beat = threading.Thread(target=self._heartbeat, name="har-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _ours(self) -> bool:
        """Does the lock object still name this writer? (Another may have taken it over after our
        heartbeat stalled: then we neither beat nor delete it.)"""
        try:
            held = json.loads(self.path.read_bytes())
        except Exception:
            return False
        return self._names_us(held)

    def _names_us(self, held: dict) -> bool:
        return (held.get("host"), held.get("pid"), held.get("started"), held.get("token")) == (
            socket.gethostname(), os.getpid(), self.started, self.token)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT):
            try:
                if self._ours():
                    self.path.write_bytes(self._body())
            except Exception:   # a missed beat only ages the lock; the next one tries again
                pass

    def __exit__(self, *exc):
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=60)
        try:
            if self._ours():
                self.path.unlink(missing_ok=True)
        except Exception:
            pass


def work_path(target: Path) -> Path:
    """Where a stage builds the next version of `target`; a killed run resumes it."""
    return target.with_name(target.name + ".partial.zarr")


def resumable(work: Path, fingerprint: str, layout: Layout, data_name: str = "frames",
              data_tail: tuple[int, ...] | None = None) -> bool:
    """Keep a killed run's working store if it was started for the same lineage fingerprint and
    holds every array with the layout's shapes; otherwise remove it. True when it was kept."""
    if not work.exists():
        return False
    from pipeline.core.outputs import store_kind

    if store_kind(work) is None and not _zarr_only(work):  # never delete what is not ours, whatever its name
        raise StoreError(f"{work} is in the way: it is not a har working store; move it away")
    try:
        with StoreReader(work) as w:
            keep = (w.attrs.get("lineage", {}).get("fingerprint") == fingerprint
                    and w.attrs.get("schema_version") == SCHEMA_VERSION
                    and w.attrs.get("laid_out") is True   # a kill while it was created left it partial
                    and has_results(w, layout, data_name, data_tail))
    except StoreError:
        keep = False
    if not keep:
        remove(work)
    return keep


def _zarr_only(path: Path) -> bool:
    """A folder holding nothing but Zarr's own files (zarr.json, chunks under c/): what a kill
    while a working store's group is created leaves behind."""
    if isinstance(path, Url):
        keys = path.files()
        return bool(keys) and all(k.rsplit("/", 1)[-1] == "zarr.json" or "c" in k.split("/")[:-1] for k in keys)
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
    from pipeline.core.outputs import store_kind

    if isinstance(target, Url):
        work = work_path(target)
        if not (work / "zarr.json").exists():
            return
        (work_done, work_fp), (target_done, target_fp) = _state(work), _state(target)
        if not target_done:
            if work_done:
                publish(work, target)   # a kill while publishing: the working store is whole, finish it
        elif work_done and work_fp == target_fp:
            work.remove_tree()          # a kill after the marker, while the working copy was deleted
        return
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


def _state(path) -> tuple[bool, str | None]:
    """(finished, lineage fingerprint) of the store at `path`; (False, None) when there is none."""
    try:
        with StoreReader(path) as r:
            return bool(r.attrs.get("complete")), r.attrs.get("lineage", {}).get("fingerprint")
    except StoreError:
        return False, None


def publish(work: Url, target: Url) -> None:
    """Make the finished working store `work` the store at `target` on object storage, which has
    no rename: (1) the target's zarr.json says `complete: false` (readers refuse it from here on),
    (2) every other object of the working store is copied over the target's (a server-side copy),
    (3) the target's objects the new version lacks are deleted, (4) the working store's zarr.json is
    copied last (the completion marker: from here on readers see the new version, never a mix),
    (5) the working store is deleted. Each step can be repeated: `recover` redoes it after a kill."""
    fs = target.fs
    marker = target / "zarr.json"
    # an existing store's marker, or for a new one the working store's: either way the prefix is
    # recognisably har's (outputs.check_output lets the next run in to finish) and unfinished
    had_marker = marker.exists()
    meta = json.loads((marker if had_marker else work / "zarr.json").read_text())
    if meta.get("attributes", {}).get("complete") is not False or not had_marker:
        meta.setdefault("attributes", {})["complete"] = False
        marker.write_text(json.dumps(meta))
    old = target.files()
    new = work.copy_objects(target, skip=frozenset({"zarr.json"}))   # the marker is copied last, below
    stale = sorted(k for k in old if k not in new and k != "zarr.json")
    if stale:
        fs.rm([f"{target.key}/{k}" for k in stale])
    fs.cp_file(f"{work.key}/zarr.json", f"{target.key}/zarr.json")   # one object: no expansion (a LIST) as copy() does
    fs.invalidate_cache(target.key)
    work.remove_tree(listed=new)   # the listing copied from: the writer's lock keeps others out of it


def swap_in(work: Path, target: Path, fmt: str) -> None:
    """Replace `target` by the finished working store (Zarr: two renames; HDF5: a conversion
    written to a temporary file and renamed; object storage: `publish`). `recover` finishes a
    swap a kill interrupted."""
    if isinstance(target, Url):
        publish(work, target)
        return
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
