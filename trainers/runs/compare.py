"""`har compare`: finished runs side by side, as the seed studies compared LRCN with ConvLSTM or
R3D with R(2+1)D by hand.

One table of each run's test metrics with what makes them comparable or not (model, store,
backbone and weights, split, seed, epochs); the validation curves overlaid; and per class the F1
of every run and its difference from the first run. Reads only finished runs (runner.load_run and
runner.read_metrics check each); writes, with --out, compare.md, compare.csv, compare_per_class.csv
and compare_curves.png into a folder of its own.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.files import replace_atomically
from trainers.runs import rundir, runner
from trainers.runs.report import fmt

METRICS = ("top1", "top5", "f1_macro", "roc_auc_ovr_macro", "reversed_pairs_top1")


@dataclass
class Comparison:
    rows: list[dict]                  # one per run: identity and test metrics
    histories: list[list[dict]]
    classes: list[str]                # every class of any run, in first-seen order
    f1: np.ndarray                    # (classes, runs) per-class test F1; nan where a run lacks the class


def _row(run_dir: Path) -> tuple[dict, list[dict], dict]:
    cfg, lin, kind = runner.load_run(run_dir)
    m = runner.read_metrics(run_dir)  # every key read below checked, or one line naming it
    hist = _history(Path(run_dir) / "history.json")
    test = m["test"]
    row = {"run": Path(run_dir).name, "kind": kind.name, "model": m.get("model"),
           "store": Path(str(m.get("features") or m.get("frames") or "")).name, "dataset": m.get("dataset"),
           "backbone": m.get("backbone") or "-", "weights": "pretrained" if m.get("pretrained") else "random init",
           "split": m["split"]["name"], "seed": cfg.seed, "epochs": m.get("epochs_run"),
           "best_epoch": m.get("best_epoch"), "train_seconds": m.get("train_seconds"), "test_videos": test.get("videos"),
           **{k: test.get(k) for k in METRICS}}
    return row, hist, test


def _history(path: Path) -> list[dict]:
    """history.json's epochs (epoch, val_acc, val_loss numbers); RunError naming the file otherwise."""
    import json

    try:
        hist = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise rundir.RunError(f"{path} is not valid JSON ({e}); {runner.RUN_REMEDY}") from None
    ok = isinstance(hist, list) and all(
        isinstance(h, dict) and all(isinstance(h.get(k), (int, float)) and not isinstance(h.get(k), bool)
                                    for k in ("epoch", "val_acc", "val_loss")) for h in hist)
    if not ok:
        raise rundir.RunError(f"{path} is not a list of epochs (epoch, val_acc, val_loss); {runner.RUN_REMEDY}")
    return hist


def compare(run_dirs: list[Path]) -> Comparison:
    if len(run_dirs) < 2:
        raise ValueError(f"har compare needs 2 or more runs; got {len(run_dirs)}")
    rows, hists, tests = [], [], []
    for d in run_dirs:
        r, h, t = _row(Path(d))
        rows.append(r)
        hists.append(h)
        tests.append(t)
    classes: list[str] = []
    for t in tests:
        classes += [p["class"] for p in t.get("per_class", []) if p["class"] not in classes]
    f1 = np.full((len(classes), len(rows)), np.nan)
    for j, t in enumerate(tests):
        for p in t.get("per_class", []):
            f1[classes.index(p["class"]), j] = p["f1"]
    return Comparison(rows, hists, classes, f1)


def cell(v) -> str:
    return fmt(v, 3, "-")


def markdown(c: Comparison) -> str:
    ident = ("run", "model", "store", "backbone", "weights", "split", "seed", "epochs")
    metric_cols = [k for k in METRICS if any(r.get(k) is not None for r in c.rows)]
    lines = ["# Runs compared", "", "| " + " | ".join(ident + tuple(metric_cols)) + " |",
             "|" + "---|" * (len(ident) + len(metric_cols))]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in ident + tuple(metric_cols)) + " |" for r in c.rows]
    splits = {r["split"] for r in c.rows}
    stores = {r["store"] for r in c.rows}
    if len(splits) > 1 or len(stores) > 1:
        lines += ["", f"**Not like for like:** {len(stores)} stores and {len(splits)} splits; compare test metrics "
                  "only on the same store and split."]
    lines += ["", "![validation curves](compare_curves.png)", "", "## Per-class F1 (test)", "",
              f"Difference from `{c.rows[0]['run']}`; the classes where the runs differ most first. "
              "All of them: [compare_per_class.csv](compare_per_class.csv).", "",
              "| class | " + " | ".join(r["run"] for r in c.rows) + " | " +
              " | ".join(f"{r['run']} - first" for r in c.rows[1:]) + " |",
              "|" + "---|" * (1 + 2 * len(c.rows) - 1)]
    spread = np.nan_to_num(np.nanmax(c.f1, axis=1) - np.nanmin(c.f1, axis=1), nan=-1) if len(c.classes) else []
    for i in np.argsort(-np.asarray(spread), kind="stable")[:30]:
        vals = [cell(float(v)) for v in c.f1[i]]
        diffs = [cell(float(c.f1[i, j] - c.f1[i, 0])) for j in range(1, len(c.rows))]
        lines.append(f"| {c.classes[i]} | " + " | ".join(vals) + " | " + " | ".join(diffs) + " |")
    return "\n".join(lines) + "\n"


def compare_into(runs: list[Path], out: Path | None = None) -> tuple[Comparison, dict]:
    """`har compare`: the comparison of `runs`, and with `out` its files written into that folder
    (a compare folder of har's own or a new one: pipeline.core.outputs.marked_folder refuses any
    other); the files' paths by kind."""
    c = compare(runs)
    if out is None:
        return c, {}
    from pipeline.core import outputs

    return c, write(c, outputs.marked_folder(out, "compare", inputs=runs))


def write(c: Comparison, out: Path) -> dict:
    from trainers.runs.report import pyplot, save_figure

    def table(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(c.rows[0]))
            w.writeheader()
            w.writerows(c.rows)

    def per_class(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", *[f"f1 {r['run']}" for r in c.rows], *[f"diff {r['run']}" for r in c.rows[1:]]])
            for i, name in enumerate(c.classes):
                w.writerow([name, *[cell(float(v)) for v in c.f1[i]],
                            *[cell(float(c.f1[i, j] - c.f1[i, 0])) for j in range(1, len(c.rows))]])

    replace_atomically(out / "compare.csv", table)
    replace_atomically(out / "compare_per_class.csv", per_class)
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r, h in zip(c.rows, c.histories):
        ep = [x["epoch"] for x in h]
        a.plot(ep, [x["val_acc"] for x in h], label=r["run"])
        b.plot(ep, [x["val_loss"] for x in h], label=r["run"])
    a.set(xlabel="epoch", ylabel="val top-1", title="validation accuracy", ylim=(0, 1.02))
    b.set(xlabel="epoch", ylabel="val cross-entropy", title="validation loss")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out / "compare_curves.png")
    rundir.write_text(out / "compare.md", markdown(c))
    return {k: str(out / f) for k, f in (("markdown", "compare.md"), ("table", "compare.csv"),
                                           ("per_class", "compare_per_class.csv"), ("curves", "compare_curves.png"))}
