"""Where har may write: the one place that decides whether an output path may be created or replaced.

Every command that writes (extract, features, train-head, train-e2e, cv, explain, compare) asks `check_output`
before it touches anything. A path may be written when it is

  * nothing yet (or an empty folder), or
  * har's own output of the same kind: a frame store for `extract`, a feature store for
    `features`, a run folder for the training commands, an explain or compare folder for those.

It is never an input of the command, a dataset root, the current directory, the home folder, a
parent of any of these, or a folder or file holding anything else. `--force` lets a command
replace its own kind of output made differently (another recipe, another backbone); it never
lifts the rules above. The rules compare resolved paths, so `--out ""`, `--out .`, a symlink to
the dataset or `..` spellings are caught the same way.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

KINDS = ("frames", "features", "run", "cv", "explain", "compare", "timeline")

# the files a run folder holds (runs.py, loop.py, report.py); anything else means it is not ours
RUN_FILES = frozenset({"config.json", "lineage.json", "last.pt", "best.pt", "history.json", "metrics.json",
                       "report.md", "curves.png", "confusion.png", "confusion.csv", "per_class.png",
                       "per_class.csv", ".lock", ".har-run", "roc_pr.png", "most_confused.csv",
                       "explain", "timeline",                  # folders `har explain`, `har predict --window` write
                       "export",                               # the folder of `har export`'s model files
                       "datasets",                             # a joint run's report per dataset (trainers.joint)
                       "tensorboard", "mlruns", "wandb"})      # training dashboards (trainers.tracker)
# folders of pictures and tables: (the marker that makes a folder har's, the files it may hold)
MARKED = {"explain": (".har-explain", (".png", ".gif", ".json")),
          "compare": (".har-compare", (".png", ".csv", ".md", ".json")),
          "timeline": (".har-timeline", (".png", ".csv", ".json"))}
RUN_MARKER = ".har-run"  # written when a run claims its folder: what makes a folder a har run
RUN_TEMPORARY_SUFFIXES = (".tmp",)


class OutputError(ValueError):
    """An output path har refuses to write; the message says why and what to do."""


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def store_kind(path: Path) -> str | None:
    """"frames" / "features" when `path` is a har store (Zarr folder or HDF5 file), else None.
    Reads only the group metadata: a damaged har store is still recognised as ours."""
    from pipeline import location

    path = location.of(path)
    try:
        if isinstance(path, location.Url) or path.is_dir():
            meta = json.loads((path / "zarr.json").read_text())
            kind = meta.get("attributes", {}).get("kind")
        elif path.is_file():
            import h5py

            with h5py.File(path, "r") as h5:
                kind = json.loads(h5.attrs.get("kind", "null"))
        else:
            return None
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return kind if kind in ("frames", "features") else None


def is_run_dir(path: Path) -> bool:
    """A folder holding only a har run's files, with har's marker (or, from before the marker, a
    lineage.json with a fingerprint and inputs): a user's folder of a config.json and a report.md
    is not one."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    if not names <= RUN_FILES | {n for n in names if n.endswith(RUN_TEMPORARY_SUFFIXES)}:
        return False
    if RUN_MARKER in names:
        return True
    try:  # a run made before the marker: its lineage.json carries a fingerprint and its inputs
        lin = json.loads((path / "lineage.json").read_text())
    except (OSError, ValueError):
        return False
    fp = lin.get("fingerprint") if isinstance(lin, dict) else None
    return isinstance(fp, str) and len(fp) == 64 and isinstance(lin.get("inputs"), dict)


def is_cv_dir(path: Path) -> bool:
    """A folder of `har cv`: cv.json and fold run folders only."""
    path = Path(path)
    if not path.is_dir():
        return False
    for p in path.iterdir():
        if p.name in ("cv.json", "cv.md", ".lock"):
            continue
        if not (p.is_dir() and (is_run_dir(p) or not any(p.iterdir()))):
            return False
    return True


def is_marked_dir(path: Path, kind: str) -> bool:
    """A folder of `har explain` or `har compare`: its marker, and only the files that command writes."""
    marker, suffixes = MARKED[kind]
    path = Path(path)
    if not path.is_dir() or not (path / marker).is_file():
        return False
    return all(p.is_file() and (p.name == marker or p.name.endswith(suffixes + RUN_TEMPORARY_SUFFIXES))
               for p in path.iterdir())


def _is_ours(target: Path, kind: str) -> bool:
    if kind in ("frames", "features"):
        return store_kind(target) == kind
    if kind == "run":
        return is_run_dir(target)
    if kind in MARKED:
        return is_marked_dir(target, kind)
    return is_cv_dir(target)


def _describe(target: Path) -> str:
    k = store_kind(target)
    if k:
        return f"a har {k} store"
    if is_run_dir(target):
        return "a har run folder"
    return "a folder with other files" if target.is_dir() else "a file"


def check_output(target: Path, kind: str, inputs: Iterable[Path] = (), roots: Iterable[Path] = ()) -> Path:
    """Raise OutputError unless `target` may be written as a `kind` output; return it resolved.

    `inputs` are what the command reads (stores, video files), `roots` the dataset roots it
    scans. A target equal to or a parent of any of them is refused, as are the current directory,
    the home folder, $HAR_HOME and their parents. An existing target must be empty or har's own
    output of this kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; allowed: {', '.join(KINDS)}")
    from pipeline import location

    inputs = [location.of(i) for i in inputs]
    roots = [location.of(r) for r in roots]
    if isinstance(target, location.Url):
        return _check_url(target, kind, inputs + roots)
    inputs = [i for i in inputs if not isinstance(i, location.Url)]   # a local path is never inside a URL
    roots = [r for r in roots if not isinstance(r, location.Url)]
    if str(target) in ("", "."):
        raise OutputError("--out is empty (the current directory); name the output, e.g. --out frames.zarr")
    t = _resolved(target)
    if t.parent == t:
        raise OutputError(f"--out {target} is the file-system root; name a new folder or file")
    from pipeline.lineage import har_home

    protected = [(Path.cwd().resolve(), "the current directory"), (_resolved(Path.home()), "your home folder"),
                 (_resolved(har_home()), "har's home ($HAR_HOME)")]
    protected += [(_resolved(r), "the dataset root") for r in roots]
    protected += [(_resolved(i), "an input of this command") for i in inputs]
    for i in inputs:  # a store inside an input would be deleted with it (and read as part of it)
        if _within(t, _resolved(i)) and t != _resolved(i):
            raise OutputError(f"--out {target} is inside {i}, an input of this command; choose a path outside it")
    for p, what in protected:
        if t == p:
            raise OutputError(f"--out {target} is {what} ({p}); har writes its {kind} output only to a new path "
                              "or over its own output of the same kind")
        if _within(p, t):
            raise OutputError(f"--out {target} contains {what} ({p}); replacing it would delete that: "
                              "choose a new path")
    if not (t.exists() or t.is_symlink()):
        return t
    if t.is_symlink() and not t.exists():
        raise OutputError(f"--out {target} is a dangling symlink; remove it or choose another path")
    if t.is_dir() and not any(t.iterdir()):
        return t
    if not _is_ours(t, kind):
        what = {"frames": "frame store", "features": "feature store", "run": "run folder", "cv": "cv folder",
                "explain": "explain folder", "compare": "compare folder", "timeline": "timeline folder"}[kind]
        raise OutputError(f"--out {target} is {_describe(t)}, not a har {what}; har only replaces its own output "
                          "of the same kind (--force does not change that): choose a new path")
    return t


def _check_url(target, kind: str, inputs: list) -> object:
    """check_output for object storage: only stores go there; never over, inside or around an input
    or a dataset root, and an existing prefix must be a har store of this kind (nothing else under
    it is ever deleted)."""
    from pipeline.location import Url

    if kind not in ("frames", "features"):
        raise OutputError(f"--out {target}: only frame and feature stores can be written to object storage; "
                          "allowed for this output: a local path")
    for i in (i for i in inputs if isinstance(i, Url)):
        if target == i or i in target.parents or target in i.parents:
            raise OutputError(f"--out {target} is, contains or is inside {i}, an input of this command (a store "
                              "or the dataset root); choose another prefix")
    target.check_writable()
    if "/" not in target.key:
        raise OutputError(f"--out {target} is a whole bucket; name a store inside it, e.g. {target}/data.zarr")
    if not target.exists():
        return target
    if store_kind(target) != kind:
        raise OutputError(f"--out {target} holds objects that are not a har {kind} store; har only replaces its "
                          "own output of the same kind (--force does not change that): choose a new prefix")
    return target


def marked_folder(target: Path, kind: str, inputs: Iterable[Path] = ()) -> Path:
    """`target` checked as a `kind` output (explain, compare), created and marked as har's."""
    t = check_output(target, kind, inputs=inputs)
    t.mkdir(parents=True, exist_ok=True)
    (t / MARKED[kind][0]).touch()
    return t
