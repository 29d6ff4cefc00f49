"""What every har command shares: the app, the one error boundary and its exit-code table, the
options declared once and choices shown from the registries. What the commands print (Rich) is
trainers/console.py; cli.py holds the commands themselves.

Exit codes (every command):

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
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand

from trainers.console import err
from trainers.training import config as C  # light: dataclasses only

app = typer.Typer(help="Human action recognition: versioned frame stores from videos, and models trained on them.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")

EXIT_BUG, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_NO_SPACE, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
RESUMES = "interrupted; what was finished is kept: run the same command again to go on"


# ---- choices: a parameter's allowed names, from where they are registered ---------------------------

# parameter -> where its pipeline.core.registry.Registry lives (module, constant). Imported only when a
# command's help or a shell completion asks, so `har --help` imports nothing heavy; every entry is
# checked to be a Registry by tests/test_cli.py, so a rename fails a test rather than the help.
CHOICES = {
    "dataset": ("pipeline.datasets.datasets", "DATASETS"), "sampling": ("pipeline.decoding.sampling", "STRATEGIES"),
    "fmt": ("pipeline.stores.store", "FORMATS"), "backbone": ("pipeline.stages.backbones", "BACKBONES"),
    "device": ("pipeline.core.device", "DEVICES"), "feature_precision": ("pipeline.stages.features", "PRECISIONS"),
    "resize": ("pipeline.stages.features", "RESIZES"), "recipe": ("pipeline.decoding.recipe", "RECIPES"),
    "head": ("trainers.models.heads", "HEADS"), "model": ("trainers.models.video_models", "VIDEO_MODELS"),
    "pretrained": ("trainers.models.video_models", "PRETRAINED"), "optimizer": ("trainers.training.optim", "OPTIMIZERS"),
    "scheduler": ("trainers.training.optim", "SCHEDULERS"), "precision": ("trainers.training.config", "PRECISIONS"),
    "train_views": ("trainers.training.config", "TRAIN_VIEWS"),
    "memory_format": ("trainers.training.config", "MEMORY_FORMATS"), "folds": ("trainers.runs.cv", "FOLDS"),
    "part": ("trainers.data.views", "SPLIT_ROLES"), "tracker": ("trainers.runs.tracker", "TRACKERS"),
    "method": ("trainers.inference.explain", "METHODS"), "over_time": ("trainers.inference.explain", "TEMPORAL"),
    "export_format": ("trainers.inference.export_formats", "FORMATS"), "mix": ("trainers.data.mixing", "MIXES"),
    "temporal_input": ("trainers.models.heads", "TEMPORAL_INPUTS"),
}


def registry(param: str):
    """The Registry that parameter `param` chooses from."""
    module, attr = CHOICES[param]
    return getattr(importlib.import_module(module), attr)


def choice_names(param: str) -> tuple[str, ...]:
    return registry(param).names()


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

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        """Every word as typed is checked for an object-store URL with no bucket (`s3://`, `gs://`,
        `s3:///x`) before pathlib reads it (as a local folder `s3:`, or the bucket `x`): one line, exit 2."""
        if not ctx.resilient_parsing:
            from pipeline.core import location  # light: the standard library only

            takes_value = {o for p in self.params if not getattr(p, "is_flag", True) for o in p.opts}
            for before, word in zip(["", *args], args):
                flag, _, value = word.partition("=") if word.startswith("-") and "=" in word else (before, "", word)
                try:
                    location.check_bucket(value)
                except location.LocationError as e:
                    fail(f"{flag} {e}" if flag in takes_value else str(e))
        return super().parse_args(ctx, args)


# ---- the one error boundary ---------------------------------------------------------------------------

def fail(msg: str, code: int = EXIT_USAGE) -> None:
    # escaped: a message names user paths and extras ("har[mlflow]", "clip[1].avi") that are not styles
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def boundary(fn, interrupted: str = RESUMES, kept: str | None = None,
              where: Callable[[dict], object] | None = None, urls: tuple[str, ...] = ()):
    """Every exception a command raises becomes a line and an exit code (the module docstring's
    table). `interrupted`: the line for Ctrl-C; `kept` and `where`: what a full disk leaves and
    on which path (from the command's arguments); `urls`: the parameters that take an object-storage
    URL (s3://...) as well as a path."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            no_urls(fn, kwargs, urls)
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            fail(interrupted, EXIT_INTERRUPTED)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                if kept and where:
                    fail(f"no space left on the device of {where(kwargs)}; the finished {kept} are kept: free some "
                          "space and run the same command again to finish", EXIT_NO_SPACE)
                fail(f"no space left on the device ({e.filename or 'while writing'}); what was finished is kept: "
                      "free some space and run the same command again", EXIT_NO_SPACE)
            fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
        except MemoryError:
            fail("ran out of memory; lower --batch-size, --frames, --size or --workers", EXIT_USAGE)
        except ValueError as e:  # har's own input errors: DatasetError, StoreError, OutputError, RunError, ...
            fail(str(e) or type(e).__name__)
        except Exception as e:
            if type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp"):   # object storage
                fail(f"object storage: {e}; check AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                     "AWS_REGION and the bucket's name")
            if type(e).__name__ == "OutOfMemoryError":  # torch's (CUDA) out of memory, without importing torch
                fail(f"the device ran out of memory ({str(e).splitlines()[0] if str(e) else ''}); "
                      "lower --batch-size", EXIT_USAGE)
            if kwargs.get("verbose"):
                import traceback

                traceback.print_exc()
            # no address to report at: har publishes none (pyproject.toml names no project URL)
            what = ("the command, its output and the traceback (run it again with --verbose)" if "verbose" in kwargs
                    else "the command and its output")
            fail(f"internal error ({type(e).__name__}: {e}); this is a bug in har: please report it with {what}",
                 EXIT_BUG)

    return run


URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+")   # s3://b/k as a Path reads s3:/b/k


def flag_of(fn, name: str) -> str:
    """How the user wrote parameter `name` of command `fn`: its first option name, else its metavar."""
    param = inspect.signature(fn, eval_str=True).parameters.get(name)
    infos = [*getattr(param.annotation, "__metadata__", ()), param.default] if param is not None else []
    for info in infos:
        # with Annotated, typer.Option("--out") keeps the name in `default`, the rest in param_decls
        decls = [d for d in (getattr(info, "default", None), *(getattr(info, "param_decls", None) or ()))
                 if isinstance(d, str) and d.startswith("-")]
        if decls:
            return decls[0].split("/")[0]
        if isinstance(info, typer.models.ArgumentInfo):
            return info.metavar or name.upper()
    return "--" + name.replace("_", "-")


def no_urls(fn, kwargs: dict, urls: tuple[str, ...] = ()) -> None:
    """A URL given where a local path is taken is one line, not a folder named 's3:' in the current
    directory (pathlib reads s3://bucket/x.zarr as the relative path s3:/bucket/x.zarr); in the
    parameters named in `urls` it becomes a `pipeline.core.location.Url`."""
    for name, value in kwargs.items():
        if name in urls and value is not None:
            from pipeline.core import location

            try:
                kwargs[name] = ([location.of(v) for v in value] if isinstance(value, (list, tuple))
                                else location.of(value))
            except location.LocationError as e:
                raise ValueError(f"{flag_of(fn, name)} {e}") from None
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            m = URL.match(str(v)) if isinstance(v, Path) else None
            if m:
                shown = f"{m.group(1)}://{str(v)[m.end():]}"
                flag = flag_of(fn, name)
                raise ValueError(f"{flag} {shown}: object storage and other URLs are not supported yet; allowed: a "
                                 "local path (a bucket mounted with s3fs, gcsfuse or rclone mount works; "
                                 f"$PWD/{m.group(1)}:/... names a local folder called {m.group(1)}:)")


def command(name: str | None = None, **hints):
    """`app.command` with the error boundary around the command (`hints`: its resume lines) and its
    choice options listing their registry's names."""
    return lambda fn: app.command(name, cls=Command)(boundary(fn, **hints))


# ---- options declared once ------------------------------------------------------------------------------

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress; a traceback for a bug.")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
Device = Annotated[str, opt("--device", help="Where to compute (auto: cuda when present).", choices="device")]
DatasetName = Annotated[Optional[str], opt("--dataset", help="Use the latest store made for this dataset.", choices="dataset")]
DaskScheduler = Annotated[Optional[str], typer.Option("--scheduler", help="Address of a running dask.distributed scheduler (tcp://host:8786): the work spreads over its workers.")]

# the training loop's settings (trainers.training.config.LoopConfig): name -> (type, flag, help)
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
    "val_window": (int, "--val-window", "Best checkpoint and early stopping by val accuracy averaged over the last N epochs (1: each epoch alone)."),
    "seed": (int, "--seed", "Seeds initialisation, shuffling, view draws and dropout."),
    "device": (str, "--device", "Where to train (auto: cuda when present)."),
    "precision": (str, "--precision", "auto: bf16 autocast on cuda and on CPUs with native bf16, else fp32."),
    "label_smoothing": (float, "--label-smoothing", "Cross-entropy against (1 - e) x one-hot + e x uniform; 0: off."),
    "warmup_epochs": (float, "--warmup-epochs", "Learning rate rising linearly from 0 over this many epochs (per step); 0: off."),
}
# fine-tuning a pretrained video model (trainers.training.config.E2EConfig)
FINETUNE = {
    "backbone_lr_mult": (float, "--backbone-lr-mult", "Learning rate of every layer below the new output layer, as a multiple of --lr (e.g. 0.1)."),
    "layer_decay": (float, "--layer-decay", "Layer-wise lr decay: each layer learns at layer-decay x the rate of the one above (0.65-0.9 for transformers); 1: off."),
    "drop_path": (Optional[float], "--drop-path", "Stochastic depth at the last block, linear from 0 (mvit, swin3d) [default: the model's own]."),
}
# on-the-fly augmentation of training clips besides the random crop (trainers.data.clips.augment)
AUGMENT = {
    "hflip": (Optional[bool], "--hflip/--no-hflip", "Training clips: a coin-flip horizontal mirror; --no-hflip where left/right is part of the label [default: as the store's views, on unless extracted with --no-hflip]."),
    "rotate": (float, "--rotate", "Training clips: a rotation uniform in +-DEGREES (e.g. 15); 0: none."),
    "vflip": (bool, "--vflip", "Training clips: a coin-flip vertical mirror."),
    "jitter": (float, "--jitter", "Training clips: brightness, contrast, saturation factors in 1 +- J (e.g. 0.3); 0: none."),
}
# a recipe's fields over the named one's (pipeline.decoding.recipe.Recipe; har extract): None keeps the recipe's
RECIPE = {
    "frames": (Optional[int], "--frames", "T frames per sample."),
    "sampling": (Optional[str], "--sampling", "Which frames: the sampling strategy."),
    "clips": (Optional[int], "--clips", "K clips per video (multiclip)."),
    "stride": (Optional[int], "--stride", "Frame step inside a clip."),
    "size": (Optional[str], "--size", "PX or HxW of the stored frames."),
    "views": (Optional[int], "--views", "Augmented copies stored besides the clean view."),
    "seed": (Optional[int], "--seed", "Seed of random sampling and the views."),
    "rotate": (Optional[float], "--rotate", "Augmented views: also a rotation uniform in +-DEGREES (e.g. 15) [default: 0, none]."),
    "vflip": (Optional[bool], "--vflip/--no-vflip", "Augmented views: also a coin-flip vertical mirror [default: no]."),
    "hflip": (Optional[bool], "--hflip/--no-hflip", "Augmented views: a coin-flip horizontal mirror; --no-hflip where left/right is part of the label [default: yes]."),
    "lossy": (Optional[bool], "--lossy/--lossless", "JPEG-coded frames (smaller) or lossless zstd."),
}
# a server's bounds (trainers.inference.server.ServeConfig; har serve)
SERVE = {
    "host": (str, "--host", "Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface, for a trusted network)."),
    "port": (int, "--port", "Port (0: any free port)."),
    "workers": (int, "--workers", "Threads that decode and score at once (the runs are loaded once and shared)."),
    "queue": (int, "--queue", "Requests that may wait for a worker; more get 503."),
    "max_upload_mb": (float, "--max-upload-mb", "Largest upload (413 beyond)."),
    "max_seconds": (float, "--max-seconds", "Longest video accepted, in seconds (413 beyond)."),
    "uploads": (int, "--uploads", "Uploads received at once (503 beyond)."),
    "per_client": (int, "--per-client", "Requests at once from one address (429 beyond)."),
    "body_timeout": (float, "--body-timeout", "Seconds an upload may take (408 beyond)."),
}
# a sequence head's settings (trainers.training.config.HeadConfig)
HEAD = {
    "hidden": (int, "--hidden", "Hidden size of the head."),
    "layers": (int, "--layers", "Stacked layers."),
    "bidirectional": (bool, "--bidirectional", "Recurrent heads: read the clip both ways."),
    "dropout": (float, "--dropout", "Dropout before the classifier."),
    "heads": (int, "--heads", "Attention heads (attention, attentive-probe)."),
    "temporal_input": (str, "--temporal-input", "What the head sees: auto (centred, raw for mean), raw features, centred (each clip's mean over time removed: the change, not the look), deltas (frame differences), centred+deltas."),
}


Head = Annotated[str, arg("The sequence head (har models compares them).", choices="head")]
# a list so that a repeated --features is seen (and refused where one store is meant), not silently the last
Features = Annotated[Optional[list[Path]], typer.Option("--features", help="The feature store.")]
# train-head: the feature store, or (given twice or more) the stores of a joint run
FeatureStores = Annotated[Optional[list[Path]], typer.Option("--features", help="The feature store; give it 2+ times to train one head jointly on several datasets (shared trunk, an output layer per dataset).")]
RunOut = Annotated[Optional[Path], typer.Option("--out", help="Run folder [default: runs/NAME-SPLIT-FINGERPRINT].")]
TRAINING = "interrupted; the same command resumes from the last finished epoch"


def head_config(head: str, settings: dict):
    """The head's training config from a command's head and loop options, checked."""
    from trainers.training.head_task import HeadTrainConfig

    cfg = HeadTrainConfig(head=head, head_options=C.HeadConfig(**pick(settings, HEAD)), **pick(settings, LOOP))
    cfg.validate()
    return cfg


Tracker = Annotated[str, opt("--tracker", help="Training dashboard, live: TensorBoard event files in RUN/tensorboard/, "
                             "MLflow (RUN/mlruns) or W&B offline (RUN/wandb) as optional extras.", choices="tracker")]
RunDir = Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run folder of `har train-head` or `har train-e2e`.")]


def takes(defaults, group: dict, skip: tuple[str, ...] = (), after: str | None = None):
    """Add the options of `group` to a command's signature, their defaults from the config class
    `defaults` (None: every default None, "keep what the named thing says"), after the parameter
    `after` (default: at the end; the order --help lists them in); the command receives them in
    **settings."""
    def add(fn):
        sig = inspect.signature(fn, eval_str=True)  # annotations as objects: Typer reads them from here
        # every parameter keyword-only (Typer passes them by name), so the group may go anywhere
        own = [p.replace(kind=p.KEYWORD_ONLY) for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        new = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                 default=getattr(defaults, name) if defaults is not None else None,
                                 annotation=Annotated[typ, opt(flag, help=text, choices=name if name in CHOICES else None)])
               for name, (typ, flag, text) in group.items() if name not in skip]
        at = [p.name for p in own].index(after) + 1 if after else len(own)
        fn.__signature__ = sig.replace(parameters=own[:at] + new + own[at:])
        return fn
    return add


def pick(settings: dict, group: dict) -> dict:
    return {k: v for k, v in settings.items() if k in group}
