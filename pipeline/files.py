"""Writing a file so that nobody ever sees half of it: the one atomic-write helper of har."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], None], tmp: Path | None = None) -> None:
    """`write(tmp)`, then rename `tmp` over `path` (default `tmp`: `path` + ".tmp", beside it on
    the same file system). When either step fails (a full disk: OSError ENOSPC) or is
    interrupted (KeyboardInterrupt), the temporary file is removed and the error goes on; `path`
    keeps what it held. Only a file: `write` never makes a folder, so a folder at `tmp` is not
    this call's and stays."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            tmp.unlink()
        raise
