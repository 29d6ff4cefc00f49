"""har command line: parse -> frozen config (built by keyword) -> one library call -> print.

Thin on purpose. Heavy imports (numpy, PyAV, Zarr, Dask, torch) happen inside the commands, so
`har --help` is instant; the training settings' defaults come from trainers.config (light), and
the options every training command shares are declared once (`LOOP`, `HEAD`). Where a name
chooses behaviour, the option shows the registry's names in --help and in shell completion
(`Choice`); the library checks the value and names the allowed ones.

One error boundary (`_boundary`, wrapped around every command by `command`) turns what a command
raises into one line on stderr and an exit code from one table:

    0    done
    1    a bug in har: one line, "please report", the traceback only with --verbose
    2    usage or bad input: a value out of its allowed set, a missing or damaged input, an output
         path har refuses to write, a request that cannot fit in memory (ValueError, OSError)
    3    finished, but some videos failed (extract, predict), or some store is not current (status)
    4    the disk (or quota) filled up: what was finished is kept, the same command finishes
    130  interrupted (Ctrl-C): what was finished is kept, the same command resumes
"""
from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import inspect
import itertools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand

from trainers import config as C  # light: dataclasses only

app = typer.Typer(help="Human action recognition: versioned frame stores from videos, and models trained on them.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")
out = Console()
err = Console(stderr=True)

EXIT_BUG, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_NO_SPACE, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
REPORT = "https://github.com/har-project/har/issues"
RESUMES = "interrupted; what was finished is kept: run the same command again to go on"


# ---- choices: a parameter's allowed names, from where they are registered ---------------------------

CHOICES = {  # parameter -> (module, attribute): a Registry, a tuple, or a function returning names
    "dataset": ("pipeline.datasets", "DATASETS"), "sampling": ("pipeline.sampling", "STRATEGIES"),
    "fmt": ("pipeline.store", "FORMATS"), "backbone": ("pipeline.backbones", "names"),
    "device": ("pipeline.device", "DEVICES"), "feature_precision": ("pipeline.features", "PRECISIONS"),
    "resize": ("pipeline.features", "RESIZES"), "recipe": ("pipeline.recipe", "recipe_names"),
    "head": ("trainers.heads", "names"), "model": ("trainers.models3d", "names"),
    "pretrained": ("trainers.models3d", "PRETRAINED"), "optimizer": ("trainers.optim", "OPTIMIZERS"),
    "scheduler": ("trainers.optim", "SCHEDULERS"), "precision": ("trainers.config", "PRECISIONS"),
    "train_views": ("trainers.config", "TRAIN_VIEWS"), "memory_format": ("trainers.config", "MEMORY_FORMATS"),
    "folds": ("trainers.cv", "FOLDS"), "part": ("trainers.data", "SPLIT_ROLES"),
}


def choice_names(param: str) -> tuple[str, ...]:
    module, attr = CHOICES[param]
    names = getattr(importlib.import_module(module), attr)
    return tuple(names() if callable(names) else names)


def complete(param: str) -> Callable[[str], list[str]]:
    """Shell completion of a choice parameter: its registered names starting with what is typed."""
    return lambda incomplete: [n for n in choice_names(param) if n.startswith(incomplete)]


def opt(*decls: str, help: str, choices: str | None = None):
    """typer.Option; `choices` names the CHOICES entry whose names it completes and its help lists."""
    return typer.Option(*decls, help=help, autocompletion=complete(choices) if choices else None)


def arg(help: str, choices: str | None = None, **kw):
    return typer.Argument(help=help, autocompletion=complete(choices) if choices else None, **kw)


class Command(TyperCommand):
    """A har command: when its help is shown, each choice parameter's help ends with its registry's
    names, read then (so `har --help` imports nothing heavy). A value outside them is passed on:
    the library refuses it in its own words, the same for command-line and library users."""

    def format_help(self, ctx, formatter) -> None:
        for p in self.params:
            if p.name in CHOICES and not getattr(p, "listed", False):
                p.help, p.listed = f"{p.help or ''} One of: {', '.join(choice_names(p.name))}.".strip(), True
        return super().format_help(ctx, formatter)


# ---- the one error boundary ---------------------------------------------------------------------------

def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _boundary(fn, interrupted: str = RESUMES, kept: str | None = None,
              where: Callable[[dict], object] | None = None):
    """Every exception a command raises becomes a line and an exit code (the module docstring's
    table). `interrupted`: the line for Ctrl-C; `kept` and `where`: what a full disk leaves and
    on which path (from the command's arguments)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            _fail(interrupted, EXIT_INTERRUPTED)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                if kept and where:
                    _fail(f"no space left on the device of {where(kwargs)}; the finished {kept} are kept: free some "
                          "space and run the same command again to finish", EXIT_NO_SPACE)
                _fail(f"no space left on the device ({e.filename or 'while writing'}); what was finished is kept: "
                      "free some space and run the same command again", EXIT_NO_SPACE)
            _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        except MemoryError:
            _fail("ran out of memory; lower --batch-size, --frames, --size or --workers", EXIT_USAGE)
        except ValueError as e:  # har's own input errors: DatasetError, StoreError, OutputError, RunError, ...
            _fail(str(e) or type(e).__name__)
        except Exception as e:
            if type(e).__name__ == "OutOfMemoryError":  # torch's (CUDA) out of memory, without importing torch
                _fail(f"the device ran out of memory ({str(e).splitlines()[0] if str(e) else ''}); "
                      "lower --batch-size", EXIT_USAGE)
            if kwargs.get("verbose"):
                import traceback

                traceback.print_exc()
            again = " run again with --verbose and" if "verbose" in kwargs else ""
            _fail(f"internal error ({type(e).__name__}: {e}); this is a bug in har:{again} please report it at "
                  f"{REPORT} with the command and its output", EXIT_BUG)

    return run


def command(name: str | None = None, **boundary):
    """`app.command` with the error boundary around the command and registry choices on its options."""
    return lambda fn: app.command(name, cls=Command)(_boundary(fn, **boundary))


# ---- options declared once ------------------------------------------------------------------------------

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress; a traceback for a bug.")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
Device = Annotated[str, opt("--device", help="Where to compute (auto: cuda when present).", choices="device")]
DatasetName = Annotated[Optional[str], opt("--dataset", help="Use the latest store made for this dataset.", choices="dataset")]
DaskScheduler = Annotated[Optional[str], typer.Option("--scheduler", help="Address of a running dask.distributed scheduler (tcp://host:8786): the work spreads over its workers.")]

# the training loop's settings (trainers.config.LoopConfig): name -> (type, flag, help)
LOOP = {
    "split": (Optional[str], "--split", "Split in the store: groups (default where groups exist), random, logoNN, official1..3."),
    "epochs": (int, "--epochs", "Most epochs (early stopping may end sooner)."),
    "batch_size": (int, "--batch-size", "Videos (clips, for video models) per step."),
    "accumulate": (int, "--accumulate", "Optimizer step every N batches (gradient accumulation)."),
    "train_views": (str, "--train-views", "Which stored view each epoch draws: augmented (a random augmented view; clean if none), all, clean."),
    "optimizer": (str, "--optimizer", "Optimizer."),
    "lr": (float, "--lr", "Learning rate."),
    "weight_decay": (float, "--weight-decay", "Weight decay."),
    "scheduler": (str, "--scheduler", "Learning-rate schedule: plateau is ReduceLROnPlateau on val accuracy."),
    "class_weighted": (bool, "--class-weighted", "Weight the loss by inverse class frequency."),
    "patience": (int, "--patience", "Early stopping: epochs without improvement."),
    "min_delta": (float, "--min-delta", "Early stopping: the least val-accuracy gain that counts."),
    "seed": (int, "--seed", "Seeds initialisation, shuffling, view draws and dropout."),
    "device": (str, "--device", "Where to train (auto: cuda when present)."),
    "precision": (str, "--precision", "auto: bf16 autocast on cuda and on CPUs with native bf16, else fp32."),
}
# a sequence head's settings (trainers.config.HeadConfig)
HEAD = {
    "hidden": (int, "--hidden", "Hidden size of the head."),
    "layers": (int, "--layers", "Stacked layers."),
    "bidirectional": (bool, "--bidirectional", "Recurrent heads: read the clip both ways."),
    "dropout": (float, "--dropout", "Dropout before the classifier."),
    "heads": (int, "--heads", "Attention heads (attention head)."),
}


def takes(defaults, group: dict, skip: tuple[str, ...] = ()):
    """Add the options of `group` to a command's signature, their defaults from the config class
    `defaults`; the command receives them in **settings."""
    def add(fn):
        sig = inspect.signature(fn, eval_str=True)  # annotations as objects: Typer reads them from here
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        new = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, name),
                                 annotation=Annotated[typ, opt(flag, help=text, choices=name if name in CHOICES else None)])
               for name, (typ, flag, text) in group.items() if name not in skip]
        fn.__signature__ = sig.replace(parameters=own + new)
        return fn
    return add


def _pick(settings: dict, group: dict) -> dict:
    return {k: v for k, v in settings.items() if k in group}


# ---- output ---------------------------------------------------------------------------------------------

def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@contextlib.contextmanager
def progress(label: str, unit: str = "videos", rate_of: str = "videos"):
    """A transient progress bar on stderr; yields update(done, total, counted=None). The rate is
    `counted` (e.g. frames) per second when given, else items done since the first report (items
    found done before, such as reused videos, do not inflate it)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    t0, first = time.perf_counter(), []
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TextColumn(f"{{task.fields[rate]}} {rate_of}/s"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, rate="-")

        def update(done: int, total: int | None, counted: int | None = None) -> None:
            first.append(done) if not first else None
            dt = time.perf_counter() - t0
            n = counted if counted is not None else done - first[0]
            bar.update(task, completed=done, total=total, rate=f"{n / dt:.1f}" if dt > 0 and n > 0 else "-")
        yield update


def _epoch_table(rows: list[dict]):
    from rich.table import Table

    table = Table("epoch", "lr", "train loss", "train acc", "val loss", "val acc", "s", title="training", min_width=60)
    for r in rows[-15:]:
        table.add_row(str(r["epoch"]), f"{r['lr']:.2e}", f"{r['train_loss']:.4f}", f"{r['train_acc']:.3f}",
                      f"{r['val_loss']:.4f}", f"{r['val_acc']:.3f}{' *' if r['best'] else ''}", f"{r['seconds']:.2f}")
    return table


def _train(train: Callable, quiet: bool = False):
    """Call `train(on_epoch)` with a live epoch table; print warnings, the run and its test metrics."""
    from rich.live import Live

    rows: list[dict] = []
    live = Live(console=out, transient=quiet, auto_refresh=False)  # started by the first epoch, not before

    def on_epoch(row: dict) -> None:
        if not rows:
            live.start()
        rows.append(row)
        live.update(_epoch_table(rows), refresh=True)

    try:
        res = train(on_epoch)
    finally:
        live.stop()
    if rows and not quiet:
        out.print()
    if not res.summary:  # a torchrun rank other than 0: rank 0 reports
        return res
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    s, t = res.summary, res.summary["test"]
    state = "up to date" if res.up_to_date else f"best epoch {s['best_epoch']} of {s['epochs_run']}, {s['train_seconds']:.1f} s"
    pairs = f", reversed pairs {t['reversed_pairs_top1']:.3f}" if "reversed_pairs_top1" in t else ""
    out.print(f"run: {res.run_dir} ({state})\ntest ({t['videos']} videos): top-1 {t['top1']:.3f}, top-5 {t['top5']:.3f}, "
              f"F1 macro {t['f1_macro']:.3f}, ROC AUC {t['roc_auc_ovr_macro']:.3f}{pairs}\n"
              f"report: {res.run_dir / 'report.md'}", highlight=False)
    return res


# ---- commands -------------------------------------------------------------------------------------------

@command()
def synth(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write the dataset into (UCF50 layout).")],
    classes: Annotated[int, typer.Option(help="Number of classes, 1..10; pairs (Grow/Shrink, ...) come first.")] = 6,
    groups: Annotated[int, typer.Option(help="Appearance groups per class (_gGG_).")] = 24,
    clips: Annotated[int, typer.Option(help="Clips per group (_cCC_).")] = 2,
    seed: Annotated[int, typer.Option(help="Everything is a function of this seed.")] = 0,
    frames: Annotated[int, typer.Option(help="Mean frames per clip (25 fps).")] = 50,
    verbose: Verbose = False,
):
    """Write har's synthetic action dataset: real Xvid AVI videos, 320x240, 25 fps.

    Examples:

        har synth data/synthetic

        har synth data/big --classes 10 --groups 25 --clips 4 --frames 175
    """
    _setup_logging(verbose)
    from pipeline import synth as S

    cfg = S.SynthConfig(classes=classes, groups=groups, clips=clips, seed=seed, frames=frames)
    cfg.validate()
    total = cfg.classes * cfg.groups * cfg.clips
    done = itertools.count(1)
    with progress("synth") as update:
        paths = S.generate(out_dir, cfg, on_video=lambda path: update(next(done), total))
    out.print(f"wrote {len(paths)} videos in {cfg.classes} classes to {out_dir}")


@command(interrupted="interrupted; the finished videos are kept, run the same command again to finish", kept="videos",
         where=lambda kw: kw.get("out_path") or __import__("pipeline.lineage").lineage.har_home())
def extract(
    dataset: Annotated[str, arg("The dataset's layout.", choices="dataset")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset folder [default: $HAR_HOME/datasets/DATASET].")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="The store itself (.zarr folder or .h5 file) [default: versioned under $HAR_HOME/stores].")] = None,
    recipe: Annotated[str, opt("--recipe", help="Named recipe from data_manifest.yaml; the flags below override its fields.", choices="recipe")] = "default",
    frames: Annotated[Optional[int], typer.Option(help="T frames per sample.")] = None,
    sampling: Annotated[Optional[str], opt("--sampling", help="Which frames: the sampling strategy.", choices="sampling")] = None,
    clips: Annotated[Optional[int], typer.Option(help="K clips per video (multiclip).")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Frame step inside a clip.")] = None,
    size: Annotated[Optional[str], typer.Option(help="PX or HxW of the stored frames.")] = None,
    views: Annotated[Optional[int], typer.Option(help="Augmented copies stored besides the clean view.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of random sampling and the views.")] = None,
    lossy: Annotated[Optional[bool], typer.Option("--lossy/--lossless", help="JPEG-coded frames (smaller) or lossless zstd.")] = None,
    fmt: Annotated[Optional[str], opt("--format", help="Store format [default: from --out, else zarr].", choices="fmt")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local Dask worker processes [default: all cores].")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Decoder threads per worker [default: cores / workers on the local cluster].")] = None,
    dask_scheduler: DaskScheduler = None,
    force: Annotated[bool, typer.Option(help="Extract every video again, replacing the store (also one made with another recipe at --out; never anything that is not a har frame store).")] = False,
    verify: Annotated[bool, typer.Option(help="Hash every source again (default: a file whose size, mtime, ctime and inode are unchanged keeps its recorded hash) and read the store against its checksums: damage found is extracted again.")] = False,
    verbose: Verbose = False,
):
    """Decode a dataset's videos into a chunked, compressed frame store (Zarr v3 or HDF5).

    Rerunning with nothing changed does nothing; a changed recipe makes a new store version; an
    added, removed or changed video is the only one decoded again. Exit status: 0 every video
    extracted, 3 the store was written but some videos failed (listed), 2 usage error.

    Examples:

        har extract ucf50 --root ~/data/UCF50

        har extract synthetic --root data/synthetic --frames 16 --size 112 --views 2

        har extract hmdb51 --root ~/data/hmdb51 --recipe resnet224 --format hdf5 --out hmdb.h5

        har extract ucf101 --root ~/data/UCF101 --sampling multiclip --clips 5 --scheduler tcp://head:8786
    """
    _setup_logging(verbose)
    from pipeline import datasets, store
    from pipeline import extract as E
    from pipeline import recipe as R

    datasets.DATASETS.get(dataset)
    if fmt is not None and fmt not in store.FORMATS:
        raise ValueError(f"--format {fmt!r} is not supported; allowed: {', '.join(store.FORMATS)}")
    if fmt is None:
        fmt = store.format_of(out_path) if out_path is not None else "zarr"
    elif out_path is not None and out_path.suffix and store.format_of(out_path) != fmt:
        raise ValueError(f"--out {out_path} does not look like a {fmt} store; use a .zarr folder or an .h5 file to "
                         "match --format")
    height, width = R.parse_size(size) if size is not None else (None, None)
    r = R.named_recipe(recipe, frames=frames, sampling=sampling, clips=clips, stride=stride, height=height,
                       width=width, views=views, seed=seed, lossy=lossy)
    r.validate()
    cfg = E.ExtractConfig(dataset=dataset, recipe=r, root=root, out=out_path, format=fmt, workers=workers,
                          threads=threads, scheduler=dask_scheduler, force=force, verify=verify)
    with progress("extract") as update:
        res = E.extract(cfg, progress=lambda done, total, rows: update(done, total))
    for note in res.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    if res.up_to_date:
        out.print(f"up to date: {res.store} ({res.ok} videos ok, {len(res.failed)} failed; checked in {res.seconds:.1f} s)")
    else:
        ratio = res.store_bytes / res.source_bytes if res.source_bytes else float("nan")
        decoded = (f" (decoded {res.frames_decoded:,} of {res.frames_in_source:,} source frames, "
                   f"{res.frames_decoded / res.frames_in_source:.0%})" if res.frames_in_source else "")
        out.print(f"store:   {res.store}\n"
                  f"videos:  {res.ok} ok, {len(res.failed)} failed ({res.decoded} decoded, {res.reused} reused unchanged)\n"
                  f"frames:  {res.frames:,}{decoded}\n"
                  f"bytes:   {_human(res.store_bytes)} = {ratio:.2f}x the {_human(res.source_bytes)} of source videos\n"
                  f"time:    {res.seconds:.1f} s", highlight=False)
    if res.failed:
        err.print(f"[bold yellow]{len(res.failed)} videos failed[/] (recorded with status=2 in the store):")
        for video, why in res.failed:
            err.print(f"  {video}: {why}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED)


@command(interrupted="interrupted; the finished shards are kept, run the same command again to finish", kept="shards",
         where=lambda kw: kw.get("out_path") or kw.get("store_path") or "the feature store (beside the frame store)")
def features(
    backbone: Annotated[str, opt("--backbone", help="Frozen 2D backbone (har models compares them).", choices="backbone")] = "resnet152",
    store_path: Annotated[Optional[Path], typer.Option("--store", help="The frame store (.zarr or .h5).")] = None,
    dataset: DatasetName = None,
    weights: Annotated[str, typer.Option(help="imagenet (torchvision's cache) | none (random init, marked) | PATH of a state_dict.")] = "imagenet",
    out_path: Annotated[Optional[Path], typer.Option("--out", help="The feature store [default: beside the frame store].")] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="Frames per forward pass.")] = 256,
    feature_precision: Annotated[str, opt("--precision", help="auto: bf16 on cuda, fp32 on cpu.", choices="feature_precision")] = "auto",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone (GPU).")] = False,
    resize: Annotated[str, opt("--resize", help="weights: the weights' own resize and crop (224 px); stored: frames as stored, only normalised (faster).", choices="resize")] = "weights",
    dask_scheduler: DaskScheduler = None,
    force: Annotated[bool, typer.Option(help="Encode again, replacing the feature store (also one made differently at --out: another backbone or frame store); never anything else.")] = False,
    verbose: Verbose = False,
):
    """Encode every frame of a frame store with a frozen 2D backbone into a feature store.

    Examples:

        har features --dataset ucf50 --backbone resnet152

        har features --store frames.zarr --backbone resnet18 --weights none --out feats.zarr

        har features --dataset ucf101 --backbone convnext_tiny --device cuda --batch-size 1024
    """
    _setup_logging(verbose)
    from pipeline import features as F

    cfg = F.FeatureConfig(backbone=backbone, weights=weights, store=store_path, dataset=dataset, out=out_path,
                          device=device, batch_size=batch_size, precision=feature_precision, compile=compile_,
                          resize=resize, scheduler=dask_scheduler, force=force)
    cfg.validate()
    with progress("features", rate_of="frames") as update:
        res = F.features(cfg, progress=lambda done, total, frames: update(done, total, frames))
    w = res.weights
    marked = "" if w.pretrained else "  [RANDOM WEIGHTS: features carry no ImageNet knowledge]"
    if res.up_to_date:
        out.print(f"up to date: {res.store}{marked}")
        return
    out.print(f"store:    {res.store}\n"
              f"backbone: {backbone} ({w.source}{', sha256 ' + w.sha256[:12] if w.sha256 else ''}){marked}\n"
              f"encoded:  {res.encoded_videos} videos, {res.frames:,} frames on {res.device} ({res.precision}), "
              f"{res.frames / res.seconds if res.seconds else 0:.0f} frames/s\n"
              f"failed:   {res.failed} videos (kept marked, not encoded)\n"
              f"bytes:    {_human(res.store_bytes)}\ntime:     {res.seconds:.1f} s", highlight=False)


@command()
def status(
    stores: Annotated[Optional[list[Path]], typer.Argument(help="Stores to check [default: every store under $HAR_HOME/stores].")] = None,
    verify: Annotated[bool, typer.Option(help="Read every sample against its checksum and hash every source again.")] = False,
):
    """List stores and whether each is current (finished, sound, inputs unchanged).

    States: current, stale (inputs changed: rerun the stage), incomplete (an interrupted run's
    working store, or an older har's), damaged (a chunk or attribute missing or changed),
    unreadable. Exit status: 0 every store current, 3 any other state.

    Examples:

        har status

        har status data/ucf50.zarr --verify
    """
    _setup_logging(False)
    from rich.table import Table

    from pipeline import lineage
    from pipeline import status as S

    paths = list(stores) if stores else S.find_stores()
    if not paths:
        out.print(f"no stores under {lineage.har_home() / 'stores'}")
        return
    table = Table("store", "dataset", "kind", "videos", "failed", "size", "state")
    colour = {"current": "green", "stale": "yellow"}
    not_current = 0
    for p in paths:
        s = S.store_state(p, verify=verify)
        state = f"[{colour.get(s.state, 'red')}]{s.state}[/]" + (f" ({s.reason})" if s.reason else "")
        if s.bad_videos:
            state += f"; videos: {', '.join(s.bad_videos)}"
        not_current += not s.current
        table.add_row(str(s.path), s.dataset, s.kind, str(s.videos), str(s.failed), _human(s.bytes), state)
    out.print(table)
    if not_current:
        raise typer.Exit(EXIT_SOME_FAILED)


Head = Annotated[str, arg("The sequence head (har models compares them).", choices="head")]
Features = Annotated[Optional[Path], typer.Option("--features", help="The feature store.")]
RunOut = Annotated[Optional[Path], typer.Option("--out", help="Run folder [default: runs/NAME-SPLIT-FINGERPRINT].")]
TRAINING = "interrupted; the same command resumes from the last finished epoch"


def _head_config(head: str, settings: dict):
    from trainers.head_task import TrainConfig

    cfg = TrainConfig(head=head, head_options=C.HeadConfig(**_pick(settings, HEAD)), **_pick(settings, LOOP))
    cfg.validate()
    return cfg


@command("train-head", interrupted=TRAINING)
@takes(C.HeadConfig, HEAD)
@takes(C.TrainConfig, LOOP)
def train_head(head: Head, features: Features = None, dataset: DatasetName = None,
               backbone: Annotated[Optional[str], opt("--backbone", help="With --dataset: the latest feature store of this backbone.", choices="backbone")] = None,
               out_dir: RunOut = None, verbose: Verbose = False, **settings):
    """Train a sequence head on cached features: seconds, not hours. Resumes if interrupted.

    Examples:

        har train-head lstm --dataset ucf50 --backbone resnet152

        har train-head gru --features feats.zarr --split random --epochs 50 --bidirectional

        har train-head attention --features feats.zarr --optimizer adamw --scheduler cosine --lr 3e-4
    """
    _setup_logging(verbose)
    from trainers import head_task

    rc = head_task.RunConfig(_head_config(head, settings), features=features, dataset=dataset, backbone=backbone,
                             out=out_dir)
    _train(lambda on_epoch: head_task.train_head(rc, on_epoch=on_epoch))


@command(interrupted="interrupted; the same command skips the finished folds and resumes the current one")
@takes(C.HeadConfig, HEAD)
@takes(C.TrainConfig, LOOP, skip=("split",))
def cv(head: Head, features: Features = None, dataset: DatasetName = None,
       folds: Annotated[str, opt("--folds", help="logo: leave one group out; official: UCF101/HMDB51 splits 1-3.", choices="folds")] = "logo",
       out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder of the fold runs [default: runs/cv-HEAD-FOLDS-FINGERPRINT].")] = None,
       verbose: Verbose = False, **settings):
    """Cross-validate a head: every leave-one-group-out fold (25 on UCF50) or the official splits; mean +- std.

    Examples:

        har cv lstm --features feats.zarr --folds logo

        har cv gru --dataset ucf101 --folds official --epochs 40
    """
    _setup_logging(verbose)
    from rich.table import Table

    from trainers import cv as CV
    from trainers import head_task

    table = Table("fold", "test videos", "top-1", "top-5", "F1 macro", "", title=f"{head}: {folds} folds")

    def on_fold(row: dict) -> None:
        table.add_row(row["fold"], str(row["test_videos"]), f"{row['top1']:.3f}", f"{row['top5']:.3f}",
                      f"{row['f1_macro']:.3f}", "up to date" if row["up_to_date"] else "")
        err.print(f"fold {row['fold']}: top-1 {row['top1']:.3f}", highlight=False)

    rc = head_task.RunConfig(_head_config(head, settings), features=features, dataset=dataset, out=out_dir)
    res = CV.cv(rc, folds, on_fold)
    out.print(table)
    s = res.summary
    out.print(f"{head}, {len(res.folds)} {folds} folds: top-1 {s['top1']['mean']:.3f} +- {s['top1']['std']:.3f}, "
              f"F1 macro {s['f1_macro']['mean']:.3f} +- {s['f1_macro']['std']:.3f}\nresults: {res.out / 'cv.json'}",
              highlight=False)


@command("train-e2e", interrupted=TRAINING)
@takes(C.E2EConfig, LOOP)
def train_e2e(
    model: Annotated[str, arg("The video model (har models compares them).", choices="model")],
    frames: Annotated[Optional[Path], typer.Option(help="The frame store.")] = None,
    dataset: DatasetName = None, out_dir: RunOut = None,
    pretrained: Annotated[str, opt("--pretrained", help="Initial weights: kinetics400 for torchvision's video ResNets and nonlocal, imagenet for the 2D-based (i3d, lrcn, late-fusion-e2e).", choices="pretrained")] = C.E2EConfig.pretrained,
    crop: Annotated[Optional[int], typer.Option(help="Crop size [default: the model's input size, at most the stored size].")] = None,
    three_crop: Annotated[bool, typer.Option(help="Test time: three crops per clip, averaged.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes [default: min(8, cores - 1), at least 2].")] = None,
    memory_format: Annotated[str, opt("--memory-format", help="auto: channels-last on CUDA.", choices="memory_format")] = C.E2EConfig.memory_format,
    verbose: Verbose = False, **settings,
):
    """Train a video model end to end from a frame store (no decoding while training). Resumes if interrupted.

    Examples:

        har train-e2e r2plus1d_18 --dataset ucf101 --pretrained kinetics400 --epochs 20

        har train-e2e small-cnn-lstm --frames frames64.zarr --batch-size 32 --lr 1e-3

        har train-e2e c3d --frames clips.zarr --batch-size 4 --accumulate 4 --three-crop
    """
    _setup_logging(verbose)
    from trainers import clip_task

    cfg = C.E2EConfig(model=model, pretrained=pretrained, crop=crop, three_crop=three_crop, workers=workers,
                      memory_format=memory_format, **settings)
    cfg.validate()
    rc = clip_task.E2ERunConfig(cfg, frames=frames, dataset=dataset, out=out_dir)
    _train(lambda on_epoch: clip_task.train_e2e(rc, on_epoch=on_epoch))


RunDir = Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run folder of `har train-head` or `har train-e2e`.")]


@command()
def evaluate(run_dir: RunDir,
             part: Annotated[str, opt("--split", help="Which part of the run's split.", choices="part")] = "test",
             as_json: AsJson = False):
    """Recompute a run's metrics from its best checkpoint and the store it trained on.

    Examples:

        har evaluate runs/lstm-groups-1a2b3c4d5e

        har evaluate runs/r2plus1d_18-groups-0f0e0d0c0b --split val --json
    """
    _setup_logging(False)
    import json

    from trainers import runs

    m = runs.evaluate_run(run_dir, part)
    if as_json:
        print(json.dumps(m, indent=2))
        return
    from rich.table import Table

    table = Table("metric", "value", title=f"{run_dir.name}: split {m['split']}, {part} ({m['videos']} videos)")
    for k, v in m.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    out.print(table)


@command()
def predict(
    videos: Annotated[list[Path], typer.Argument(metavar="VIDEO...", help="Video files (any container PyAV reads).")],
    run_dir: Annotated[Path, typer.Option("--run", help="A run folder of `har train-head` or `har train-e2e`.")],
    top: Annotated[int, typer.Option(help="How many classes to list.")] = 5,
    device: Device = "auto", as_json: AsJson = False,
):
    """Classify video files with a trained run: decoded and sampled as its store was, then its model.

    Examples:

        har predict clip.avi --run runs/lstm-groups-1a2b3c4d5e

        har predict a.mp4 b.mkv --run runs/r2plus1d_18-official1-0f0e0d0c0b --json
    """
    _setup_logging(False)
    import json

    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise ValueError(f"no such video file: {', '.join(missing)}")
    if top < 1:
        raise ValueError(f"--top {top} must be >= 1")
    from trainers import predictor

    model = predictor.load(run_dir, device)
    results = [model(v, top) for v in videos]
    if as_json:
        print(json.dumps({"run": str(run_dir), "predictions": results}, indent=2))
    else:
        for r in results:
            if "error" in r:
                err.print(f"[red]{r['video']}: {r['error']}[/]", highlight=False)
                continue
            out.print(f"[bold]{r['video']}[/] ({r['clips']} clip{'s' if r['clips'] > 1 else ''})")
            for i, p in enumerate(r["top"], 1):
                out.print(f"  {i}. {p['class']:<24} {p['probability']:.3f}", highlight=False)
    if any("error" in r for r in results):
        raise typer.Exit(EXIT_SOME_FAILED)


@command()
def models(as_json: AsJson = False):
    """List every registered backbone, head and video model, with parameters and GFLOPs.

    GFLOPs are counted for one input at the listed size (2 x multiply-adds) on PyTorch's meta
    device: nothing is computed, no weights are needed.

    Examples:

        har models

        har models --json
    """
    _setup_logging(False)
    import json

    from pipeline import backbones
    from trainers import heads, models3d

    rows = {"backbones": [backbones.cost(n) for n in backbones.names()],
            "heads": [heads.cost(n, C.HeadConfig()) for n in heads.names()],
            "video_models": [models3d.cost(n) for n in models3d.names()]}
    if as_json:
        print(json.dumps(rows, indent=2, default=list))
        return
    from rich.table import Table

    for title, key in (("backbones (frozen, har features)", "backbones"), ("heads (har train-head)", "heads"),
                       ("video models (end to end)", "video_models")):
        table = Table(title=title, title_justify="left")
        table.add_column("name", no_wrap=True)
        for col in ("params", "GFLOPs", "input", "pretrained", "what"):
            table.add_column(col, no_wrap=col != "what")
        for r in rows[key]:
            table.add_row(r["name"], f"{r['params'] / 1e6:.2f} M", f"{r['gflops']:.2f}", r["input"],
                          ", ".join(r["pretrained"]), r["about"])
        out.print(table)


DEMO_BACKBONE = "resnet18"
DEMO_HEADS = ("lstm", "mean")
DEMO_TRAINING = dict(epochs=40, batch_size=16, scheduler="cosine", patience=40)


@command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the synthetic videos and the runs.")] = Path("har-demo"),
    workers: Annotated[Optional[int], typer.Option(help="Local Dask worker processes [default: all cores].")] = None,
    verbose: Verbose = False,
):
    """The whole chain on har's own synthetic dataset, no download: synth -> extract -> features ->
    train `lstm` and `mean` -> report. A few minutes on 2 CPU cores.

    Examples:

        har demo

        har demo --out /tmp/har-demo
    """
    _setup_logging(verbose)
    from pipeline import backbones
    from pipeline import extract as E
    from pipeline import features as F
    from pipeline import recipe as R
    from pipeline import synth as S
    from trainers import head_task

    root = out_dir / "synthetic"
    cfg = S.SynthConfig()
    out.print(f"[bold]1/4 synth[/]: {cfg.classes} classes x {cfg.groups} groups x {cfg.clips} clips -> {root}")
    S.generate(root, cfg)
    out.print("[bold]2/4 extract[/]: uniform 16 frames, 112 px")
    res = E.extract(E.ExtractConfig("synthetic", R.named_recipe("default", views=0), root=root, workers=workers))
    state = "up to date" if res.up_to_date else f"{res.decoded} decoded in {res.seconds:.1f} s"
    ratio = res.store_bytes / res.source_bytes if res.source_bytes else float("nan")
    out.print(f"  frame store: {res.store}\n  {res.ok} videos ok, {len(res.failed)} failed, {state}; "
              f"{_human(res.store_bytes)} = {ratio:.2f}x the source videos", highlight=False)
    weights = "imagenet" if backbones.weights_file(DEMO_BACKBONE).exists() else "none"
    label = "ImageNet weights (cached)" if weights == "imagenet" else \
        f"RANDOM weights (no ImageNet weights cached at {backbones.weights_file(DEMO_BACKBONE)})"
    out.print(f"[bold]3/4 features[/]: {DEMO_BACKBONE}, {label}, frames at their stored 112 px")
    fres = F.features(F.FeatureConfig(backbone=DEMO_BACKBONE, weights=weights, store=res.store, resize="stored"))
    out.print(f"  feature store: {fres.store} "
              f"({'up to date' if fres.up_to_date else f'{fres.frames:,} frames in {fres.seconds:.1f} s'})",
              highlight=False)
    results = {}
    for i, head in enumerate(DEMO_HEADS):
        out.print(f"[bold]4/4 train-head {head}[/] on the group-disjoint split ({i + 1}/{len(DEMO_HEADS)})")
        rc = head_task.RunConfig(head_task.TrainConfig(head=head, **DEMO_TRAINING), features=fres.store,
                                 out=out_dir / "runs" / head)
        results[head] = _train(lambda on_epoch, rc=rc: head_task.train_head(rc, on_epoch=on_epoch), quiet=True)
    lstm, mean = (results[h].summary["test"] for h in DEMO_HEADS)
    out.print(f"\n[bold]done.[/] lstm {lstm['top1']:.0%} vs mean (bag of frames) {mean['top1']:.0%} test accuracy; "
              f"on the reversed pairs {lstm['reversed_pairs_top1']:.0%} vs {mean['reversed_pairs_top1']:.0%}.\n"
              f"reports: {results['lstm'].run_dir / 'report.md'}\n         {results['mean'].run_dir / 'report.md'}",
              highlight=False)


def main() -> None:  # python -m cli
    app()


if __name__ == "__main__":
    sys.exit(main())
