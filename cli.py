"""har command line: parse -> frozen config -> one library call -> print.

Thin on purpose: every command builds a config, calls one library function and prints what it
returns. Heavy imports (numpy, PyAV, Zarr, Dask; later torch) happen inside the commands, so
`har --help` is instant. Library errors that are the user's to fix (ValueError and its
subclasses) become one line on stderr and exit code 2.
"""
from __future__ import annotations

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

EXIT_USAGE = 2
EXIT_SOME_FAILED = 3


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to write the dataset into (UCF50 layout)."),
    classes: int = typer.Option(6, "--classes", help="Number of classes, 1..10; pairs (Grow/Shrink, ...) come first."),
    groups: int = typer.Option(8, "--groups", help="Appearance groups per class (_gGG_)."),
    clips: int = typer.Option(3, "--clips", help="Clips per group (_cCC_)."),
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


@app.command()
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
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a running dask.distributed scheduler, e.g. tcp://10.0.0.5:8786."),
    force: bool = typer.Option(False, "--force", help="Replace an --out store made with another recipe."),
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
    from pipeline import datasets, store
    from pipeline import extract as E

    if dataset not in datasets.ADAPTERS:
        _fail(f"unknown dataset {dataset!r}; allowed: {', '.join(datasets.ADAPTERS)}")
    if workers is not None and workers < 1:
        _fail(f"--workers {workers} must be >= 1")
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
                          scheduler=scheduler, force=force)
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
        except (ValueError, OSError) as e:  # DatasetError, StoreError, missing files
            _fail(str(e))
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
                  f"frames:  {res.frames:,}\n"
                  f"bytes:   {_human(res.store_bytes)} = {ratio:.2f}x the {_human(res.source_bytes)} of source videos\n"
                  f"time:    {res.seconds:.1f} s", highlight=False)
    if res.failed:
        err.print(f"[bold yellow]{len(res.failed)} videos failed[/] (recorded with status=2 in the store):")
        for video, why in res.failed:
            err.print(f"  {video}: {why}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
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
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dask.distributed address: shards spread over its workers."),
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
                          scheduler=scheduler)
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
        except (ValueError, OSError, backbones.WeightsError) as e:
            _fail(str(e))
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


@app.command()
def status(
    stores: Optional[list[Path]] = typer.Argument(None, help="Stores to check [default: every store under $HAR_HOME/stores]."),
):
    """List stores and whether each is current with respect to its sources and recipe.

    Examples:

        har status

        har status data/ucf50.zarr
    """
    _setup_logging(False)
    from rich.table import Table

    from pipeline import lineage, store
    from pipeline import status as S

    paths = list(stores) if stores else S.find_stores()
    if not paths:
        out.print(f"no stores under {lineage.har_home() / 'stores'}")
        return
    table = Table("store", "dataset", "kind", "videos", "failed", "size", "state")
    stale = 0
    for p in paths:
        try:
            s = S.store_state(p)
        except (store.StoreError, OSError, KeyError) as e:
            table.add_row(str(p), "?", "?", "", "", "", f"[red]unreadable: {e}[/]")
            stale += 1
            continue
        state = "[green]current[/]" if s.current else f"[yellow]stale[/] ({s.reason})"
        stale += not s.current
        table.add_row(str(s.path), s.dataset, s.kind, str(s.videos), str(s.failed), _human(s.bytes), state)
    out.print(table)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("har-demo"), "--out", help="Folder for the synthetic videos."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local Dask worker processes [default: all cores]."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Run the chain on har's own synthetic dataset, no download: synth -> extract.

    The feature and training stages join this command as they land (see the issues).

    Examples:

        har demo

        har demo --out /tmp/har-demo
    """
    _setup_logging(verbose)
    from pipeline import synth as S
    from pipeline import extract as E

    root = out_dir / "synthetic"
    cfg = S.SynthConfig()
    out.print(f"[bold]1/2 synth[/]: {cfg.classes} classes x {cfg.groups} groups x {cfg.clips} clips -> {root}")
    S.generate(root, cfg)
    out.print("[bold]2/2 extract[/]: uniform 16 frames, 112 px, 2 augmented views")
    recipe = E.named_recipe("default", views=2)
    try:
        res = E.extract(E.ExtractConfig("synthetic", recipe, root=root, workers=workers))
    except (ValueError, OSError) as e:
        _fail(str(e))
    state = "up to date" if res.up_to_date else f"{res.decoded} decoded in {res.seconds:.1f} s"
    ratio = res.store_bytes / res.source_bytes if res.source_bytes else float("nan")
    out.print(f"frame store: {res.store}\n  {res.ok} videos ok, {len(res.failed)} failed, {state}; "
              f"{_human(res.store_bytes)} = {ratio:.2f}x the source videos")
    out.print("next: `har status` lists the store and whether it is current")


def main() -> None:  # python -m cli
    app()


if __name__ == "__main__":
    sys.exit(main())
