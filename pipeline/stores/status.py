"""`har status`: is each store current with respect to its sources and recipe, and is it sound?

States (the CLI exits 0 only when every store is `current`):
  current     finished, sound as far as checked, and its inputs have not changed;
  stale       sound, but its sources, recipe or frame store changed since (rerun the stage);
  incomplete  an interrupted run's working store, or one written by an older har;
  damaged     a chunk, an attribute or a static array is missing or changed;
  unreadable  not a har store at all, or not openable.
Without --verify the data is checked without reading it (every chunk file present, the small
arrays against their checksums); --verify reads every sample against its checksum and hashes
every source again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.datasets import datasets
from pipeline.core import lineage, location
from pipeline.stores import inputs, store
from pipeline.stages.extract import Recipe, build_lineage, recorded_sources

STATES = ("current", "stale", "incomplete", "damaged", "unreadable")


@dataclass(frozen=True)
class StoreState:
    path: Path
    dataset: str
    kind: str
    videos: int
    ok: int
    failed: int
    bytes: int
    state: str                 # one of STATES
    reason: str                # why it is not current ("" when it is)
    bad_videos: tuple[str, ...] = field(default=())

    @property
    def current(self) -> bool:
        return self.state == "current"


def store_state(path: Path, verify: bool = False) -> StoreState:
    """Check one store: soundness first (a damaged store is never called current), then whether a
    rerun of the same recipe would compute the same lineage now."""
    path = location.of(path)   # a local path or an object-storage URL
    base = dict(path=path, dataset="?", kind="?", videos=0, ok=0, failed=0, bytes=0)
    try:
        r = store.StoreReader(path)
    except (store.StoreError, OSError) as e:
        return StoreState(**base, state="unreadable", reason=str(e))
    except Exception as e:  # zarr / h5py parse errors of damaged metadata
        return StoreState(**base, state="damaged", reason=f"{type(e).__name__}: {e}")
    with r:
        attrs = r.attrs
        kind = attrs.get("kind", "?")
        # sized only once it is known to be a har store: `har status /` must not walk the disk
        base.update(dataset=attrs.get("dataset", "?"), kind=kind, bytes=store.dir_bytes(path))
        # declared shapes first: an array edited to 10**12 videos is damage found in a moment, not a
        # walk of its chunk grid or a read of terabytes
        shape = inputs.shape_problems(r)
        if shape:
            return StoreState(**base, state="damaged", reason="; ".join(shape[:3]))
        try:
            status = r.read("status")
            base.update(videos=len(status), ok=int((status == store.OK).sum()),
                        failed=int((status == store.FAILED).sum()))
        except Exception as e:
            return StoreState(**base, state="damaged", reason=f"status unreadable ({type(e).__name__}: {e})")
        if path.name.endswith(".partial.zarr") or not attrs.get("complete"):
            return StoreState(**base, state="incomplete", reason="an interrupted run's working store; "
                              "run the same command again to finish it")
        if attrs.get("schema_version") != store.SCHEMA_VERSION:
            return StoreState(**base, state="incomplete", reason=f"schema version {attrs.get('schema_version')!r}; "
                              f"this har writes {store.SCHEMA_VERSION}: run the stage again")
        if not store.has_results(r, data_name=kind):
            return StoreState(**base, state="incomplete", reason="written by an older har (arrays missing); "
                              "run the stage again")
        problems = inputs.verify(r) if verify else inputs.quick_check(r)
        if problems:  # each problem names the videos concerned
            return StoreState(**base, state="damaged", reason="; ".join(problems[:3]))
        if kind == "features":
            return _features_state(base, attrs)
        try:
            recorded = recorded_sources(r)
        except Exception as e:  # checked by quick_check, yet an older store's attrs may lack them
            return StoreState(**base, state="damaged", reason=f"recorded sources unreadable ({type(e).__name__}: {e})")
    return _frames_state(base, attrs, recorded, verify)


def _features_state(base: dict, attrs: dict) -> StoreState:
    lin = attrs.get("lineage", {})
    try:
        src = location.of(lin.get("inputs", {}).get("frames_store", ""))
    except location.LocationError as e:  # attrs are checksummed; a crafted store still gets a row
        return StoreState(**base, state="damaged", reason=f"its recorded frame store: {e}")
    try:
        with store.StoreReader(src) as fr:
            now_fp = fr.attrs["lineage"]["fingerprint"]
    except Exception:
        return StoreState(**base, state="stale", reason=f"frame store {src} is gone or unreadable")
    if now_fp != attrs.get("frames_fingerprint"):
        return StoreState(**base, state="stale", reason="its frame store changed since; run har features again")
    return StoreState(**base, state="current", reason="")


def _frames_state(base: dict, attrs: dict, recorded: list[lineage.Source], verify: bool) -> StoreState:
    lin = attrs.get("lineage", {})
    try:
        root = location.of(lin.get("inputs", {}).get("root", ""))
    except location.LocationError as e:
        return StoreState(**base, state="damaged", reason=f"its recorded dataset root: {e}")
    try:
        index = datasets.load(base["dataset"], root)
    except (datasets.DatasetError, OSError) as e:
        return StoreState(**base, state="stale", reason=f"sources unreadable: {e}")
    old = {s.path: s for s in recorded}
    rels = [v.path for v in index.videos]
    sources = lineage.source_fingerprints(index.root, rels, None if verify else old)
    now = build_lineage(index, Recipe(**attrs["recipe"]), sources)
    if now["fingerprint"] == lin.get("fingerprint"):
        return StoreState(**base, state="current", reason="")
    new = {s.path: s.sha256 for s in sources}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    modified = sorted(p for p, h in new.items() if p in old and old[p].sha256 != h)
    parts = [f"{len(n)} {what}" for n, what in ((added, "added"), (removed, "removed"), (modified, "modified")) if n]
    if now["manifest"] != lin.get("manifest"):
        parts.append("manifest entry changed")
    return StoreState(**base, state="stale", reason="sources: " + ", ".join(parts) if parts else "lineage differs",
                      bad_videos=tuple((modified + added + removed)[:5]))


def find_stores() -> list[Path]:
    """Every store under $HAR_HOME/stores, newest first (working stores too: they are reported incomplete)."""
    base = lineage.har_home() / "stores"
    found = [p for pat in ("*/*/frames.zarr", "*/*/frames.h5", "*/*/features-*.zarr", "*/*/*.partial.zarr")
             for p in base.glob(pat)]
    return sorted(set(found), key=lambda p: p.stat().st_mtime, reverse=True)
