"""`har status`: is each store current with respect to its sources and recipe?"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import datasets, lineage, store
from pipeline.extract import Recipe, build_lineage


@dataclass(frozen=True)
class StoreState:
    path: Path
    dataset: str
    kind: str
    videos: int
    ok: int
    failed: int
    bytes: int
    current: bool
    reason: str  # why it is not current ("" when it is)


def store_state(path: Path) -> StoreState:
    """Compare a store's lineage with what a rerun of the same recipe would compute now."""
    with store.StoreReader(path) as r:
        attrs = r.attrs
        status = r.read("status")
        complete = store.has_results(r, data_name="features" if attrs.get("kind") == "features" else "frames")
    lin = attrs.get("lineage", {})
    dataset = attrs.get("dataset", "?")
    base = dict(path=Path(path), dataset=dataset, kind=attrs.get("kind", "?"), videos=len(status),
                ok=int((status == store.OK).sum()), failed=int((status == store.FAILED).sum()),
                bytes=store.dir_bytes(Path(path)))
    if not complete:
        return StoreState(**base, current=False, reason="written by an older har (arrays missing); run the stage again")
    if attrs.get("kind") == "features":
        src = Path(lin.get("inputs", {}).get("frames_store", ""))
        try:
            with store.StoreReader(src) as fr:
                now_fp = fr.attrs["lineage"]["fingerprint"]
        except (store.StoreError, OSError, KeyError):
            return StoreState(**base, current=False, reason=f"frame store {src} is gone")
        if now_fp != attrs.get("frames_fingerprint"):
            return StoreState(**base, current=False, reason="its frame store changed since; run har features again")
        return StoreState(**base, current=True, reason="")
    root = Path(lin.get("inputs", {}).get("root", ""))
    try:
        index = datasets.load(dataset, root)
    except (datasets.DatasetError, OSError) as e:
        return StoreState(**base, current=False, reason=f"sources unreadable: {e}")
    old = {s["path"]: s for s in lin["inputs"]["sources"]}
    rels = [v.path for v in index.videos]
    sources = lineage.source_fingerprints(index.root, rels, old)
    now = build_lineage(index, Recipe(**attrs["recipe"]), sources)
    if now["fingerprint"] == lin.get("fingerprint"):
        return StoreState(**base, current=True, reason="")
    new = {s.path: s.sha256 for s in sources}
    added = len(set(new) - set(old))
    removed = len(set(old) - set(new))
    modified = sum(1 for p, h in new.items() if p in old and old[p]["sha256"] != h)
    parts = [f"{n} {what}" for n, what in ((added, "added"), (removed, "removed"), (modified, "modified")) if n]
    if now["manifest"] != lin.get("manifest"):
        parts.append("manifest entry changed")
    return StoreState(**base, current=False, reason="sources: " + ", ".join(parts) if parts else "lineage differs")


def find_stores() -> list[Path]:
    """Every store under $HAR_HOME/stores, newest first."""
    base = lineage.har_home() / "stores"
    found = [p for pat in ("*/*/frames.zarr", "*/*/frames.h5", "*/*/features-*.zarr") for p in base.glob(pat)
             if not p.name.endswith(".partial.zarr")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
