"""Reading a dataset root without leaving it: names from list files and folder scans kept under
the root (`safe_rel`), the scans themselves (a local walk or one listing of a URL prefix), and
list and annotation files read as UTF-8 text.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.core.location import Url
from pipeline.datasets.index import DatasetError
from pipeline.decoding.video import VIDEO_SUFFIXES


class OutsideRoot(DatasetError):
    """A well-formed name whose file or folder is a link resolving outside the dataset root."""


ALLOWED_NAME = "allowed: a relative path inside the dataset root, without '..'"
_SEPARATORS = re.compile(r"[/\\]")  # backslash too: a\..\b climbs on Windows
_DRIVE = re.compile(r"[A-Za-z]:")    # C:x, C:\x
CLIP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # YouTube ids (11 of these characters), SSv2's numbers


def safe_rel(root: Path, name: str, where: str, folder: str = "", links: bool = True) -> str:
    """`name` (from a list file or a folder scan; relative to `folder`, an already checked path under
    `root`) as a normalised '/'-separated path relative to `root`. `where` ('file:line') starts the message.

    Bad text raises DatasetError. A well-formed name that resolves outside the root (a link) raises
    OutsideRoot, which adapters turn into a note, so one stray link never stops a dataset. A dangling link
    (or a loop) is kept when the link itself is under the root: extraction records it as failed.
    links=False checks the text only, for names merely looked up among names already checked."""
    def bad(why: str) -> DatasetError:
        return DatasetError(f"{where}: {name!r} {why}; {ALLOWED_NAME}")

    if not name:
        raise bad("is empty")
    if "\x00" in name:
        raise bad("contains a NUL byte")
    # Windows forms too (\x, \\server\share, C:x, C:\x): list files are often written there
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise bad("is an absolute path")
    if ".." in _SEPARATORS.split(name):
        raise bad("has a '..' component")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise bad("names no file or folder")
    rel = "/".join(([folder] if folder else []) + parts)
    if not links or isinstance(root, Url):   # objects have no links: the text is the whole story
        return rel
    # The text alone stays under the root; only a link on the way can lead out. So lstat each component
    # (cheap: scans call this once per video) and resolve only when there is a link.
    cur = str(root)
    for part in rel.split("/"):
        cur = os.path.join(cur, part)
        if os.path.islink(cur):
            break
    else:
        return rel
    base, path = os.path.realpath(root), os.path.join(root, rel)
    target = os.path.realpath(path)  # not strict: a dangling link or a loop resolves as far as it goes
    if _under(target, base):
        return rel
    if os.path.islink(path) and not os.path.exists(path) and _under(os.path.realpath(os.path.dirname(path)), base):
        return rel  # dangling: nothing outside is read now; extraction reports the video as failed
    raise OutsideRoot(f"{where}: {name!r} resolves to {target}, outside the dataset root {base}")


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def files_below(root, folder) -> list[str]:
    """Every file below `folder` (links to folders not followed), as paths relative to `root`: a
    local walk, or one listing of a URL prefix."""
    if isinstance(folder, Url):
        base = folder.key[len(root.key):].strip("/")
        return sorted(f"{base}/{k}" if base else k for k in folder.files())
    out = []
    for dirpath, _, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/") for f in files]
    return out


def read_text(path: Path, kind: str = "list file") -> str:
    """A UTF-8 annotation file's text (a byte order mark dropped); one line naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read this {kind} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")  # -sig: Notepad writes a BOM; it would stick to the first name
    except UnicodeDecodeError as e:
        line = data[:e.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text; allowed: a UTF-8 (or ASCII) {kind}") from None


def list_lines(path: Path) -> list[tuple[str, str]]:
    """(where, line) for each non-blank line of a list file; `where` is 'path:lineno' for messages.
    Lines end at \\n, \\r\\n or \\r (universal newlines: CRLF is fine); a UTF-8 byte order mark is dropped."""
    text = read_text(path)
    # universal newlines by hand: str.splitlines would also split at \f, \x1c, \u2028 ...
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(f"{path}:{i}", ln.strip()) for i, ln in enumerate(lines, 1) if ln.strip()]


def find_folder(root: Path, *names: str) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def scan_split_folder(name: str, root: Path, folder: Path, notes: list[str]) -> dict[str, str] | None:
    """File stem -> path relative to root for every video in `folder`, flat or in class folders
    below it (the official download scripts write either). Links leading outside the root are
    left out with one note each (a linked folder once, not per video); None when `folder` itself
    leads outside. Of two files with one stem the first in sorted order is kept."""
    found: dict[str, str] = {}
    if isinstance(folder, Url):
        for rel in files_below(root, folder):
            f = rel.rsplit("/", 1)[-1]
            if not f.startswith(".") and f.lower().endswith(VIDEO_SUFFIXES):
                found.setdefault(f.rsplit(".", 1)[0], safe_rel(root, rel, f"{name} scan"))
        return found
    base = os.path.relpath(folder, root).replace(os.sep, "/")
    if base != ".":
        try:
            safe_rel(root, base, f"{name} scan")
        except DatasetError as e:
            notes.append(f"{e}; its videos are not indexed (har reads only below the dataset root: pass the "
                         "folder the link points into as --root, or copy it under the root)")
            return None
    seen = {os.path.realpath(folder)}
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            rel = os.path.relpath(os.path.join(dirpath, d), root).replace(os.sep, "/")
            real = os.path.realpath(os.path.join(dirpath, d))
            try:
                safe_rel(root, rel, f"{name} scan of {base}")
            except DatasetError as e:
                notes.append(f"{e}; its videos are not indexed")
                continue
            if real not in seen:   # a link back up would walk forever
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if f.startswith(".") or not f.lower().endswith(VIDEO_SUFFIXES):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            try:
                rel = safe_rel(root, rel, f"{name} scan of {base}")
            except DatasetError as e:
                notes.append(f"{e}; not indexed")
                continue
            found.setdefault(f.rsplit(".", 1)[0], rel)
    return found
