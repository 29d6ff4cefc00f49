"""Fingerprints and lineage: what an output came from, so reruns know what changed."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parents[2]  # pipeline/core/lineage.py -> the project


def fingerprint(obj: object) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys): equal content, equal fingerprint."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def seed_for(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)   # slots: 240,000 of them (Kinetics) in 130 MB, not 460
class Source:
    path: str      # relative to the dataset root
    size: int
    mtime_ns: int
    sha256: str    # "" when the file cannot be read (see `problem`)
    ctime_ns: int = 0
    inode: int = 0
    problem: str = ""  # why it cannot be read: a FIFO, a dangling symlink, ... (recorded as failed)
    etag: str = ""     # an object's content tag on object storage (with size, its change detection)

    def as_dict(self) -> dict:
        d = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "ctime_ns": self.ctime_ns,
             "inode": self.inode, "sha256": self.sha256}
        d = {**d, "etag": self.etag} if self.etag else d
        return {**d, "problem": self.problem} if self.problem else d


# a frame store keeps its sources' fingerprints in arrays `source/<field>` [N] beside `video`, in
# its order (one row per video, as the arrays they describe), never in its attrs: the attrs are
# parsed whenever the store is opened, by every task, and must not grow with the dataset
SOURCE_FIELDS = {"size": "int64", "mtime_ns": "int64", "sha256": "str", "ctime_ns": "int64", "inode": "uint64",
                 "problem": "str", "etag": "str"}   # Source's fields after path, in its order


def source_arrays(sources: list[Source]) -> dict[str, np.ndarray]:
    """{"source/<field>": [N] array} of `sources` (see SOURCE_FIELDS)."""
    return {f"source/{f}": np.array([getattr(s, f) for s in sources], dtype=object if kind == "str" else kind)
            for f, kind in SOURCE_FIELDS.items()}


def sources_from_arrays(paths, columns: dict[str, np.ndarray]) -> list[Source]:
    """The recorded sources, from `video` and the `source/<field>` arrays."""
    cols = [np.asarray(columns[f]).tolist() for f in SOURCE_FIELDS]
    return [Source(str(p), *row) for p, *row in zip(paths, *cols)]


def source_from_dict(d: dict) -> Source:
    """A source as Source.as_dict() wrote it (the attrs of a store before 2026-12-03; fields an
    older har did not record are 0 or "", so the file is hashed again)."""
    return Source(str(d["path"]), int(d.get("size") or 0), int(d.get("mtime_ns") or 0), str(d.get("sha256") or ""),
                  int(d.get("ctime_ns") or 0), int(d.get("inode") or 0), str(d.get("problem") or ""),
                  str(d.get("etag") or ""))


def special_file(st: os.stat_result) -> str:
    """"" for a regular file, else what it is: opening a FIFO or a device for reading can block forever."""
    import stat

    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(st.st_mode):
            return f"not a regular file: {what}"
    return "" if stat.S_ISREG(st.st_mode) else "not a regular file"


def source_fingerprints(root: Path, rel_paths: list[str], known: dict[str, Source] | None = None,
                        threads: int = 4) -> list[Source]:
    """Size, times, inode and content hash per file.

    Change detection, said plainly: a file whose size, mtime, ctime and inode all match `known`
    keeps its recorded hash unread (make and DVC compare less: size and mtime), so an unchanged
    dataset is checked in seconds. Rewriting a file and restoring its mtime still changes its
    ctime, which no user call can set back, so the file is hashed again. Pass known=None (the
    CLI's --verify) to hash every file. Special files (FIFO, socket, device) are never opened,
    and a dangling symlink or an unreadable file is recorded with its `problem`, never fatal."""
    known = known or {}
    from pipeline.core.location import Url

    if isinstance(root, Url):
        return _object_fingerprints(root, rel_paths, known, threads)

    def one(rel: str) -> Source:
        path = root / rel
        try:
            st = os.stat(path)  # follows symlinks: a link is judged by what it points to
        except FileNotFoundError:
            what = "a dangling symlink" if os.path.islink(path) else "gone (removed while indexing)"
            return Source(rel, 0, 0, "", problem=f"missing: {what}")
        except OSError as e:
            return Source(rel, 0, 0, "", problem=f"cannot stat: {e.strerror}")
        special = special_file(st)
        if special:
            return Source(rel, 0, 0, "", st.st_ctime_ns, st.st_ino, problem=special)
        old = known.get(rel)
        if (old and old.sha256 and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns
                and old.ctime_ns == st.st_ctime_ns and old.inode == st.st_ino):
            return Source(rel, st.st_size, st.st_mtime_ns, old.sha256, st.st_ctime_ns, st.st_ino)
        try:
            digest = file_sha256(path)
        except OSError as e:
            return Source(rel, st.st_size, st.st_mtime_ns, "", st.st_ctime_ns, st.st_ino,
                          problem=f"cannot read: {e.strerror}")
        return Source(rel, st.st_size, st.st_mtime_ns, digest, st.st_ctime_ns, st.st_ino)

    return _map_in_threads(one, rel_paths, threads)   # hashlib releases the GIL on large buffers


def _object_fingerprints(root, rel_paths: list[str], known: dict[str, Source], threads: int) -> list[Source]:
    """source_fingerprints for a dataset on object storage: size and ETag (the server's content tag)
    stand in for size, times and inode; an object whose size and ETag match `known` keeps its
    recorded hash unread, any other is hashed as it streams."""
    listed = root.listing()   # size, ETag and time of every object in one listing, not a request each

    def one(rel: str) -> Source:
        obj = root / rel
        info = listed.get(rel)
        if info is None:
            return Source(rel, 0, 0, "", problem="missing: gone (removed while indexing)")
        # the server's content tag and time: s3fs names them ETag, LastModified; gcsfs and adlfs etag, ...
        size, etag = int(info.get("size") or 0), str(info.get("ETag") or info.get("etag") or "").strip('"')
        modified = info.get("LastModified") or info.get("last_modified") or info.get("mtime")
        mtime_ns = int(modified.timestamp() * 1e9) if hasattr(modified, "timestamp") else 0
        old = known.get(rel)
        if old and old.sha256 and old.size == size and etag and old.etag == etag:
            return Source(rel, size, mtime_ns, old.sha256, etag=etag)
        h = hashlib.sha256()
        try:
            with obj.fs.open(obj.key, "rb", block_size=1 << 22) as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        except OSError as e:
            return Source(rel, size, mtime_ns, "", etag=etag, problem=f"cannot read: {e}")
        return Source(rel, size, mtime_ns, h.hexdigest(), etag=etag)

    return _map_in_threads(one, rel_paths, threads)


def _map_in_threads(fn, items: list, threads: int) -> list:
    """[fn(x) for x in items] in a pool of threads, in order, a chunk of items a task: pool.map
    submits a future per item up front (about 1.3 KB each: 300 MB for Kinetics' 240,000 files).
    Chunks of at most 256, at least four a thread (a few big files still hash in parallel)."""
    chunk = max(1, min(256, len(items) // (4 * threads)))
    parts = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    with ThreadPoolExecutor(threads) as pool:
        return [y for part in pool.map(lambda xs: [fn(x) for x in xs], parts) for y in part]


def git_commit() -> str | None:
    """The source checkout's commit (with -dirty for uncommitted changes); None for an installed
    wheel, whose folder is no checkout of har's (never another repository's commit)."""
    if not (PROJECT_DIR / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(PROJECT_DIR), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    """Versions of everything that can change the bytes we write."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("har", "av", "numpy", "zarr", "numcodecs", "h5py", "dask", "distributed", "opencv-python-headless",
                "torch", "torchvision"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        import av

        out["ffmpeg"] = {k: "%d.%d.%d" % v if isinstance(v, tuple) else str(v)
                         for k, v in av.library_versions.items()}
    except ImportError:
        pass
    out["git_commit"] = git_commit()
    out["machine"] = machine()
    return out


def machine() -> dict:
    """The hardware that computed it: the CPU's architecture and model (where the OS names it) and,
    in a process that has loaded torch (features, training; never imported here, so extract records
    no torch entry), the instruction set torch chose its CPU kernels for and the GPU in use. Another
    CPU sums floats in another order: the same code and versions can train another trajectory there
    (BENCHMARKS.md, "On another CPU"), so a result is reproduced to the digit only on the same kind."""
    out = {"arch": platform.machine(), "cpu": cpu_model()}
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            out["torch_cpu"] = torch.backends.cpu.get_cpu_capability()
        with contextlib.suppress(Exception):
            if torch.cuda.is_initialized():   # asking an uninitialised CUDA would initialise it
                out["gpu"] = torch.cuda.get_device_name()
    return out


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name: Linux's /proc/cpuinfo `model name` (x86; None where it has none, as on
    most ARM boards), Windows' processor string; None elsewhere (platform.processor() repeats the
    architecture on Linux and macOS). The standard library has no portable way."""
    if sys.platform == "win32":
        return platform.processor() or None
    with contextlib.suppress(OSError):
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def har_home() -> Path:
    """Where har keeps datasets and stores: $HAR_HOME, default ~/.cache/har."""
    return Path(os.environ.get("HAR_HOME") or Path.home() / ".cache" / "har").expanduser()
