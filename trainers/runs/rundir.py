"""A run folder on disk: claiming it, writing its files, reading them back without trusting them.

- `claimed(folder, kind, inputs)`: the folder may be written (pipeline.core.outputs.check_output: never
  an input, a dataset root, the current or home folder, nor a folder holding anything but a run),
  is created, and is this process's alone until the block ends (an flock on `folder/.lock`;
  a second har writing it gets one line, and the OS drops the lock even on kill -9).
- `write_text`, `write_json`: written beside their place and renamed over it
  (pipeline.core.files.replace_atomically), so a full disk or a kill never leaves half a file, and a
  failed write leaves no temporary one either.
- `read_json`: a JSON object, or one line naming the file and what is wrong with it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.core import outputs
from pipeline.core.files import replace_atomically

LOCK = ".lock"     # inside the folder: outputs.is_run_dir and is_cv_dir accept it
TMP = ".tmp"       # temporary files end so: outputs.RUN_TEMPORARY_SUFFIXES


class RunError(ValueError):
    """A run folder har cannot use: a damaged, foreign or tampered file in it (the message names
    the file and what to do), or another har process writing it."""


def write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str))


def read_json(path: Path, remedy: str) -> dict:
    """The JSON object in `path`; RunError naming the file when it is missing, not UTF-8 JSON, or
    not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing; {remedy}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise RunError(f"{path} is not valid JSON ({e}); {remedy}") from None
    except RecursionError:  # [[[[...]]]] nested beyond Python's stack
        raise RunError(f"{path} is nested too deeply to be har's; {remedy}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path} holds a JSON {type(obj).__name__}, not an object; {remedy}")
    return obj


def _held_by(folder: Path) -> str | None:
    """Who holds `folder`'s lock ("pid 123"), or None when nobody does (or there is no lock file).
    Opens the file read-only: a folder that is not ours is not modified."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.read(fd, 64).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # drops the shared lock taken above, if any


def _clear_leftover(folder: Path) -> bool:
    """A run killed between taking its lock and writing its first file leaves a folder holding only
    `.lock` (and temporary files): remove them, under the lock, and say True; False for anything else."""
    try:
        names = os.listdir(folder)
        if LOCK not in names or not all(n == LOCK or n.endswith(TMP) for n in names) \
                or not re.fullmatch(r"(pid \d+)?", (Path(folder) / LOCK).read_text(errors="replace")):
            return False
        fd = os.open(Path(folder) / LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for n in names:  # the lock file last: a process that opens it from now on gets a new one
            if n != LOCK:
                (Path(folder) / n).unlink(missing_ok=True)
        (Path(folder) / LOCK).unlink(missing_ok=True)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _busy(folder: Path, holder: str) -> RunError:
    return RunError(f"{folder} is being written by another har run ({holder}); wait for it to finish "
                    "or choose another --out (a second writer is refused)")


@contextlib.contextmanager
def claimed(folder: Path, kind: str = "run", inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """`folder` checked (outputs.check_output of `kind`: "run" or "cv"), created and locked for
    this process until the block ends; yields it resolved. OutputError for a place har must not
    write; RunError while another process holds it."""
    try:
        target = outputs.check_output(Path(folder), kind, inputs)
    except outputs.OutputError:
        holder = _held_by(Path(folder))  # a run that has only just begun looks like a foreign folder
        if holder:
            raise _busy(Path(folder), holder) from None
        if not _clear_leftover(Path(folder)):
            raise
        target = outputs.check_output(Path(folder), kind, inputs)  # the rules again, on an empty folder
    target.mkdir(parents=True, exist_ok=True)
    fd = os.open(target / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise _busy(Path(folder), holder) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        if kind == "run":
            (target / outputs.RUN_MARKER).write_text("a har run folder: har train-head / train-e2e may replace its files\n")
        yield target
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
