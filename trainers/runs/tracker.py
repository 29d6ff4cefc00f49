"""Training dashboards: every run reports its epochs, live, to a tracker of `TRACKERS`.

    tensorboard   TensorBoard event files in RUN/tensorboard/<fingerprint> (the default; `tensorboard --logdir runs`)
    mlflow        MLflow, a local file store in RUN/mlruns (`pip install 'har[mlflow]'`; `mlflow ui
                  --backend-store-uri RUN/mlruns`)
    wandb         Weights & Biases, offline, in RUN/wandb (`pip install 'har[wandb]'`; `wandb sync` uploads)
    none          nothing

Per epoch: loss and accuracy (train, val), learning rate, epoch time and throughput (training
videos or clips per second); at the end: the test metrics, the hyperparameters with the final
metrics, and the test confusion matrix as an image. The tracker changes nothing a run computes
(it is not in the run's fingerprint) and never stops one: a tracker that fails (a full disk, a
broken install) becomes a warning of the run (`Guarded`). Under torchrun only rank 0 reports. A
resumed run goes on in the same dashboard run (keyed by the run's fingerprint) with the epochs not
reported yet; another config trained into the same folder gets its own.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from pipeline.core.registry import Registry

EPOCH_SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
                 "accuracy/val": "val_acc", "lr": "lr", "time/epoch_seconds": "seconds"}
FINAL_METRICS = ("top1", "top5", "f1_macro", "roc_auc_ovr_macro")


class Tracker(Protocol):
    def epoch(self, row: dict, throughput: float) -> None: ...
    def finish(self, summary: dict, confusion_png: Path | None) -> None: ...
    def close(self, failed: bool = False) -> None: ...


def flat(d: dict, prefix: str = "") -> dict:
    """Nested settings -> {"a.b": value} of plain scalars (None as "none"), as trackers take hyperparameters."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = "none" if v is None else v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def final_metrics(summary: dict) -> dict:
    out = {f"test/{k}": float(summary["test"][k]) for k in FINAL_METRICS if k in summary["test"]}
    out.update({f"val/{k}": float(summary["val"][k]) for k in FINAL_METRICS if k in summary["val"]})
    out["best_val_acc"] = float(summary["best_val_acc"])
    return out


class TensorBoard:
    def __init__(self, run_dir: Path, params: dict, key: str):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir) / "tensorboard" / key
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.params = params

    def epoch(self, row: dict, throughput: float) -> None:
        step = int(row["epoch"])
        for tag, key in EPOCH_SCALARS.items():
            self.writer.add_scalar(tag, float(row[key]), step)
        self.writer.add_scalar("time/videos_per_second", float(throughput), step)
        self.writer.flush()  # live: TensorBoard shows the epoch now

    def finish(self, summary: dict, confusion_png: Path | None) -> None:
        step = int(summary["epochs_run"])
        metrics = final_metrics(summary)
        for tag, v in metrics.items():
            self.writer.add_scalar(tag, v, step)
        if confusion_png is not None and confusion_png.exists():
            import numpy as np
            from PIL import Image

            with Image.open(confusion_png) as im:
                self.writer.add_image("confusion/test", np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.writer.add_hparams(self.params, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")
        self.writer.add_text("run", f"`{summary.get('describe', '')}`", step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, run_dir: Path, params: dict, key: str):
        try:
            import mlflow
        except ImportError:
            raise ValueError("--tracker mlflow needs MLflow: pip install 'har[mlflow]'; or --tracker tensorboard") from None
        import os

        self.mlflow = mlflow
        # MLflow's file store: local files only, artifacts inside it (a database backend would put
        # artifacts under the current directory). MLflow 3 keeps it "in maintenance mode" behind this flag.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri((Path(run_dir) / "mlruns").absolute().as_uri())
        experiment = mlflow.set_experiment("har")
        found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.har_fingerprint = '{key}'",
                                   output_format="list")
        if found:  # a resumed run goes on in its own MLflow run
            self.run = mlflow.start_run(run_id=found[0].info.run_id)
        else:
            self.run = mlflow.start_run(run_name=Path(run_dir).name, tags={"har_fingerprint": key})
        try:
            if not found:
                mlflow.log_params(params)
        except Exception:
            mlflow.end_run(status="FAILED")
            raise

    def epoch(self, row: dict, throughput: float) -> None:
        metrics = {tag.replace("/", "_"): float(row[key]) for tag, key in EPOCH_SCALARS.items()}
        self.mlflow.log_metrics({**metrics, "time_videos_per_second": float(throughput)}, step=int(row["epoch"]))

    def finish(self, summary: dict, confusion_png: Path | None) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in final_metrics(summary).items()},
                                step=int(summary["epochs_run"]))
        if confusion_png is not None and confusion_png.exists():
            self.mlflow.log_artifact(str(confusion_png))

    def close(self, failed: bool = False) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


class WandB:
    def __init__(self, run_dir: Path, params: dict, key: str):
        try:
            import wandb
        except ImportError:
            raise ValueError("--tracker wandb needs Weights & Biases: pip install 'har[wandb]'; "
                             "or --tracker tensorboard") from None
        self.wandb = wandb
        self.run = wandb.init(project="har", name=Path(run_dir).name, dir=str(run_dir), mode="offline",
                              config=params, id=key, resume="allow", reinit="finish_previous")

    def epoch(self, row: dict, throughput: float) -> None:
        self.run.log({**{tag: float(row[key]) for tag, key in EPOCH_SCALARS.items()},
                      "time/videos_per_second": float(throughput)}, step=int(row["epoch"]))

    def finish(self, summary: dict, confusion_png: Path | None) -> None:
        extra = {}
        if confusion_png is not None and confusion_png.exists():
            extra["confusion/test"] = self.wandb.Image(str(confusion_png))
        self.run.log({**final_metrics(summary), **extra}, step=int(summary["epochs_run"]))

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
        # finish() normally completes the offline log; teardown also waits for wandb's service to stop
        # (its atexit hook does that, "not reliable" by wandb's word). CI once found the log holding its
        # header only after a run that exited 0; the cause is not known
        self.wandb.teardown(exit_code=1 if failed else 0)


class Nothing:
    def __init__(self, run_dir: Path, params: dict, key: str):
        pass

    def epoch(self, row: dict, throughput: float) -> None:
        pass

    def finish(self, summary: dict, confusion_png: Path | None) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


TRACKERS: Registry[type] = Registry("tracker")
TRACKERS.add("tensorboard", TensorBoard, "TensorBoard event files in RUN/tensorboard (the default)")
TRACKERS.add("mlflow", MLflow, "MLflow, a local file store in RUN/mlruns (pip install 'har[mlflow]')")
TRACKERS.add("wandb", WandB, "Weights & Biases, offline, in RUN/wandb (pip install 'har[wandb]'; wandb sync uploads)")
TRACKERS.add("none", Nothing, "no dashboard")

NEEDS = {"mlflow": ("mlflow", "har[mlflow]"), "wandb": ("wandb", "har[wandb]")}


def check_tracker(name: str) -> None:
    """ValueError unless `name` is a tracker and its library is installed."""
    TRACKERS.get(name)
    if name in NEEDS:
        import importlib.util

        module, extra = NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"--tracker {name} needs {module}, which is not installed: pip install '{extra}'; "
                             "or --tracker tensorboard (installed with har)")


class Guarded:
    """A tracker whose failures become warnings: the first error of each kind is kept in
    `warnings` and the tracker is not called again; the run goes on."""

    def __init__(self, name: str, make):
        self.name, self.warnings, self.board = name, [], None
        self._call("start", make)

    def _call(self, what: str, fn, *args, **kw):
        if what != "start" and self.board is None:
            return
        try:
            out = fn(*args, **kw)
            if what == "start":
                self.board = out
        except Exception as e:  # a dashboard never stops training
            self.board = None
            self.warnings.append(f"--tracker {self.name} failed at {what} ({type(e).__name__}: {str(e)[:200]}); "
                                 "the run went on without it")

    def epoch(self, row: dict, throughput: float) -> None:
        self._call("epoch", lambda: self.board.epoch(row, throughput))

    def finish(self, summary: dict, confusion_png: Path | None) -> None:
        self._call("finish", lambda: self.board.finish(summary, confusion_png))

    def close(self, failed: bool = False) -> None:
        self._call("close", lambda: self.board.close(failed))


def open_tracker(name: str, run_dir: Path, params: dict, fingerprint: str) -> Guarded:
    """The tracker `name` writing under `run_dir`, keyed by the run's fingerprint, guarded."""
    cls = TRACKERS.get(name)
    return Guarded(name, lambda: cls(run_dir, flat(params), fingerprint[:16]))
