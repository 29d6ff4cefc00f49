"""har command line: parse -> frozen config -> one library call -> print.

Thin on purpose: every command builds a config, calls one library function and prints what it
returns. Heavy imports (numpy, PyAV, Zarr, Dask; later torch) happen inside the commands, so
`har --help` is instant.

One error boundary (`_boundary`, wrapped around every command) turns what a command raises into
one line on stderr and an exit code from one table:

    0    done
    1    a bug in har: one line, "please report", the traceback only with --verbose
    2    usage or bad input: a value out of its allowed set, a missing or damaged input, an output
         path har refuses to write, a request that cannot fit in memory (ValueError, OSError)
    3    finished, but some videos failed (extract, predict), or some store is not current (status)
    4    the disk (or quota) filled up: what was finished is kept, the same command finishes
    130  interrupted (Ctrl-C): what was finished is kept, the same command resumes
"""
from __future__ import annotations

import errno
import functools
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Human action recognition: versioned frame stores from videos, and models trained on them.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")
out = Console()
err = Console(stderr=True)

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3  # also: har status found a store that is not current
EXIT_NO_SPACE = 4  # the disk (or quota) filled up: what was finished is kept, the same command finishes
EXIT_INTERRUPTED = 130
REPORT = "https://github.com/har-project/har/issues"


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fail_writing(e: OSError, where: object, kept: str) -> None:
    """A stage's run stopped by an OSError: a full disk is said as such (exit 4), the rest as usage."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        _fail(f"no space left on the device of {where}; the finished {kept} are kept: free some space "
              "and run the same command again to finish", EXIT_NO_SPACE)
    _fail(str(e))


def _boundary(fn):
    """The one error boundary: every command's exceptions become a line and an exit code (see the
    module docstring). Commands may still catch what they can say better (a resume hint)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            _fail("interrupted; what was finished is kept: run the same command again to go on", EXIT_INTERRUPTED)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                _fail(f"no space left on the device ({e.filename or 'while writing'}); what was finished is kept: "
                      "free some space and run the same command again", EXIT_NO_SPACE)
            _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        except MemoryError:
            _fail("ran out of memory; lower --batch-size, --frames, --size or --workers", EXIT_USAGE)
        except ValueError as e:  # har's own input errors: DatasetError, StoreError, OutputError, ...
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


def command(*args, **kwargs):
    """`app.command`, with the error boundary around the command."""
    def register(fn):
        return app.command(*args, **kwargs)(_boundary(fn))
    return register


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


def _decoding(res) -> str:
    """How much of the sources was decoded (partial decoding skips GOPs without a sampled frame)."""
    if not res.frames_in_source:
        return ""
    share = res.frames_decoded / res.frames_in_source
    return f" (decoded {res.frames_decoded:,} of {res.frames_in_source:,} source frames, {share:.0%})"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@command()
def synth(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to write the dataset into (UCF50 layout)."),
    classes: int = typer.Option(6, "--classes", help="Number of classes, 1..10; pairs (Grow/Shrink, ...) come first."),
    groups: int = typer.Option(24, "--groups", help="Appearance groups per class (_gGG_)."),
    clips: int = typer.Option(2, "--clips", help="Clips per group (_cCC_)."),
    seed: int = typer.Option(0, "--seed", help="Everything is a function of this seed."),
    frames: int = typer.Option(50, "--frames", help="Mean frames per clip (25 fps)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Write har's synthetic action dataset: real Xvid AVI videos, 320x240, 25 fps.

    Examples:

        har synth data/synthetic

        har synth data/big --classes 10 --groups 25 --clips 4 --frames 175
    """
    _setup_logging(verbose)
    from pipeline import synth as S

    cfg = S.SynthConfig(classes=classes, groups=groups, clips=clips, seed=seed, frames=frames)
    try:
        cfg.validate()
    except ValueError as e:
        _fail(str(e))
    from rich.progress import Progress

    total = cfg.classes * cfg.groups * cfg.clips
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("synth", total=total)
        paths = S.generate(out_dir, cfg, on_video=lambda p: bar.advance(task))
    out.print(f"wrote {len(paths)} videos in {cfg.classes} classes to {out_dir}")


@command()
def extract(
    dataset: str = typer.Argument(..., help="ucf50 | ucf101 | hmdb51 | folder | synthetic"),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset folder [default: $HAR_HOME/datasets/DATASET]."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="The store itself (.zarr folder or .h5 file) [default: versioned under $HAR_HOME/stores]."),
    recipe: str = typer.Option("default", "--recipe", help="Named recipe from data_manifest.yaml; the flags below override its fields."),
    frames: Optional[int] = typer.Option(None, "--frames", help="T frames per sample."),
    sampling: Optional[str] = typer.Option(None, "--sampling", help="uniform | random-uniform | clip | multiclip"),
    clips: Optional[int] = typer.Option(None, "--clips", help="K clips per video (multiclip)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Frame step inside a clip."),
    size: Optional[str] = typer.Option(None, "--size", help="PX or HxW of the stored frames."),
    views: Optional[int] = typer.Option(None, "--views", help="Augmented copies stored besides the clean view."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of random sampling and the views."),
    lossy: Optional[bool] = typer.Option(None, "--lossy/--lossless", help="JPEG-coded frames (smaller) or lossless zstd."),
    fmt: Optional[str] = typer.Option(None, "--format", help="zarr | hdf5 [default: from --out, else zarr]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local Dask worker processes [default: all cores]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Decoder threads per worker [default: cores / workers on the local cluster]."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a running dask.distributed scheduler, e.g. tcp://10.0.0.5:8786."),
    force: bool = typer.Option(False, "--force", help="Extract every video again, replacing the store (also one made with another recipe at --out; never anything that is not a har frame store)."),
    verify: bool = typer.Option(False, "--verify", help="Hash every source again (default: a file whose size, mtime, ctime and inode are unchanged keeps its recorded hash) and read the store against its checksums: damage found is extracted again."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
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
    from pipeline import datasets, lineage, store
    from pipeline import extract as E

    if dataset not in datasets.ADAPTERS:
        _fail(f"unknown dataset {dataset!r}; allowed: {', '.join(datasets.ADAPTERS)}")
    if fmt is not None and fmt not in store.FORMATS:
        _fail(f"--format {fmt!r} is not supported; allowed: {', '.join(store.FORMATS)}")
    if fmt is None:
        fmt = store.format_of(out_path) if out_path is not None else "zarr"
    elif out_path is not None and out_path.suffix and store.format_of(out_path) != fmt:
        _fail(f"--out {out_path} does not look like a {fmt} store; use a .zarr folder or an .h5 file to match --format")
    try:
        hw = E.parse_size(size) if size is not None else (None, None)
        r = E.named_recipe(recipe, frames=frames, sampling=sampling, clips=clips, stride=stride, height=hw[0],
                           width=hw[1], views=views, seed=seed, lossy=lossy)
        r.validate()
    except ValueError as e:
        _fail(str(e))
    cfg = E.ExtractConfig(dataset=dataset, recipe=r, root=root, out=out_path, format=fmt, workers=workers,
                          threads=threads, scheduler=scheduler, force=force, verify=verify)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} videos/s"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    import time

    t0 = time.perf_counter()
    first_done: list[int] = []
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("extract", total=None, rate="-")

        def on_progress(done: int, total: int, rows: list[dict]) -> None:
            if not first_done:
                first_done.append(done)
            dt = time.perf_counter() - t0
            rate = f"{(done - first_done[0]) / dt:.1f}" if dt > 0 and done > first_done[0] else "-"
            bar.update(task, completed=done, total=total, rate=rate)

        try:
            res = E.extract(cfg, progress=on_progress)
        except ValueError as e:  # DatasetError, StoreError
            _fail(str(e))
        except OSError as e:  # missing files, a full disk
            _fail_writing(e, cfg.out or lineage.har_home(), "videos")
        except KeyboardInterrupt:
            _fail("interrupted; the finished videos are kept, run the same command again to finish", 130)
    for note in res.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    if res.up_to_date:
        out.print(f"up to date: {res.store} ({res.ok} videos ok, {len(res.failed)} failed; checked in {res.seconds:.1f} s)")
    else:
        ratio = res.store_bytes / res.source_bytes if res.source_bytes else float("nan")
        out.print(f"store:   {res.store}\n"
                  f"videos:  {res.ok} ok, {len(res.failed)} failed ({res.decoded} decoded, {res.reused} reused unchanged)\n"
                  f"frames:  {res.frames:,}{_decoding(res)}\n"
                  f"bytes:   {_human(res.store_bytes)} = {ratio:.2f}x the {_human(res.source_bytes)} of source videos\n"
                  f"time:    {res.seconds:.1f} s", highlight=False)
    if res.failed:
        err.print(f"[bold yellow]{len(res.failed)} videos failed[/] (recorded with status=2 in the store):")
        for video, why in res.failed:
            err.print(f"  {video}: {why}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED)


@command()
def features(
    backbone: str = typer.Option("resnet152", "--backbone", help="resnet152 | resnet50 | resnet18 | convnext_tiny | efficientnet_v2_s"),
    store_path: Optional[Path] = typer.Option(None, "--store", help="The frame store (.zarr or .h5)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Use the latest frame store extracted for this dataset."),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet (torchvision's cache) | none (random init, marked) | PATH of a state_dict."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="The feature store [default: beside the frame store]."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    batch_size: int = typer.Option(256, "--batch-size", help="Frames per forward pass."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16 | fp16"),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the backbone (GPU)."),
    resize: str = typer.Option("weights", "--resize", help="weights: the weights' own resize and crop (224 px) | stored: frames as stored, only normalised (faster)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask.distributed address: shards spread over its workers."),
    force: bool = typer.Option(False, "--force", help="Encode again, replacing the feature store (also one made differently at --out: another backbone or frame store); never anything else."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Encode every frame of a frame store with a frozen 2D backbone into a feature store.

    Examples:

        har features --dataset ucf50 --backbone resnet152

        har features --store frames.zarr --backbone resnet18 --weights none --out feats.zarr

        har features --dataset ucf101 --backbone convnext_tiny --device cuda --batch-size 1024
    """
    _setup_logging(verbose)
    if store_path is None and dataset is None:
        _fail("give --store PATH or --dataset NAME (the frame store to encode)")
    from pipeline import backbones
    from pipeline import features as F

    cfg = F.FeatureConfig(backbone=backbone, weights=weights, store=store_path, dataset=dataset, out=out_path,
                          device=device, batch_size=batch_size, precision=precision, compile=compile_,
                          resize=resize, scheduler=scheduler, force=force)
    try:
        cfg.validate()
    except ValueError as e:
        _fail(str(e))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import time

    t0 = time.perf_counter()
    with Progress(TextColumn("features"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
                  TextColumn("{task.fields[rate]} frames/s"), TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("features", total=None, rate="-")

        def on_progress(done: int, total: int, frames: int) -> None:
            dt = time.perf_counter() - t0
            bar.update(task, completed=done, total=total, rate=f"{frames / dt:.0f}" if frames and dt else "-")

        try:
            res = F.features(cfg, progress=on_progress)
        except (ValueError, backbones.WeightsError) as e:
            _fail(str(e))
        except OSError as e:
            _fail_writing(e, out_path or store_path or "the feature store (beside the frame store)", "shards")
        except KeyboardInterrupt:
            _fail("interrupted; the finished shards are kept, run the same command again to finish", 130)
    w = res.weights
    marked = "" if w.pretrained else "  [RANDOM WEIGHTS: features carry no ImageNet knowledge]"
    if res.up_to_date:
        out.print(f"up to date: {res.store}{marked}")
        return
    rate = res.frames / res.seconds if res.seconds else 0
    out.print(f"store:    {res.store}\n"
              f"backbone: {backbone} ({w.source}{', sha256 ' + w.sha256[:12] if w.sha256 else ''}){marked}\n"
              f"encoded:  {res.encoded_videos} videos, {res.frames:,} frames on {res.device} ({res.precision}), "
              f"{rate:.0f} frames/s\n"
              f"failed:   {res.failed} videos (kept marked, not encoded)\n"
              f"bytes:    {_human(res.store_bytes)}\ntime:     {res.seconds:.1f} s", highlight=False)


@command()
def status(
    stores: Optional[list[Path]] = typer.Argument(None, help="Stores to check [default: every store under $HAR_HOME/stores]."),
    verify: bool = typer.Option(False, "--verify", help="Read every sample against its checksum and hash every source again."),
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


# ---- training on cached features ------------------------------------------------------------------

def _epoch_table(rows: list[dict]):
    from rich.table import Table

    table = Table("epoch", "lr", "train loss", "train acc", "val loss", "val acc", "s", title="training", min_width=60)
    for r in rows[-15:]:
        star = " *" if r["best"] else ""
        table.add_row(str(r["epoch"]), f"{r['lr']:.2e}", f"{r['train_loss']:.4f}", f"{r['train_acc']:.3f}",
                      f"{r['val_loss']:.4f}", f"{r['val_acc']:.3f}{star}", f"{r['seconds']:.2f}")
    return table


def _train_config(head: str, split: Optional[str], epochs: int, batch_size: int, optimizer: str, lr: float,
                  weight_decay: float, scheduler: str, class_weighted: bool, patience: int, min_delta: float,
                  seed: int, device: str, hidden: int, layers: int, bidirectional: bool, dropout: float, heads_: int,
                  precision: str = "auto", train_views: str = "augmented"):
    from trainers import heads, loop

    cfg = loop.TrainConfig(head=head, head_options=heads.HeadConfig(hidden, layers, bidirectional, dropout, heads_),
                           split=split, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                           weight_decay=weight_decay, scheduler=scheduler, class_weighted=class_weighted,
                           patience=patience, min_delta=min_delta, seed=seed, device=device, precision=precision,
                           train_views=train_views)
    return _validated(cfg)


def _validated(cfg):
    """The config, or one line and exit 2 when a value is out of its allowed set."""
    try:
        cfg.validate()
    except ValueError as e:
        _fail(str(e))
    return cfg


def _print_metrics(summary: dict, run_dir: Path) -> None:
    t = summary["test"]
    pairs = f", reversed pairs {t['reversed_pairs_top1']:.3f}" if "reversed_pairs_top1" in t else ""
    out.print(f"test ({t['videos']} videos): top-1 {t['top1']:.3f}, top-5 {t['top5']:.3f}, F1 macro {t['f1_macro']:.3f}, "
              f"ROC AUC {t['roc_auc_ovr_macro']:.3f}{pairs}\nreport: {run_dir / 'report.md'}", highlight=False)


_HEAD_OPTIONS = dict(
    split=typer.Option(None, "--split", help="Split in the store: groups (default where groups exist), random, logoNN, official1..3."),
    epochs=typer.Option(30, "--epochs", help="Most epochs (early stopping may end sooner)."),
    batch_size=typer.Option(32, "--batch-size", help="Videos per step."),
    train_views=typer.Option("augmented", "--train-views", help="Which stored view each epoch draws: augmented (a random augmented view; clean if none) | all | clean."),
    optimizer=typer.Option("adam", "--optimizer", help="adam | adamw"),
    lr=typer.Option(1e-3, "--lr", help="Learning rate."),
    weight_decay=typer.Option(1e-4, "--weight-decay", help="Weight decay."),
    scheduler=typer.Option("plateau", "--scheduler", help="plateau (ReduceLROnPlateau on val accuracy) | exponential | cosine | none"),
    class_weighted=typer.Option(False, "--class-weighted", help="Weight the loss by inverse class frequency."),
    patience=typer.Option(10, "--patience", help="Early stopping: epochs without improvement."),
    min_delta=typer.Option(0.001, "--min-delta", help="Early stopping: the least val-accuracy gain that counts."),
    seed=typer.Option(0, "--seed", help="Seeds initialisation, shuffling, view draws and dropout."),
    device=typer.Option("auto", "--device", help="auto | cpu | cuda"),
    precision=typer.Option("auto", "--precision", help="auto (bf16 autocast on cuda and CPUs with native bf16, else fp32) | fp32 | bf16"),
    hidden=typer.Option(256, "--hidden", help="Hidden size of the head."),
    layers=typer.Option(1, "--layers", help="Stacked layers."),
    bidirectional=typer.Option(False, "--bidirectional", help="Recurrent heads: read the clip both ways."),
    dropout=typer.Option(0.5, "--dropout", help="Dropout before the classifier."),
    heads_=typer.Option(4, "--heads", help="Attention heads (attention head)."),
)


@command("train-head")
def train_head(
    head: str = typer.Argument(..., help="lstm | gru | rnn | late-fusion | mean | attention"),
    features: Optional[Path] = typer.Option(None, "--features", help="The feature store."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Use the latest feature store of this dataset."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="With --dataset: the latest feature store of this backbone."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: runs/HEAD-SPLIT-FINGERPRINT]."),
    split: Optional[str] = _HEAD_OPTIONS["split"], epochs: int = _HEAD_OPTIONS["epochs"],
    batch_size: int = _HEAD_OPTIONS["batch_size"], optimizer: str = _HEAD_OPTIONS["optimizer"],
    lr: float = _HEAD_OPTIONS["lr"], weight_decay: float = _HEAD_OPTIONS["weight_decay"],
    scheduler: str = _HEAD_OPTIONS["scheduler"], class_weighted: bool = _HEAD_OPTIONS["class_weighted"],
    patience: int = _HEAD_OPTIONS["patience"], min_delta: float = _HEAD_OPTIONS["min_delta"],
    seed: int = _HEAD_OPTIONS["seed"], device: str = _HEAD_OPTIONS["device"], hidden: int = _HEAD_OPTIONS["hidden"],
    layers: int = _HEAD_OPTIONS["layers"], bidirectional: bool = _HEAD_OPTIONS["bidirectional"],
    dropout: float = _HEAD_OPTIONS["dropout"], heads_: int = _HEAD_OPTIONS["heads_"],
    precision: str = _HEAD_OPTIONS["precision"], train_views: str = _HEAD_OPTIONS["train_views"],
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Train a sequence head on cached features: seconds, not hours. Resumes if interrupted.

    Examples:

        har train-head lstm --dataset ucf50 --backbone resnet152

        har train-head gru --features feats.zarr --split random --epochs 50 --bidirectional

        har train-head attention --features feats.zarr --optimizer adamw --scheduler cosine --lr 3e-4
    """
    _setup_logging(verbose)
    if features is None and dataset is None:
        _fail("give --features PATH or --dataset NAME (the feature store to train on)")
    cfg = _train_config(head, split, epochs, batch_size, optimizer, lr, weight_decay, scheduler, class_weighted,
                        patience, min_delta, seed, device, hidden, layers, bidirectional, dropout, heads_, precision,
                        train_views)
    _run_head(cfg, features, dataset, backbone, out_dir)


def _run_head(cfg, features: Optional[Path], dataset: Optional[str], backbone: Optional[str],
              out_dir: Optional[Path], quiet: bool = False):
    from trainers import runs

    rc = runs.RunConfig(cfg, features=features, dataset=dataset, backbone=backbone, out=out_dir)
    return _run(lambda on_epoch: runs.train_head(rc, on_epoch=on_epoch), quiet)


def _run(train, quiet: bool = False):
    """Call `train(on_epoch)` with a live epoch table; print warnings, the run and its metrics."""
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
    except ValueError as e:  # StoreError, WeightsError, RunError, ...; OSError goes to the boundary (exit 4 on a full disk)
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; the same command resumes from the last finished epoch", 130)
    finally:
        live.stop()
    if rows and not quiet:
        out.print()
    if not res.summary:  # a torchrun rank other than 0: rank 0 reports
        return res
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    s = res.summary
    state = "up to date" if res.up_to_date else f"best epoch {s['best_epoch']} of {s['epochs_run']}, {s['train_seconds']:.1f} s"
    out.print(f"run: {res.run_dir} ({state})", highlight=False)
    _print_metrics(s, res.run_dir)
    return res


@command()
def evaluate(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A run directory of `har train-head`."),
    split: str = typer.Option("test", "--split", help="Which part of the run's split: train | val | test."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
):
    """Recompute a run's metrics from its best checkpoint and its feature store.

    Examples:

        har evaluate runs/lstm-groups-1a2b3c4d5e

        har evaluate runs/lstm-groups-1a2b3c4d5e --split val --json
    """
    _setup_logging(False)
    import json

    from trainers import runs

    try:
        m = runs.evaluate_run(run_dir, split)
    except ValueError as e:  # StoreError, RunError, ...
        _fail(str(e))
    if as_json:
        print(json.dumps({k: v for k, v in m.items()}, indent=2))
        return
    from rich.table import Table

    table = Table("metric", "value", title=f"{run_dir.name}: split {m['split']}, {split} ({m['videos']} videos)")
    for k, v in m.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    out.print(table)


@command()
def cv(
    head: str = typer.Argument(..., help="lstm | gru | rnn | late-fusion | mean | attention"),
    features: Optional[Path] = typer.Option(None, "--features", help="The feature store."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Use the latest feature store of this dataset."),
    folds: str = typer.Option("logo", "--folds", help="logo (leave one group out) | official (UCF101/HMDB51 splits 1-3)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder of the fold runs [default: runs/cv-HEAD-FOLDS-FINGERPRINT]."),
    epochs: int = _HEAD_OPTIONS["epochs"], batch_size: int = _HEAD_OPTIONS["batch_size"],
    optimizer: str = _HEAD_OPTIONS["optimizer"], lr: float = _HEAD_OPTIONS["lr"],
    weight_decay: float = _HEAD_OPTIONS["weight_decay"], scheduler: str = _HEAD_OPTIONS["scheduler"],
    class_weighted: bool = _HEAD_OPTIONS["class_weighted"], patience: int = _HEAD_OPTIONS["patience"],
    min_delta: float = _HEAD_OPTIONS["min_delta"], seed: int = _HEAD_OPTIONS["seed"],
    device: str = _HEAD_OPTIONS["device"], hidden: int = _HEAD_OPTIONS["hidden"], layers: int = _HEAD_OPTIONS["layers"],
    bidirectional: bool = _HEAD_OPTIONS["bidirectional"], dropout: float = _HEAD_OPTIONS["dropout"],
    heads_: int = _HEAD_OPTIONS["heads_"], precision: str = _HEAD_OPTIONS["precision"],
    train_views: str = _HEAD_OPTIONS["train_views"],
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Cross-validate a head: every leave-one-group-out fold (25 on UCF50) or the official splits; mean +- std.

    Examples:

        har cv lstm --features feats.zarr --folds logo

        har cv gru --dataset ucf101 --folds official --epochs 40
    """
    _setup_logging(verbose)
    if features is None and dataset is None:
        _fail("give --features PATH or --dataset NAME (the feature store to cross-validate on)")
    cfg = _train_config(head, None, epochs, batch_size, optimizer, lr, weight_decay, scheduler, class_weighted,
                        patience, min_delta, seed, device, hidden, layers, bidirectional, dropout, heads_, precision,
                        train_views)
    from rich.table import Table

    from trainers import runs

    table = Table("fold", "test videos", "top-1", "top-5", "F1 macro", "", title=f"{head}: {folds} folds")
    try:
        def on_fold(row: dict) -> None:
            table.add_row(row["fold"], str(row["test_videos"]), f"{row['top1']:.3f}", f"{row['top5']:.3f}",
                          f"{row['f1_macro']:.3f}", "up to date" if row["up_to_date"] else "")
            err.print(f"fold {row['fold']}: top-1 {row['top1']:.3f}", highlight=False)

        res = runs.cv(runs.RunConfig(cfg, features=features, dataset=dataset, out=out_dir), folds, on_fold)
    except ValueError as e:  # StoreError, RunError, ...
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; the same command skips the finished folds and resumes the current one", 130)
    out.print(table)
    s = res.summary
    out.print(f"{head}, {len(res.folds)} {folds} folds: top-1 {s['top1']['mean']:.3f} +- {s['top1']['std']:.3f}, "
              f"F1 macro {s['f1_macro']['mean']:.3f} +- {s['f1_macro']['std']:.3f}\nresults: {res.out / 'cv.json'}",
              highlight=False)


@command()
def predict(
    videos: list[Path] = typer.Argument(..., metavar="VIDEO...", help="Video files (any container PyAV reads)."),
    run_dir: Path = typer.Option(..., "--run", help="A run directory of `har train-head`."),
    top: int = typer.Option(5, "--top", help="How many classes to list."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
):
    """Classify video files with a trained run: decode, sample as the store did, backbone, head.

    Examples:

        har predict clip.avi --run runs/lstm-groups-1a2b3c4d5e

        har predict a.mp4 b.mkv --run runs/gru-official1-0f0e0d0c0b --json
    """
    _setup_logging(False)
    import json

    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        _fail(f"no such video file: {', '.join(missing)}")
    if top < 1:
        _fail(f"--top {top} must be >= 1")
    from trainers import predict as P

    try:
        predictor = P.load(run_dir, device)
    except ValueError as e:  # StoreError, WeightsError, RunError, ...
        _fail(str(e))
    results = [predictor(v, top) for v in videos]
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


@command("train-e2e")
def train_e2e(
    model: str = typer.Argument(..., help="r3d_18 | r2plus1d_18 | mc3_18 | c3d | i3d | nonlocal | convlstm | lrcn | late-fusion-e2e | small-cnn-lstm | small-cnn-rnn"),
    frames: Optional[Path] = typer.Option(None, "--frames", help="The frame store."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Use the latest frame store extracted for this dataset."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: runs/MODEL-SPLIT-FINGERPRINT]."),
    pretrained: str = typer.Option("none", "--pretrained", help="none | kinetics400 (r3d_18, r2plus1d_18, mc3_18, nonlocal) | imagenet (i3d, lrcn, late-fusion-e2e)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per step."),
    accumulate: int = typer.Option(1, "--accumulate", help="Optimizer step every N batches (gradient accumulation)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Crop size [default: the model's input size, at most the stored size]."),
    three_crop: bool = typer.Option(False, "--three-crop", help="Test time: three crops per clip, averaged."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes [default: min(8, cores - 1), at least 2]."),
    memory_format: str = typer.Option("auto", "--memory-format", help="auto (channels-last on CUDA) | channels-last | contiguous."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate."),
    split: Optional[str] = _HEAD_OPTIONS["split"], epochs: int = _HEAD_OPTIONS["epochs"],
    optimizer: str = _HEAD_OPTIONS["optimizer"], weight_decay: float = _HEAD_OPTIONS["weight_decay"],
    scheduler: str = _HEAD_OPTIONS["scheduler"], class_weighted: bool = _HEAD_OPTIONS["class_weighted"],
    patience: int = _HEAD_OPTIONS["patience"], min_delta: float = _HEAD_OPTIONS["min_delta"],
    seed: int = _HEAD_OPTIONS["seed"], device: str = _HEAD_OPTIONS["device"],
    precision: str = _HEAD_OPTIONS["precision"], train_views: str = _HEAD_OPTIONS["train_views"],
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Train a video model end to end from a frame store (no decoding while training). Resumes if interrupted.

    Examples:

        har train-e2e r2plus1d_18 --dataset ucf101 --pretrained kinetics400 --epochs 20

        har train-e2e small-cnn-lstm --frames frames64.zarr --batch-size 32 --lr 1e-3

        har train-e2e c3d --frames clips.zarr --batch-size 4 --accumulate 4 --three-crop
    """
    _setup_logging(verbose)
    if frames is None and dataset is None:
        _fail("give --frames PATH or --dataset NAME (the frame store to train on)")
    from trainers import e2e

    cfg = e2e.E2EConfig(model=model, pretrained=pretrained, batch_size=batch_size, accumulate=accumulate, crop=crop,
                        three_crop=three_crop, workers=workers, memory_format=memory_format, lr=lr, split=split,
                        epochs=epochs, optimizer=optimizer,
                        weight_decay=weight_decay, scheduler=scheduler, class_weighted=class_weighted,
                        patience=patience, min_delta=min_delta, seed=seed, device=device, precision=precision,
                        train_views=train_views)
    _validated(cfg)
    _run(lambda on_epoch: e2e.train_e2e(e2e.E2ERunConfig(cfg, frames=frames, dataset=dataset, out=out_dir),
                                        on_epoch=on_epoch))


@command()
def models(
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
):
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
            "heads": [heads.cost(n) for n in heads.names()],
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


@command()
def demo(
    out_dir: Path = typer.Option(Path("har-demo"), "--out", help="Folder for the synthetic videos and the runs."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local Dask worker processes [default: all cores]."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
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
    from pipeline import synth as S
    from trainers import loop

    root = out_dir / "synthetic"
    cfg = S.SynthConfig()
    out.print(f"[bold]1/4 synth[/]: {cfg.classes} classes x {cfg.groups} groups x {cfg.clips} clips -> {root}")
    S.generate(root, cfg)
    out.print("[bold]2/4 extract[/]: uniform 16 frames, 112 px")
    recipe = E.named_recipe("default", views=0)
    try:
        res = E.extract(E.ExtractConfig("synthetic", recipe, root=root, workers=workers))
    except (ValueError, OSError) as e:
        _fail(str(e))
    state = "up to date" if res.up_to_date else f"{res.decoded} decoded in {res.seconds:.1f} s"
    ratio = res.store_bytes / res.source_bytes if res.source_bytes else float("nan")
    out.print(f"  frame store: {res.store}\n  {res.ok} videos ok, {len(res.failed)} failed, {state}; "
              f"{_human(res.store_bytes)} = {ratio:.2f}x the source videos", highlight=False)
    weights = "imagenet" if backbones.weights_file(DEMO_BACKBONE).exists() else "none"
    label = "ImageNet weights (cached)" if weights == "imagenet" else \
        f"RANDOM weights (no ImageNet weights cached at {backbones.weights_file(DEMO_BACKBONE)})"
    out.print(f"[bold]3/4 features[/]: {DEMO_BACKBONE}, {label}, frames at their stored 112 px")
    try:
        fres = F.features(F.FeatureConfig(backbone=DEMO_BACKBONE, weights=weights, store=res.store, resize="stored"))
    except (ValueError, OSError) as e:
        _fail(str(e))
    out.print(f"  feature store: {fres.store} "
              f"({'up to date' if fres.up_to_date else f'{fres.frames:,} frames in {fres.seconds:.1f} s'})",
              highlight=False)
    results = {}
    for i, head in enumerate(DEMO_HEADS):
        out.print(f"[bold]4/4 train-head {head}[/] on the group-disjoint split ({i + 1}/{len(DEMO_HEADS)})")
        cfg_h = loop.TrainConfig(head=head, **DEMO_TRAINING)
        results[head] = _run_head(cfg_h, fres.store, None, None, out_dir / "runs" / head, quiet=True)
    lstm, mean = (results[h].summary["test"] for h in DEMO_HEADS)
    out.print(f"\n[bold]done.[/] lstm {lstm['top1']:.0%} vs mean (bag of frames) {mean['top1']:.0%} test accuracy; "
              f"on the reversed pairs {lstm['reversed_pairs_top1']:.0%} vs {mean['reversed_pairs_top1']:.0%}.\n"
              f"reports: {results['lstm'].run_dir / 'report.md'}\n         {results['mean'].run_dir / 'report.md'}",
              highlight=False)


DEMO_BACKBONE = "resnet18"
DEMO_HEADS = ("lstm", "mean")
DEMO_TRAINING = dict(epochs=40, batch_size=16, scheduler="cosine", patience=40)


def main() -> None:  # python -m cli
    app()


if __name__ == "__main__":
    sys.exit(main())
