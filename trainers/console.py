"""What har prints on a terminal (Rich): the two consoles (results on stdout, messages on stderr),
logging, progress bars, the live epoch table of training, and each command's result tables. The
commands in cli.py call these after their one library call; nothing here computes a result.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


@contextlib.contextmanager
def progress(label: str, unit: str = "videos", rate_of: str = "videos"):
    """A transient progress bar on stderr; yields update(done, total, counted=None). The rate is
    `counted` (e.g. frames) per second when given, else items done since the first report (items
    found done before, such as reused videos, do not inflate it). The bar appears at the first
    update: a command that stops on bad input before any work shows its one line alone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    t0, first = time.perf_counter(), []
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TextColumn(f"{{task.fields[rate]}} {rate_of}/s"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    bar = Progress(*columns, console=err, transient=True)
    task = bar.add_task(label, total=None, rate="-")

    def update(done: int, total: int | None, counted: int | None = None) -> None:
        if not first:
            first.append(done)
            bar.start()
        dt = time.perf_counter() - t0
        n = counted if counted is not None else done - first[0]
        bar.update(task, completed=done, total=total, rate=f"{n / dt:.1f}" if dt > 0 and n > 0 else "-")
    try:
        yield update
    finally:
        if first:
            bar.stop()


def epoch_table(rows: list[dict]):
    from rich.table import Table

    table = Table("epoch", "lr", "train loss", "train acc", "val loss", "val acc", "s", title="training", min_width=60)
    for r in rows[-15:]:
        table.add_row(str(r["epoch"]), f"{r['lr']:.2e}", f"{r['train_loss']:.4f}", f"{r['train_acc']:.3f}",
                      f"{r['val_loss']:.4f}", f"{r['val_acc']:.3f}{' *' if r['best'] else ''}", f"{r['seconds']:.2f}")
    return table


def train(train: Callable, quiet: bool = False):
    """Call `train(on_epoch)` with a live epoch table; print warnings, the run and its test metrics."""
    from rich.live import Live

    rows: list[dict] = []
    live = Live(console=out, transient=quiet, auto_refresh=False)  # started by the first epoch, not before

    def on_epoch(row: dict) -> None:
        if not rows:
            live.start()
        rows.append(row)
        live.update(epoch_table(rows), refresh=True)

    try:
        res = train(on_epoch)
    finally:
        live.stop()
    if rows and not quiet:
        out.print()
    if not res.summary:  # a torchrun rank other than 0: rank 0 reports
        return res
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    s, t = res.summary, res.summary["test"]
    state = "up to date" if res.up_to_date else f"best epoch {s['best_epoch']} of {s['epochs_run']}, {s['train_seconds']:.1f} s"
    pairs = f", reversed pairs {t['reversed_pairs_top1']:.3f}" if "reversed_pairs_top1" in t else ""
    out.print(f"run: {res.run_dir} ({state})\ntest ({t['videos']} videos): top-1 {t['top1']:.3f}, top-5 {t['top5']:.3f}, "
              f"F1 macro {t['f1_macro']:.3f}, ROC AUC {t['roc_auc_ovr_macro']:.3f}{pairs}\n"
              f"report: {res.run_dir / 'report.md'}", highlight=False)
    return res


# ---- each command's results --------------------------------------------------------------------------

def table(*columns: str, title: str | None = None, rows=()):
    from rich.table import Table

    t = Table(*columns, title=title)
    for r in rows:
        t.add_row(*r)
    return t


def store_states(states) -> None:
    """`har status`: one row per store (pipeline.stores.status.StoreState)."""
    from pipeline.core.resources import human

    colour = {"current": "green", "stale": "yellow"}
    rows = []
    for s in states:
        state = f"[{colour.get(s.state, 'red')}]{s.state}[/]" + (f" ({s.reason})" if s.reason else "")
        if s.bad_videos:
            state += f"; videos: {', '.join(s.bad_videos)}"
        rows.append((str(s.path), s.dataset, s.kind, str(s.videos), str(s.failed), human(s.bytes), state))
    out.print(table("store", "dataset", "kind", "videos", "failed", "size", "state", rows=rows))


def joint_results(res) -> None:
    """A joint run's test top-1 per dataset, beside each dataset trained alone."""
    for name, m in res.summary["test"]["datasets"].items():
        single = res.summary["alone"].get(name, {}).get("top1")
        out.print(f"{name}: joint test top-1 {m['top1']:.3f}" + (f", alone {single:.3f}" if single is not None else ""),
                  highlight=False)


def fold_row(row: dict) -> tuple[str, ...]:
    err.print(f"fold {row['fold']}: top-1 {row['top1']:.3f}", highlight=False)
    return (row["fold"], str(row["test_videos"]), f"{row['top1']:.3f}", f"{row['top5']:.3f}", f"{row['f1_macro']:.3f}",
            "up to date" if row["up_to_date"] else "")


def cv_result(head: str, folds: str, rows: list[tuple], res, metrics: tuple[str, ...]) -> None:
    """`har cv`: the folds, then mean +- std of every metric, then one line."""
    out.print(table("fold", "test videos", "top-1", "top-5", "F1 macro", "", title=f"{head}: {folds} folds", rows=rows))
    s = res.summary
    out.print(table("metric", "mean +- std over the folds", title=f"{head}, {len(res.folds)} {folds} folds",
                    rows=[(k, f"{s[k]['mean']:.4f} +- {s[k]['std']:.4f}") for k in metrics if k in s and s[k]["folds"]]))
    out.print(f"{head}, {len(res.folds)} {folds} folds: top-1 {s['top1']['mean']:.3f} +- {s['top1']['std']:.3f}, "
              f"F1 macro {s['f1_macro']['mean']:.3f} +- {s['f1_macro']['std']:.3f}\nresults: {res.out / 'cv.json'}, "
              f"{res.out / 'cv.md'}", highlight=False)


def metrics(title: str, m: dict) -> None:
    """`har evaluate`: every float metric; a joint run's datasets each on their own."""
    out.print(table("metric", "value", title=title + (" - mean over the datasets" if "datasets" in m else ""),
                    rows=[(k, f"{v:.4f}") for k, v in m.items() if isinstance(v, float)]))
    for name, d in m.get("datasets", {}).items():
        out.print(table("metric", "value", title=f"{name} ({d['videos']} videos)",
                        rows=[(k, f"{v:.4f}") for k, v in d.items() if isinstance(v, float)]))


def predictions(rows: list[dict], timeline: bool) -> None:
    """`har predict`: each video's top classes, or with --window its timeline's segments."""
    for r in rows:
        if "error" in r:
            continue
        if not timeline:
            out.print(f"[bold]{escape(r['video'])}[/] ({r['clips']} clip{'s' if r['clips'] > 1 else ''})")
            for i, p in enumerate(r["top"], 1):
                out.print(f"  {i}. {p['class']:<24} {p['probability']:.3f}", highlight=False)
            continue
        out.print(f"[bold]{escape(r['video'])}[/] ({r['duration']:.1f} s, {len(r['windows'])} windows) "
                  f"-> {escape(r['files']['png'])}")
        for s in r["segments"]:
            out.print(f"  {s['start']:8.2f} - {s['end']:8.2f} s  {s['label']:<24} {s['probability']:.3f}",
                      highlight=False)


def failed(r: dict) -> None:
    """A video that failed: its name and why, in red on stderr."""
    err.print(f"[red]{escape(r['video'] + ': ' + r['error'])}[/]", highlight=False)


def note(text: str) -> None:
    err.print(f"[yellow]note:[/] {escape(text)}", highlight=False)


def explained(r: dict) -> None:
    """`har explain`: one video's class, probability, method and picture."""
    out.print(f"{r['video']}: {r['class']} (p = {r['probability']:.3f}) {r['method']}"
              + (f" at {r['layer']}" if r["layer"] else "") + f" -> {r['files']['png']}", highlight=False)


def comparison(rows: list[dict], files: dict, columns: tuple[str, ...], cell: Callable) -> None:
    """`har compare`: the columns some run has, one row per run; then the files written."""
    cols = [k for k in columns if any(r.get(k) is not None for r in rows)]
    out.print(table(*cols, title="test metrics", rows=[[escape(cell(r.get(k))) for k in cols] for r in rows]))
    for name, path in files.items():
        out.print(f"{name}: {path}", highlight=False)


def catalog(rows: dict, kinds) -> None:
    """`har models`: a table per kind (trainers.models.catalog)."""
    from rich.table import Table

    for key, title in kinds:
        t = Table(title=title, title_justify="left")
        t.add_column("name", no_wrap=True)
        for col in ("params", "GFLOPs", "input", "pretrained", "what"):
            t.add_column(col, no_wrap=col != "what")
        for r in rows[key]:
            t.add_row(r["name"], f"{r['params'] / 1e6:.2f} M", f"{r['gflops']:.2f}", r["input"],
                      ", ".join(r["pretrained"]), r["about"])
        out.print(t)


def demo_done(runs: dict, heads: tuple[str, str]) -> None:
    lstm, mean = (runs[h].summary["test"] for h in heads)
    out.print(f"\n[bold]done.[/] lstm {lstm['top1']:.0%} vs mean (bag of frames) {mean['top1']:.0%} test accuracy; "
              f"on the reversed pairs {lstm['reversed_pairs_top1']:.0%} vs {mean['reversed_pairs_top1']:.0%}.\n"
              f"reports: {runs['lstm'].run_dir / 'report.md'}\n         {runs['mean'].run_dir / 'report.md'}",
              highlight=False)


def extracted(res) -> None:
    """`har extract`: the stage's notes, the summary, and every video that failed with the reason."""
    for text in res.notes:
        err.print(f"[yellow]note:[/] {text}", highlight=False)
    out.print(res.summary(), highlight=False)
    if res.failed:
        err.print(f"[bold yellow]{len(res.failed)} videos failed[/] (recorded with status=2 in the store):")
        for video, why in res.failed:
            err.print(f"  {video}: {why}", highlight=False, soft_wrap=True)


def document(doc, default=None) -> None:
    """`--json`: one JSON document on stdout, nothing else (plain print: Rich would wrap it)."""
    import json

    print(json.dumps(doc, indent=2, default=default))


def filters(doc: dict) -> None:
    """`har explain --method filters`: each layer's picture."""
    for x in doc["layers"]:
        out.print(f"{x['layer']} {x['shape']} -> {x['file']}", highlight=False)
