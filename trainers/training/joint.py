"""Joint training on several datasets: `har train-head HEAD --features A.zarr --features B.zarr`;
and `one_or_jointly`, the choice both training commands make between one store and several.

One model for all: a shared trunk (the head's standardisation and layers) and one output layer per
dataset. The output layers are the rows of the head's last linear layer, dataset d owning its own
rows (`Part.rows`); its softmax, loss and prediction run over those rows only (`SlicedLoss`), which
is exactly a separate linear classifier per dataset on the shared representation (a seed study's
UCF101 + HMDB51 model). Each dataset keeps its own split; early stopping and the best checkpoint
follow the mean of the datasets' validation accuracies; metrics, reports and `metrics.json` are
per dataset, next to the same head trained on each dataset alone (the comparison the study made).

Batches mix the datasets by a seeded rule (`MIXES`):
- proportional: every training video of every dataset once per epoch, in one shuffled order, so
  a batch holds the datasets in proportion to their sizes (in expectation);
- balanced: each dataset's training videos reshuffled and repeated up to the largest dataset's
  count, then interleaved, so every batch holds the datasets in equal shares and an epoch is
  (datasets x largest) videos.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core import lineage, location, outputs
from pipeline.core.lineage import seed_for
from trainers.data import views
from trainers.training import distributed, head_task, loop, tasks
from trainers.training.losses import Loss, loss_and_accuracy
from trainers.models import heads
from trainers.runs import report, rundir, runner
from trainers.data.mixing import MIXES
from trainers.inference.predictor import safe_name
from trainers.training.config import HeadTrainConfig

# the metrics a joint run also gives as the mean over its datasets
MEANS = ("top1", "top5", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted",
         "f1_weighted", "roc_auc_ovr_macro")



@dataclass(frozen=True)
class Part:
    name: str               # the dataset's name in this run (its store's dataset, made unique)
    path: Path
    fs: views.FeatureSet
    split: views.Split       # its own split, local video indices
    offset: int             # its first video in the joint numbering
    rows: slice             # its output rows (classes) in the joint output layer

    def local(self, videos: np.ndarray) -> np.ndarray:
        return videos - self.offset


class _Rows(nn.Module):
    """The model with one dataset's output rows: what that dataset's classifier says."""

    def __init__(self, model: nn.Module, rows: slice):
        super().__init__()
        self.model, self.rows = model, rows

    def forward(self, x):
        return self.model(x)[:, self.rows]


class SlicedLoss(Loss):
    """Cross-entropy of each sample over its own dataset's rows (the row of its label says which),
    with optional class weights and label smoothing over those rows."""

    def __init__(self, owner: torch.Tensor, weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("owner", owner)              # (C,) dataset of every output row
        self.register_buffer("weight", torch.ones(len(owner)) if weight is None else weight)
        self.smoothing = smoothing

    def _masked(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mine = self.owner[None, :] == self.owner[y][:, None]          # (B, C): rows of each sample's dataset
        return logits.masked_fill(~mine, float("-inf")), mine

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """As torch's cross_entropy(weight, label_smoothing) computes it within each sample's rows:
        sum_i [(1 - e) w_y nll_i + e / K_i sum_c w_c (-log p_ic)] / sum_i w_y."""
        z, mine = self._masked(logits, y)
        logp = torch.log_softmax(z, dim=1)
        w = self.weight[y]
        loss = -w * logp.gather(1, y[:, None])[:, 0]
        if self.smoothing:
            uniform = -(self.weight[None, :] * logp).masked_fill(~mine, 0.0).sum(1) / mine.sum(1)
            loss = (1 - self.smoothing) * loss + self.smoothing * uniform
        return loss.sum() / w.sum()

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How many samples the argmax over their own dataset's rows gets right."""
        return (self._masked(logits, y)[0].argmax(1) == y).sum()


class _JointView:
    """What the runs module reads of a task's store: one fingerprint for all the stores."""

    def __init__(self, parts: list[Part]):
        self.fingerprint = lineage.fingerprint([[p.name, p.fs.fingerprint] for p in parts])
        self.reversed_pairs: list[str] = []


class JointBase(tasks.Task):
    """A model on several stores at once: the joint numbering is the stores' videos one after the
    other, the joint classes their classes one after the other. `single` holds each dataset's own
    task (what evaluates one dataset's videos); a subclass builds the model and reads the batches."""

    def __init__(self, parts: list[Part], mix: str, single: list):
        self.parts, self.mix, self.single = parts, mix, single
        self.view = _JointView(parts)
        self.labels = np.concatenate([p.fs.labels.astype(np.int64) + p.rows.start for p in parts])
        self.classes = [c for p in parts for c in p.fs.classes]
        self.owner = torch.tensor([i for i, p in enumerate(parts) for _ in p.fs.classes])
        self.split = Split(parts)

    def make_split(self, name: str | None) -> views.Split:
        return self.split

    def part_of(self, videos: np.ndarray) -> np.ndarray:
        return np.searchsorted([p.offset for p in self.parts], videos, side="right") - 1

    def epoch_order(self, cfg, videos: np.ndarray, epoch: int, world: distributed.World) -> tuple[np.ndarray, np.ndarray]:
        """(joint videos, stored samples) of one epoch: the mixing rule's seeded order, one sample
        per video drawn as a single-store run draws it (cfg.train_views), this rank's share."""
        rng = np.random.default_rng(seed_for(cfg.seed, "epoch", epoch))
        which = self.part_of(videos)
        order = MIXES.get(self.mix)([videos[which == i] for i in range(len(self.parts))], rng)
        owner = self.part_of(order)
        samples = np.zeros(len(order), np.int64)
        for i, p in enumerate(self.parts):
            at = np.flatnonzero(owner == i)
            samples[at] = views.train_samples(p.fs.view_index, p.local(order[at]), rng, cfg.train_views)
        order, samples = distributed.shard(np.stack([order, samples], axis=1), world).T
        return order, samples

    def loss(self, cfg, weight: torch.Tensor | None) -> Loss:
        return SlicedLoss(self.owner, weight, cfg.label_smoothing)

    def epoch_videos(self, cfg, videos: np.ndarray) -> int:
        """How many videos an epoch trains on under the mixing rule (the warm-up counts its steps)."""
        counts = np.bincount(self.part_of(videos), minlength=len(self.parts))
        return int(len(counts) * counts.max()) if self.mix == "balanced" else int(len(videos))

    def close(self) -> None:
        for t in self.single:
            t.close()

    def part_probabilities(self, model: nn.Module, part: int, videos: np.ndarray, device: torch.device,
                           cfg=None) -> np.ndarray:
        """(len(videos), classes of that dataset): its classifier's softmax, clips averaged."""
        p = self.parts[part]
        return self.single[part].probabilities(_Rows(model, p.rows), p.local(videos), device, cfg)

    def probabilities(self, model: nn.Module, videos: np.ndarray, device: torch.device, cfg=None) -> np.ndarray:
        """(len(videos), all classes): each video's own dataset's softmax in its rows, 0 elsewhere."""
        out = np.zeros((len(videos), len(self.classes)), np.float32)
        which = self.part_of(videos)
        for i, p in enumerate(self.parts):
            at = np.flatnonzero(which == i)
            if len(at):
                out[at, p.rows] = self.part_probabilities(model, i, videos[at], device, cfg)
        return out

    def score(self, probs: np.ndarray, videos: np.ndarray, weight: torch.Tensor | None) -> tuple[float, float]:
        """(loss, accuracy) for model selection: the means over the datasets of their own."""
        which = self.part_of(videos)
        losses, accs = [], []
        for i, p in enumerate(self.parts):
            at = np.flatnonzero(which == i)
            if len(at):
                loss, acc = loss_and_accuracy(np.ascontiguousarray(probs[at][:, p.rows]),
                                                   self.labels[videos[at]] - p.rows.start,
                                                   None if weight is None else weight[p.rows])
                losses.append(loss)
                accs.append(acc)
        return float(np.mean(losses)), float(np.mean(accs))

    def evaluate(self, model: nn.Module, videos: np.ndarray, device: torch.device, cfg) -> dict:
        """Every metric of each dataset on its own (its classifier, its classes), and their means."""
        which = self.part_of(videos)
        per = {}
        for i, p in enumerate(self.parts):
            mine = videos[which == i]
            per[p.name] = self.single[i].evaluate(_Rows(model, p.rows), p.local(mine), device, cfg)
        means = {k: float(np.mean([m[k] for m in per.values()])) for k in MEANS
                 if all(isinstance(m.get(k), (int, float)) for m in per.values())}
        return {**means, "videos": int(len(videos)), "datasets": per}

    def report(self, run_dir: Path, summary: dict, history: list[dict]) -> None:
        """A report per dataset in RUN/datasets/<dataset>/, and RUN/report.md with the table of
        datasets: joint against alone."""
        for p in self.parts:
            sub = {**summary, "val": summary["val"]["datasets"][p.name], "test": summary["test"]["datasets"][p.name],
                   "split": summary["datasets"][p.name]["split"],
                   "describe": f"{summary['describe']}; this report: {p.name}"}
            (run_dir / "datasets" / p.name).mkdir(parents=True, exist_ok=True)
            report.write(run_dir / "datasets" / p.name, sub, history, list(p.fs.classes))
        report.plot_curves(history, run_dir / "curves.png")
        lines = [f"# Joint run {run_dir.name}", "", f"{summary['describe'][0].upper()}{summary['describe'][1:]}.", "",
                 f"Batches: {summary['mix']} mixing; early stopping on the mean of the datasets' validation "
                 f"accuracies (best epoch {summary['best_epoch']}).", "",
                 "| dataset | classes | train / val / test | joint test top-1 | alone test top-1 | joint - alone | "
                 "joint F1 macro | report |", "|---|---|---|---|---|---|---|---|"]
        for p in self.parts:
            t = summary["test"]["datasets"][p.name]
            alone = summary.get("alone", {}).get(p.name, {}).get("top1")
            diff = f"{t['top1'] - alone:+.3f}" if alone is not None else "-"
            s = summary["datasets"][p.name]["split"]
            lines.append(f"| {p.name} | {len(p.fs.classes)} | {s['train']} / {s['val']} / {s['test']} | {t['top1']:.3f} | "
                         f"{'-' if alone is None else f'{alone:.3f}'} | {diff} | {t['f1_macro']:.3f} | "
                         f"[datasets/{p.name}/report.md](datasets/{p.name}/report.md) |")
        lines += ["", "The alone runs are the same model and settings trained on each dataset by itself "
                  "(their folders are listed in metrics.json, `alone`).", "", "![curves](curves.png)", ""]
        rundir.write_text(run_dir / "report.md", "\n".join(lines))


class JointTask(JointBase):
    """Heads on several feature stores at once."""

    def __init__(self, parts: list[Part], mix: str = "proportional"):
        super().__init__(parts, mix, [head_task.FeatureTask(p.fs) for p in parts])
        first = parts[0].fs
        self.dim, self.frames = first.dim, first.frames

    def build(self, cfg: HeadTrainConfig, train: np.ndarray | None) -> nn.Module:
        """The head over every dataset's classes; standardised by the pooled statistics of every
        dataset's training features."""
        mean = std = None
        if train is not None:
            total, sq, count = 0.0, 0.0, 0
            for i, p in enumerate(self.parts):
                mine = p.local(train[self.part_of(train) == i])
                m, s = views.feature_stats(p.fs, mine)
                n = len(mine) * p.fs.features.shape[1] * p.fs.frames
                total, sq, count = total + n * m.double(), sq + n * (s.double() ** 2 + m.double() ** 2), count + n
            mean = total / max(1, count)
            std = torch.sqrt(torch.clamp(sq / max(1, count) - mean * mean, min=0.0))
            mean, std = mean.float(), std.float()
        return heads.build(cfg.head, self.dim, len(self.classes), self.frames, cfg.head_options, mean, std)

    def batches(self, cfg: HeadTrainConfig, videos: np.ndarray, epoch: int, world: distributed.World = distributed.World()):
        order, samples = self.epoch_order(cfg, videos, epoch, world)
        for a in range(0, len(order), cfg.batch_size):
            vb, sb = order[a:a + cfg.batch_size], samples[a:a + cfg.batch_size]
            x = np.zeros((len(vb), self.frames, self.dim), np.float32)
            owner = self.part_of(vb)
            for i, p in enumerate(self.parts):
                at = np.flatnonzero(owner == i)
                if len(at):
                    x[at] = views.gather(p.fs, p.local(vb[at]), sb[at])
            yield torch.from_numpy(x), torch.from_numpy(self.labels[vb])

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x


class Split(views.Split):
    """The joint split: every dataset's own split, in the joint numbering."""

    def __init__(self, parts: list[Part]):
        names = [p.split.name for p in parts]
        super().__init__("+".join(names) if len(set(names)) > 1 else names[0],
                         *(np.concatenate([getattr(p.split, r) + p.offset for p in parts]) for r in ("train", "val", "test")),
                         max(p.split.leakage for p in parts), any(p.split.carved_val for p in parts))


# ---- a joint run -------------------------------------------------------------------------------------

def split_names(name: str | None, count: int) -> list[str | None]:
    """Each dataset's split from the run's split name: one name for all, or 'a+b' one per dataset."""
    if name is None or "+" not in name:
        return [name] * count
    names = name.split("+")
    if len(names) != count:
        raise ValueError(f"--split {name!r} names {len(names)} splits for {count} datasets; allowed: one split name "
                         "for all, or one per dataset joined by +")
    return names


# what the stores of a joint run must share, by the kind of store: one model card serves them all
SHARED = {"features": ("backbone", "weights", "resize", "recipe"), "frames": ("recipe",)}


def same_card(a: dict, b: dict, keys: tuple[str, ...] = SHARED["features"]) -> str | None:
    """What two stores of a joint run must share, as its one model card sees them: the first of
    `keys` in which their attrs differ, or None. Feature stores: backbone, weights, resize, recipe
    (one backbone turns a video into features for every dataset); frame stores: the recipe (one
    video model reads every dataset's clips). The recipe is its sampling and frame size; resize
    defaults to the backbone's own."""
    def recipe(attrs):
        r = attrs.get("recipe") or {}
        return {k: r.get(k) for k in ("sampling", "frames", "clips", "stride", "height", "width")}
    get = {"backbone": lambda x: x.get("backbone"), "weights": lambda x: x.get("weights"),
           "resize": lambda x: x.get("resize", "weights"), "recipe": recipe}
    return next((k for k in keys if get[k](a) != get[k](b)), None)


def parts_for(paths: list[Path], split: str | None, ram_limit: int | None = None, store: str = "features") -> list[Part]:
    """The datasets of a joint run on feature stores (`store` "features": features read) or frame
    stores ("frames": clips stay in the store): each store read, checked to share what one model
    card needs, its own split made."""
    option = f"--{store}"
    paths = [location.of(p) for p in paths]
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError(f"{option} names the same store twice; joint training takes different datasets")
    sets = [views.load(p, ram_limit) if store == "features" else views.open_view(p, "frames") for p in paths]
    first = sets[0]
    for fs, path in zip(sets[1:], paths[1:]):
        key = same_card(fs.attrs, first.attrs, SHARED[store])
        if key is not None:
            raise ValueError(f"{option} {path} and {paths[0]} differ in {key} ({fs.attrs.get(key)!r:.80} vs "
                             f"{first.attrs.get(key)!r:.80}); joint training needs stores made with the same "
                             + ("recipe (sampling and size), backbone, weights and resize" if store == "features"
                                else "recipe (sampling and frame size)"))
        if store == "features" and (fs.dim, fs.frames) != (first.dim, first.frames):
            raise ValueError(f"{option} {path} holds {fs.frames} x {fs.dim} features, {paths[0]} {first.frames} x "
                             f"{first.dim}; joint training needs the same shape")
    names: list[str] = []
    for i, (fs, path) in enumerate(zip(sets, paths)):
        name = safe_name(fs.attrs.get("dataset"), i)
        if name in names:
            name = safe_name(path.stem, i)
        while name in names:
            name += "_"
        names.append(name)
    parts, offset, row = [], 0, 0
    for fs, path, name, s in zip(sets, paths, names, split_names(split, len(sets))):
        sp = views.make_split(fs, s)
        if len(sp.val) == 0:
            raise ValueError(f"{name} ({path}): split {sp.name!r} leaves no validation videos; joint training selects "
                             "on each dataset's validation accuracy: choose a split with some (--split a+b)")
        parts.append(Part(name, path.absolute(), fs, sp, offset, slice(row, row + len(fs.classes))))
        offset += len(fs.labels)
        row += len(fs.classes)
    return parts


def with_datasets(card: dict, parts: list[Part]) -> dict:
    """A model card of one store made the joint run's: every dataset's classes and output rows."""
    return {**card, "classes": [cl for p in parts for cl in p.fs.classes],
            "datasets": [{"name": p.name, "classes": list(p.fs.classes), "rows": [p.rows.start, p.rows.stop]}
                         for p in parts]}


def job_extra(parts: list[Part], mix: str) -> dict:
    """The summary fields every joint run has: its stores, mixing rule and datasets."""
    return {"joint": True, "stores": stores_of(parts), "mix": mix,
            "datasets": {p.name: {"store": str(p.path), "classes": list(p.fs.classes), "split": runner.split_info(p.split)}
                         for p in parts}, "alone": {}}


def stores_of(parts: list[Part]) -> list[dict]:
    return [{"dataset": p.name, "path": str(p.path), "fingerprint": p.fs.fingerprint} for p in parts]


def one_or_jointly(option: str, paths: list[Path], dataset: str | None, mix: str, alone, jointly) -> runner.RunResult:
    """What a training command's stores ask for: one store (`option` once, or --dataset) trains
    `alone()`; `option` given twice or more trains `jointly()`. ValueError for --mix without several
    stores, or --dataset beside them."""
    if len(paths) <= 1:
        if mix != loop.LoopConfig.mix:
            raise ValueError(f"--mix {mix} is for joint training; give {option} twice or more")
        return alone()
    if dataset is not None:
        raise ValueError(f"give the stores of a joint run as {option} PATH twice or more, without --dataset")
    return jointly()


def run(joint: runner.Job, out: Path | None, tracker: str, alone_run, on_epoch=None, stop_after: int | None = None,
        train=None) -> runner.RunResult:
    """The same model on each dataset alone first (`alone_run(part, folder, on_epoch)`, in folders
    beside the joint run's, `RUN-alone-<dataset>`), then the joint run, whose metrics.json and
    report compare the two. `train(fn)` runs each training (the command line passes its epoch table)."""
    train = train or (lambda fn: fn(on_epoch))
    run_dir = (Path(out) if out else Path("runs") / f"{joint.name}-{runner.fingerprint(joint)[:10]}").absolute()
    parts = joint.task.parts
    folders = [run_dir.parent / f"{run_dir.name}-alone-{p.name}" for p in parts]
    if distributed.world().main:   # every folder checked before anything trains (execute checks again, locked)
        outputs.check_output(run_dir, "run", inputs=[p.path for p in parts])
        for p, folder in zip(parts, folders):
            outputs.check_output(folder, "run", inputs=[p.path for p in parts])
    alone = {}
    for p, folder in zip(parts, folders):
        res = train(lambda on, p=p, folder=folder: alone_run(p, folder, on))
        if res.summary.get("test"):   # under torchrun rank 0 alone has the results
            alone[p.name] = {"run": str(res.run_dir), "top1": res.summary["test"]["top1"],
                             "f1_macro": res.summary["test"]["f1_macro"], "val_top1": res.summary["val"]["top1"]}
    joint.extra["alone"] = alone
    return train(lambda on: runner.execute(joint, run_dir, on, stop_after, tracker))


def joint_job(task: JointBase, cfg, name: str, store: str, what: str, after: str, extra: dict, card: dict,
              warnings: tuple[str, ...] = ()) -> runner.Job:
    """The Job of a joint run of any kind (`store`: "features" | "frames"): every store named in its
    lineage with the joint fingerprint, the summary fields of every joint run, each dataset's
    warnings and failed videos, its card with every dataset's rows."""
    parts = task.parts
    fp = task.view.fingerprint
    stores = stores_of(parts)
    return runner.Job(
        name=name, cfg=replace(cfg, split=task.split.name), task=task, split=task.split, store=parts[0].path,
        fingerprint=fp, inputs={f"{store}_stores": [s["path"] for s in stores], "joint_fingerprint": fp, "stores": stores},
        describe=f"{what} trained jointly on {', '.join(f'`{p.name}` ({p.path})' for p in parts)}{after}",
        extra={**job_extra(parts, cfg.mix), **extra}, card=with_datasets(card, parts),
        failed=tuple(f"{p.name}: {v}" for p in parts for v in p.fs.failed()),
        warnings=tuple(f"{p.name}: {w}" for p in parts for w in runner.warnings_for(p.split, p.fs)) + tuple(warnings),
        more_stores=tuple(p.path for p in parts[1:]))


def job(cfg: head_task.HeadRunConfig, paths: list[Path]) -> runner.Job:
    cfg = replace(cfg, train=cfg.train.resolved())
    cfg.train.validate()
    parts = parts_for(paths, cfg.train.split, cfg.ram_limit)
    task = JointTask(parts, cfg.train.mix)
    for p in parts:
        head_task.check_head_fits(cfg.train, p.fs.dim, len(task.classes), p.fs.frames,
                                  loop.resolve_device(cfg.train.device), batch=cfg.train.batch_size)
    first = parts[0].fs
    return joint_job(task, cfg.train, f"{cfg.train.head}-joint", "features", f"head `{cfg.train.head}`",
                     f" (backbone {first.attrs.get('backbone')})",
                     {"backbone": first.attrs.get("backbone"), "pretrained": bool(first.attrs.get("pretrained", True))},
                     head_task.model_card(first))


def train_joint(cfg: head_task.HeadRunConfig, paths: list[Path], on_epoch=None, stop_after: int | None = None,
                train=None) -> runner.RunResult:
    """`har train-head HEAD --features A --features B`: the head on each dataset alone, then jointly
    (`run`)."""
    def alone(p: Part, folder: Path, on):
        single = replace(cfg, train=replace(cfg.train, split=p.split.name, mix="proportional"), features=p.path,
                         dataset=None, out=folder)
        return head_task.train_head(single, on_epoch=on)
    return run(job(cfg, paths), cfg.out, cfg.tracker, alone, on_epoch, stop_after, train)   # stores checked first


# ---- reading a joint run back (trainers.training.tasks) ------------------------------------------------------

def open_task(paths: list[Path], cfg: HeadTrainConfig, run_dir: Path) -> JointTask:
    return JointTask(parts_for(paths, cfg.split), cfg.mix)


def scorer(run_dir: Path, cfg: HeadTrainConfig, card: dict, device: torch.device):
    return head_task.scorer(run_dir, cfg, card, device)


def refuse(run_dir: Path) -> None:
    """har explain and har export take single-dataset runs for now: one line saying so."""
    from trainers.inference.explain import ExplainError

    raise ExplainError(f"{run_dir} was trained jointly on several datasets; har explain and har export take a run "
                     "on one dataset for now (its `-alone-` runs are beside it)")


def chain(run_dir: Path, cfg: HeadTrainConfig, card: dict, device: torch.device):
    refuse(run_dir)


KIND = tasks.TaskKind(name="joint-head", config=HeadTrainConfig, store="features",
                      inputs=("features_stores", "joint_fingerprint"),
                      card={"backbone": str, "weights": dict, "classes": list, "frames": int, "dim": int,
                            "datasets": list},
                      open=open_task, scorer=scorer, chain=chain, joint=True)
