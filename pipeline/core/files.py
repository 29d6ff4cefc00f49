"""Writing a file so that nobody ever sees half of it: the one atomic-write helper of har."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], None], tmp: Path | None = None) -> None:
    """`write(tmp)`, then rename `tmp` over `path`. The default `tmp` is a new file beside `path` (the
    same file system) made with O_EXCL (`.NAME.XXXXXXXX.tmp`): never another's file, never a link
    followed. When either step fails (a full disk: OSError ENOSPC) or is interrupted
    (KeyboardInterrupt), the temporary file is removed and the error goes on; `path` keeps what it
    held. Only a file: `write` never makes a folder, so a folder at a given `tmp` is not this
    call's and stays."""
    path = Path(path)
    if tmp is None:
        import tempfile

        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(name, 0o666 & ~current_umask())  # as a plain open() would make it, not mkstemp's 0600
        tmp = Path(name)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            tmp.unlink()
        raise


def current_umask() -> int:
    """The process's umask, read once when this module is imported (reading it means setting it,
    which is not safe while other threads create files)."""
    return _UMASK


_UMASK = os.umask(0o022)
os.umask(_UMASK)
