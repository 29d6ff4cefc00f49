"""Fingerprints and lineage: what an output came from, so reruns know what changed."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def fingerprint(obj: object) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys): equal content, equal fingerprint."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Source:
    path: str      # relative to the dataset root
    size: int
    mtime_ns: int
    sha256: str

    def as_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256}


def source_fingerprints(root: Path, rel_paths: list[str], known: dict[str, dict] | None = None,
                        threads: int = 4) -> list[Source]:
    """Size, mtime and content hash per file; a file whose size and mtime match `known` keeps
    its recorded hash unread, so an unchanged dataset is checked in seconds."""
    known = known or {}

    def one(rel: str) -> Source:
        st = os.stat(root / rel)
        old = known.get(rel)
        if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
            return Source(rel, st.st_size, st.st_mtime_ns, old["sha256"])
        return Source(rel, st.st_size, st.st_mtime_ns, file_sha256(root / rel))

    with ThreadPoolExecutor(threads) as pool:  # hashlib releases the GIL on large buffers
        return list(pool.map(one, rel_paths))


def git_commit() -> str | None:
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
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def har_home() -> Path:
    """Where har keeps datasets and stores: $HAR_HOME, default ~/.cache/har."""
    return Path(os.environ.get("HAR_HOME") or Path.home() / ".cache" / "har").expanduser()
