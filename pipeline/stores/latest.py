"""Which store is the latest of a dataset: a small JSON pointer per dataset and kind under
$HAR_HOME/stores, what later stages find by name (`--dataset ucf50`).
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.files import replace_atomically
from pipeline.stores.store import StoreError


def _pointer(dataset: str, kind: str) -> Path:
    from pipeline.core.lineage import har_home

    return har_home() / "stores" / dataset / f"latest-{kind}.json"


def point_latest(dataset: str, kind: str, target: Path, **extra) -> None:
    """Record `target` as the latest `kind` store of `dataset` (what later stages find by name)."""
    from pipeline.core.lineage import now

    pointer = _pointer(dataset, kind)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(pointer, lambda tmp: tmp.write_text(json.dumps({"store": str(target), **extra,
                                                                       "updated": now()})))


def latest_store(dataset: str, kind: str = "frames") -> Path:
    """The store the last default-path run of a stage wrote for `dataset`; `kind` is "frames",
    "features" (any backbone) or "features-<backbone>"."""
    pointer = _pointer(dataset, kind)
    if not pointer.exists():
        what = "har extract {d}" if kind == "frames" else "har features --dataset {d}"
        if kind.startswith("features-"):
            what += f" --backbone {kind.split('-', 1)[1]}"
        raise StoreError(f"no {kind} store for {dataset!r} under {pointer.parent}; run `{what.format(d=dataset)}` first")
    from pipeline.core import location

    return location.of(json.loads(pointer.read_text())["store"])   # a store on object storage stays a URL
