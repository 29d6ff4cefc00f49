"""The data of training: a store's view (`StoreView`; `FeatureSet` with the features read once),
its splits, and which sample each video contributes to an epoch.

`features` is [N, S, T, D] float16 (S = clips x (1 + views)). Training draws, per video and
epoch, one random augmented view (any clip); evaluation averages the clean view's clips per video.
Failed videos (status 2) are never used and are counted in every run's metrics, so none vanishes
without a word. A store larger than `ram_limit` is copied once into a memory-mapped file
beside it instead of into RAM.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.datasets import datasets
from pipeline.core import location
from pipeline.stores import inputs, store
from pipeline.core.files import replace_atomically
from pipeline.core.lineage import seed_for
from pipeline.core.registry import Registry
from trainers.training import config

logger = logging.getLogger(__name__)

TRAIN, VAL, TEST = datasets.TRAIN, datasets.VAL, datasets.TEST
SPLIT_ROLES: Registry[int] = Registry("split part")   # a part of a split -> its code in the store
for _role, _code, _about in (("train", TRAIN, "the training videos"), ("val", VAL, "early stopping and the best epoch"),
                             ("test", TEST, "held out until the end")):
    SPLIT_ROLES.add(_role, _code, _about)
del _role, _code, _about


@dataclass
class StoreView:
    """What training needs of a frame or feature store, read once: labels, groups, status, the
    sample layout, the splits and the attrs. Samples stay in the store (a clip task reads them
    through its loader) or come in `FeatureSet`."""
    path: Path
    labels: np.ndarray      # [N] int64
    groups: np.ndarray      # [N] int64, -1 = none
    ok: np.ndarray          # [N] bool: status ok
    clip_index: np.ndarray  # [N, S]
    view_index: np.ndarray  # [N, S]
    videos: np.ndarray      # [N] str
    splits: dict[str, np.ndarray]
    attrs: dict

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    @property
    def fingerprint(self) -> str:  # of the store version opened: readers stop if another replaces it
        return self.attrs["lineage"]["fingerprint"]

    @property
    def frame_shape(self) -> tuple[int, int, int]:  # (T, H, W) of the stored frames
        r = self.attrs["recipe"]
        return r["frames"], r["height"], r["width"]

    @property
    def reversed_pairs(self) -> list[str]:
        """The classes whose time-reversed twin is a class too (the store's dataset says so):
        the ones a bag-of-frames model cannot tell apart. Empty for most datasets. A store made
        before stores recorded it (same fingerprint, so never rebuilt) gets it from its dataset."""
        if "reversed_pairs" in self.attrs:
            return list(self.attrs["reversed_pairs"] or [])
        return datasets.store_facts(str(self.attrs.get("dataset")), self.classes).get("reversed_pairs", [])

    def failed(self) -> list[str]:
        return [str(v) for v in self.videos[~self.ok]]


@dataclass
class FeatureSet(StoreView):
    """A feature store's view with its features: [N, S, T, D] float16, in RAM or memory-mapped."""
    features: np.ndarray | None = None
    mapped: bool = False

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def frames(self) -> int:
        return int(self.features.shape[2])


# what each kind of store is for, in the message when another kind is given
USES = {"features": "heads train on a feature store (`har features --store {path}` makes one)",
        "frames": "end-to-end models train on a frame store"}
MAKERS = {"features": "har features", "frames": "har extract"}


def _view(path: Path, r: store.StoreReader) -> dict:
    labels = r.read("label").astype(np.int64)
    check_classes(path, r.attrs, labels)
    return dict(path=path, labels=labels, groups=r.read("group").astype(np.int64), ok=r.read("status") == store.OK,
                clip_index=r.read("clip_index"), view_index=r.read("view_index"), videos=r.read("video"),
                splits={n.split("/", 1)[1]: r.read(n) for n in r.names() if n.startswith("split/")}, attrs=r.attrs)


def open_view(path: Path, kind: str) -> StoreView:
    """The view of a finished, sound store of `kind` (frames or features). Raises store.StoreError
    for a missing, wrong-kind, unfinished or damaged one, naming it."""
    path = location.of(path)
    if not path.exists():
        raise store.StoreError(f"{'feature' if kind == 'features' else 'frame'} store {path} does not exist; "
                               f"run `{MAKERS[kind]}` first")
    # kind, schema, finished, every chunk present, static arrays and status sound (inputs.open_input)
    with inputs.open_input(path, kind, USES[kind].format(path=path)) as r:
        return StoreView(**_view(path, r))


def load(path: Path, ram_limit: int | None = None) -> FeatureSet:
    """A feature store's view with every feature read (each sample checked against its checksum),
    into RAM or, above `ram_limit` bytes, into a memory-mapped file beside the store. Raises
    store.StoreError for a missing, wrong-kind, unfinished or damaged store."""
    path = location.of(path)
    if not path.exists():
        raise store.StoreError(f"feature store {path} does not exist; run `har features` first")
    with inputs.open_input(path, "features", USES["features"].format(path=path)) as r:
        view = _view(path, r)
        arr = r["features"]
        nbytes = int(np.prod(arr.shape)) * 2
        if ram_limit is None:
            import psutil

            ram_limit = psutil.virtual_memory().available // 2
        mapped = nbytes > ram_limit
        feats = _memory_map(path, r, view["attrs"]["lineage"]["fingerprint"]) if mapped else _read_all(r)
    if mapped:
        logger.info("%s: %.1f GB of features > %.1f GB for RAM: memory-mapped", path, nbytes / 1e9, ram_limit / 1e9)
    return FeatureSet(**view, features=feats, mapped=mapped)


def check_classes(path: Path, attrs: dict, labels: np.ndarray) -> None:
    """StoreError naming the store unless its attrs list 2 or more distinct class names and every
    label is one of them (0 <= label < classes): a store whose labels point past its class list
    would train a classifier too narrow for its own data."""
    classes = attrs.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        raise store.StoreError(f"store {path} lists classes {classes!r:.80}; allowed: 2 or more distinct class names; "
                               "make the store again")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise store.StoreError(f"store {path} has labels {int(labels.min())}..{int(labels.max())} but lists "
                               f"{len(classes)} classes (labels 0..{len(classes) - 1}); make the store again")


def _read_all(r: store.StoreReader) -> np.ndarray:
    """Every feature, each sample checked against its checksum (a lost chunk is never zeros)."""
    n = r["features"].shape[0]
    step = int(r["checksum"].chunks[0]) if r.format == "zarr" else n
    return np.concatenate([inputs.read_rows(r, a, min(n, a + step)) for a in range(0, max(n, 1), max(step, 1))])


def _memory_map(path: Path, reader: store.StoreReader, fingerprint: str) -> np.ndarray:
    """The features as a .npy memory map beside the store (under $HAR_HOME/cache for a store on
    object storage), written once, shard by shard."""
    if isinstance(path, location.Url):
        from pipeline.core.lineage import har_home

        import hashlib

        where = hashlib.sha256(str(path).encode()).hexdigest()[:12]   # two stores may share a name
        cache = har_home() / "cache" / f"{path.name}.{where}.{fingerprint[:12]}.npy"
        cache.parent.mkdir(parents=True, exist_ok=True)
    else:
        cache = path.parent / f".{path.name}.{fingerprint[:12]}.npy"
    arr = reader["features"]
    if not cache.exists():
        def write(tmp: Path) -> None:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=arr.shape)
            step = max(1, (64 << 20) // max(1, int(np.prod(arr.shape[1:])) * 2))
            for a in range(0, arr.shape[0], step):
                mm[a:a + step] = inputs.read_rows(reader, a, min(arr.shape[0], a + step))
            mm.flush()
            del mm
        replace_atomically(cache, write, cache.with_suffix(".partial.npy"))
    return np.load(cache, mmap_mode="r")


# ---- splits ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    name: str
    train: np.ndarray   # video indices
    val: np.ndarray
    test: np.ndarray
    leakage: float      # share of test videos with a same-class clip of their group in train
    carved_val: bool    # val was taken from train (the split had none)


def split_names(fs: StoreView) -> list[str]:
    return sorted(fs.splits)


def default_split(fs: StoreView) -> str:
    return fs.attrs.get("default_split") or ("groups" if "groups" in fs.splits else split_names(fs)[0])


def make_split(fs: StoreView, name: str | None = None) -> Split:
    """Train/val/test video indices of split `name` (failed videos left out). A split without
    validation videos (the leave-one-group-out folds) gets one carved from its training part:
    whole groups where there are groups (about 10 %), else a stratified tenth."""
    name = name or default_split(fs)
    if name not in fs.splits:
        raise ValueError(f"unknown split {name!r} for {fs.path.name}; allowed: {', '.join(split_names(fs))}")
    s = fs.splits[name].copy()
    carved = not (s == VAL).any()
    if carved:
        s = _carve_val(s, fs.labels, fs.groups, name)
    ok = fs.ok
    parts = {role: np.flatnonzero((s == code) & ok) for role, code in SPLIT_ROLES.items()}
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise ValueError(f"split {name!r} has {len(parts['train'])} training and {len(parts['test'])} test videos; "
                         "both must be > 0")
    leak = datasets.leakage(np.where(ok, s, datasets.UNUSED), fs.labels, fs.groups) if (fs.groups >= 0).any() else 0.0
    return Split(name, parts["train"], parts["val"], parts["test"], float(leak), carved)


def _carve_val(s: np.ndarray, labels: np.ndarray, groups: np.ndarray, name: str) -> np.ndarray:
    s = s.copy()
    train = np.flatnonzero(s == TRAIN)
    rng = np.random.default_rng(seed_for("carve-val", name))
    train_groups = np.unique(groups[train])
    if (train_groups >= 0).all() and len(train_groups) >= 3:
        k = max(1, round(0.1 * len(train_groups)))
        chosen = rng.choice(train_groups, size=k, replace=False)
        s[train[np.isin(groups[train], chosen)]] = VAL
        return s
    for c in np.unique(labels[train]):
        members = train[labels[train] == c]
        k = max(1, round(0.1 * len(members))) if len(members) > 1 else 0
        s[rng.choice(members, size=k, replace=False)] = VAL
    return s


# ---- which sample of each video ------------------------------------------------------------------

TRAIN_VIEWS = config.TRAIN_VIEWS


def train_samples(view_index: np.ndarray, videos: np.ndarray, rng: np.random.Generator,
                  which: str = "augmented") -> np.ndarray:
    """For each video, one sample index, a random clip of: a random augmented view ("augmented";
    the clean view when the store has none), any view ("all"), or the clean view ("clean")."""
    views = view_index[videos]                          # (n, S); view_index is a store's [N, S] array
    if which == "all":
        pool = np.ones_like(views, bool)
    elif which == "augmented" and (view_index > 0).any():
        pool = views > 0
    else:
        pool = views == 0
    u = rng.random(pool.shape)
    u[~pool] = -1.0
    return np.argmax(u, axis=1)                         # a uniform choice among the pool


def eval_samples(fs: StoreView) -> np.ndarray:
    """Sample indices of the clean view, one per clip: (K,)."""
    return np.flatnonzero(fs.view_index[0] == 0)


def gather(fs: FeatureSet, videos: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """features[videos[i], samples[i]] -> (n, T, D) float32; sorted reads when memory-mapped."""
    if fs.mapped:
        order = np.argsort(videos, kind="stable")
        out = np.empty((len(videos), *fs.features.shape[2:]), np.float32)
        out[order] = fs.features[videos[order], samples[order]]
        return out
    return fs.features[videos, samples].astype(np.float32)


def feature_stats(fs: FeatureSet, videos: np.ndarray) -> tuple:
    """Per-dimension mean and std (torch float32) over every sample and frame of `videos`."""
    import torch

    total = np.zeros(fs.dim)
    sq = np.zeros(fs.dim)
    count = 0
    for a in range(0, len(videos), 256):
        x = fs.features[np.sort(videos[a:a + 256])].astype(np.float64).reshape(-1, fs.dim)
        total += x.sum(0)
        sq += (x * x).sum(0)
        count += len(x)
    mean = total / max(1, count)
    std = np.sqrt(np.maximum(sq / max(1, count) - mean * mean, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()
