"""Where har may write: the one place that decides whether an output path may be created or replaced.

Every command that writes (synth, extract, features, train-head, train-e2e, cv, explain, compare) asks
`check_output` before it touches anything. A path may be written when it is

  * nothing yet (or an empty folder), or
  * har's own output of the same kind: a frame store for `extract`, a feature store for
    `features`, a run folder for the training commands, an explain or compare folder for those,
    `har synth`'s dataset folder for `synth` (and then only the files its synth.json lists).

It is never an input of the command, a dataset root, the current directory, the home folder, a
parent of any of these, or a folder or file holding anything else. `--force` lets a command
replace its own kind of output made differently (another recipe, another backbone); it never
lifts the rules above. The rules compare resolved paths, so `--out ""`, `--out .`, a symlink to
the dataset or `..` spellings are caught the same way.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

KINDS = ("frames", "features", "run", "cv", "explain", "compare", "timeline", "synth")

# the files a run folder holds (runner.py, loop.py, report.py); anything else means it is not ours
RUN_FILES = frozenset({"config.json", "lineage.json", "last.pt", "best.pt", "history.json", "metrics.json",
                       "report.md", "curves.png", "confusion.png", "confusion.csv", "per_class.png",
                       "per_class.csv", ".lock", ".har-run", "roc_pr.png", "most_confused.csv",
                       "explain", "timeline",                  # folders `har explain`, `har predict --window` write
                       "export",                               # the folder of `har export`'s model files
                       "datasets",                             # a joint run's report per dataset (trainers.training.joint)
                       "tensorboard", "mlruns", "wandb"})      # training dashboards (trainers.runs.tracker)
# folders of pictures and tables: (the marker that makes a folder har's, the files it may hold)
MARKED = {"explain": (".har-explain", (".png", ".gif", ".json")),
          "compare": (".har-compare", (".png", ".csv", ".md", ".json")),
          "timeline": (".har-timeline", (".png", ".csv", ".json"))}
RUN_MARKER = ".har-run"  # written when a run claims its folder: what makes a folder a har run
RUN_TEMPORARY_SUFFIXES = (".tmp",)
# har synth's folder: its manifest (what makes a folder its output, and lists every file it wrote)
SYNTH_MANIFEST, SYNTH_MASKS = "synth.json", "masks.json"
SYNTH_ALLOWED = "allowed: a new or empty folder, or har synth's own earlier output (the files its synth.json lists)"
# a synth.json of har synth from before it listed its files owned the clips its config names
SYNTH_LEGACY_CLIP = re.compile(r"([A-Za-z]+)/v_\1_g(\d{2,})_c(\d{2,})\.avi")
# the temporary files a killed write leaves beside a file: synth's clips X.tmp.avi, replace_atomically's .X.XXXXXXXX.tmp
SYNTH_TEMPORARY = re.compile(r"(?P<clip>.+)\.tmp\.avi|\.(?P<file>.+)\.[A-Za-z0-9_]{8}\.tmp")


class OutputError(ValueError):
    """An output path har refuses to write; the message says why and what to do."""


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def store_kind(path: Path) -> str | None:
    """"frames" / "features" when `path` is a har store (Zarr folder or HDF5 file), else None.
    Reads only the group metadata: a damaged har store is still recognised as ours."""
    from pipeline.core import location

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


def synth_files(folder: Path, where: str | None = None) -> frozenset[str]:
    """The files in `folder` (relative POSIX paths) that `har synth` may replace or remove: the ones
    its own synth.json lists, synth.json itself, and the temporary files a killed run left beside
    them. Raises OutputError, in one line naming `where` (default: the folder) and the entry, when
    synth.json is not har synth's (not JSON, another writer's, a listed path outside the folder) or
    the folder holds anything it does not list, a symlink included: har synth never deletes or
    writes a file it did not make, nor anywhere outside its folder.

    A synth.json from before har synth listed its files owns the clips its config names: with
    {"classes": ["Grow"], "config": {"groups": 2, "clips": 1}} that is Grow/v_Grow_g01_c01.avi and
    Grow/v_Grow_g02_c01.avi, and a v_Grow_g99_c01.avi beside them is someone else's."""
    folder = Path(folder)
    where = where or str(folder)
    manifest = folder / SYNTH_MANIFEST
    if not manifest.is_file() or manifest.is_symlink():
        first = next(iter(sorted(p.name for p in folder.iterdir())), None)
        if first is None:
            return frozenset()
        raise OutputError(f"{where} holds {first} and no synth.json of har synth; {SYNTH_ALLOWED}: "
                          "choose another folder")
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):   # UnicodeDecodeError is a ValueError
        meta = None
    if not isinstance(meta, dict) or meta.get("generator") != "har synth":
        raise OutputError(f"{where} holds a synth.json that har synth did not write (or a damaged one); "
                          f"{SYNTH_ALLOWED}: move it away or choose another folder")
    owns, dirs = _synth_owner(meta, where)
    found = set()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):   # never into a symlinked folder
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            of = _temporary_of(rel)
            mine = (rel in dirs if path.is_dir() else path.is_file() and (owns(rel) or (of is not None and owns(of))))
            if path.is_symlink() or not mine:
                raise OutputError(f"{where} holds {rel}, which its synth.json does not list: har synth replaces and "
                                  "removes only the files it wrote; move it away or choose another folder")
            if not path.is_dir():
                found.add(rel)
    return frozenset(found)


def _raise(e: OSError) -> None:
    raise e


def _synth_owner(meta: dict, where: str):
    """(whether a relative path is synth.json's, the folders it writes into) from a har synth.json."""
    files = meta.get("files")
    if files is None:   # from before synth.json listed its files: the clips its config names
        cfg, classes = meta.get("config"), meta.get("classes")
        counts = [cfg.get(k) for k in ("groups", "clips")] if isinstance(cfg, dict) else []
        if not (isinstance(classes, list) and all(isinstance(c, str) and c.isalpha() for c in classes)
                and len(counts) == 2 and all(type(n) is int and n >= 1 for n in counts)):
            raise OutputError(f"{where} holds a damaged synth.json (no valid \"files\", \"classes\" or \"config\"); "
                              f"{SYNTH_ALLOWED}: move it away or choose another folder")

        def owns(rel: str) -> bool:
            m = SYNTH_LEGACY_CLIP.fullmatch(rel)
            if rel in (SYNTH_MANIFEST, SYNTH_MASKS):
                return rel == SYNTH_MANIFEST or meta.get("masks") is True
            return bool(m) and m[1] in classes and all(
                1 <= int(d) <= n and d == f"{int(d):02d}" for d, n in zip((m[2], m[3]), counts))
        return owns, set(classes)
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        raise OutputError(f"{where} holds a damaged synth.json (\"files\" is not a list of paths); "
                          f"{SYNTH_ALLOWED}: move it away or choose another folder")
    for f in files:
        parts = f.split("/")
        if f.startswith("/") or "\\" in f or "\0" in f or any(p in ("", ".", "..") for p in parts):
            raise OutputError(f"{where} holds a synth.json listing {f!r}, a path outside the folder (or not a plain "
                              "relative one); har synth never writes or deletes there: move it away or choose "
                              "another folder")
        if not _synth_writes(f):   # a forged list names a user's file
            raise OutputError(f"{where} holds a synth.json listing {f!r}, which is not a file har synth writes (a clip "
                              f"Class/v_Class_gGG_cCC.avi or {SYNTH_MASKS}); it never replaces or removes it: move "
                              "it away or choose another folder")
    listed = {*files, SYNTH_MANIFEST}
    dirs = {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
    return listed.__contains__, dirs


def _synth_writes(rel: str) -> bool:
    """Whether har synth writes a file of this relative name: a clip Class/v_Class_gGG_cCC.avi,
    masks.json, or the temporary file a killed write of one of them (or of synth.json) leaves."""
    of = _temporary_of(rel)
    own = (SYNTH_MASKS, SYNTH_MANIFEST) if of else (SYNTH_MASKS,)   # synth.json itself is never in its own list
    return (of or rel) in own or bool(SYNTH_LEGACY_CLIP.fullmatch(of or rel))


def _temporary_of(rel: str) -> str | None:
    """The relative path of the file whose killed write left the temporary file `rel`, or None when
    `rel` is not one of har synth's temporary names: A/v_A_g01_c01.tmp.avi -> A/v_A_g01_c01.avi,
    .synth.json.ab12cd34.tmp -> synth.json."""
    *parent, name = rel.split("/")
    tmp = SYNTH_TEMPORARY.fullmatch(name)
    return tmp and "/".join([*parent, f"{tmp['clip']}.avi" if tmp["clip"] else tmp["file"]])


def _is_ours(target: Path, kind: str) -> bool:
    if kind == "synth":
        return False   # a folder is checked by synth_files; a file is never synth's
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


def check_output(target: Path, kind: str, inputs: Iterable[Path] = (), roots: Iterable[Path] = (),
                 flag: str = "--out") -> Path:
    """Raise OutputError unless `target` may be written as a `kind` output; return it resolved.

    `inputs` are what the command reads (stores, video files), `roots` the dataset roots it
    scans. A target equal to or a parent of any of them is refused, as are the current directory,
    the home folder, $HAR_HOME and their parents. An existing target must be empty or har's own
    output of this kind. `flag`: how the messages name the target (`--out`, `OUT`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; allowed: {', '.join(KINDS)}")
    from pipeline.core import location

    inputs = [location.of(i) for i in inputs]
    roots = [location.of(r) for r in roots]
    if isinstance(target, location.Url):
        return _check_url(target, kind, inputs + roots)
    inputs = [i for i in inputs if not isinstance(i, location.Url)]   # a local path is never inside a URL
    roots = [r for r in roots if not isinstance(r, location.Url)]
    if str(target) in ("", "."):
        raise OutputError(f"{flag} {str(target) or repr('')} is the current directory; name a new path, e.g. {flag} "
                          f"{'data/synthetic' if kind == 'synth' else 'frames.zarr'}")
    t = _resolved(target)
    if t.parent == t:
        raise OutputError(f"{flag} {target} is the file-system root; name a new folder or file")
    from pipeline.core.lineage import har_home

    protected = [(Path.cwd().resolve(), "the current directory"), (_resolved(Path.home()), "your home folder"),
                 (_resolved(har_home()), "har's home ($HAR_HOME)")]
    protected += [(_resolved(r), "the dataset root") for r in roots]
    protected += [(_resolved(i), "an input of this command") for i in inputs]
    for i in inputs:  # a store inside an input would be deleted with it (and read as part of it)
        if _within(t, _resolved(i)) and t != _resolved(i):
            raise OutputError(f"{flag} {target} is inside {i}, an input of this command; choose a path outside it")
    for p, what in protected:
        if t == p:
            raise OutputError(f"{flag} {target} is {what} ({p}); har writes its {kind} output only to a new path "
                              "or over its own output of the same kind")
        if _within(p, t):
            raise OutputError(f"{flag} {target} contains {what} ({p}); replacing it would delete that: "
                              "choose a new path")
    if not (t.exists() or t.is_symlink()):
        return t
    if t.is_symlink() and not t.exists():
        raise OutputError(f"{flag} {target} is a dangling symlink; remove it or choose another path")
    if t.is_dir() and not any(t.iterdir()):
        return t
    if kind == "synth" and t.is_dir():
        synth_files(t, f"{flag} {target}")   # refuses, naming the file, what its synth.json does not list
        return t
    if not _is_ours(t, kind):
        what = {"frames": "frame store", "features": "feature store", "run": "run folder", "cv": "cv folder",
                "explain": "explain folder", "compare": "compare folder", "timeline": "timeline folder",
                "synth": "synth folder"}[kind]
        raise OutputError(f"{flag} {target} is {_describe(t)}, not a har {what}; har only replaces its own output "
                          "of the same kind (--force does not change that): choose a new path")
    return t


def _check_url(target, kind: str, inputs: list) -> object:
    """check_output for object storage: only stores go there; never over, inside or around an input
    or a dataset root, and an existing prefix must be a har store of this kind (nothing else under
    it is ever deleted)."""
    from pipeline.core.location import Url

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
