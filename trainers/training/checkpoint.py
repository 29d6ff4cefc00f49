"""Checkpoints on disk: written atomically, read back without trusting them.

A checkpoint is a dict of tensors and plain Python values (model, optimizer, scheduler, loop
state, config). `save` writes it to a temporary file renamed into place, so a kill never leaves
half a checkpoint and a full disk leaves no temporary file. `read` uses weights_only=True: a file
crafted to run code when unpickled is refused unread, and a damaged or foreign one is one line
naming the file (rundir.RunError).
"""
from __future__ import annotations

import errno
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.files import replace_atomically
from trainers.runs import rundir


def plain(obj):
    """`obj` with numpy scalars and arrays as Python numbers and lists and paths as str: what a
    checkpoint read with weights_only=True can hold besides tensors."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file renamed into place: a kill leaves the old checkpoint, a full
    disk (OSError ENOSPC, which goes on to the caller) leaves no temporary file."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def why_unreadable(e: Exception) -> str:
    """torch.load's error for a damaged or foreign file, in a few words."""
    if isinstance(e, pickle.UnpicklingError):
        found = re.search(r"unsupported global:? (?:GLOBAL )?[\w.]+|unsupported operand \d+", str(e), re.IGNORECASE)
        return ("it holds more than tensors and plain values, which har never writes (refused unread"
                + (f": {found.group(0)}" if found else "") + ")")
    if isinstance(e, EOFError):
        return "it ends early (empty or truncated)"
    if isinstance(e, OSError) and e.errno == errno.EINVAL:
        return "not a complete checkpoint archive (truncated or damaged)"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
    return f"{type(e).__name__}: {first[:200]}"


def read(path: Path, device: torch.device | str = "cpu", remedy: str = "retrain or restore it") -> dict:
    """A checkpoint dict of har's, read with weights_only=True: tensors and plain values only, so a
    file crafted to run code when unpickled is refused before any of it runs. RunError naming the
    file when it is missing, truncated, damaged, crafted or has no "model" weights; other OSErrors
    (a failing disk) go on as they are."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise rundir.RunError(f"{path} is missing; {remedy}") from None
    except OSError as e:
        if e.errno not in (None, errno.EINVAL, errno.EISDIR):  # the disk's or the system's, not the bytes'
            raise
        raise rundir.RunError(f"{path} is not a readable har checkpoint: {why_unreadable(e)}; {remedy}") from None
    except Exception as e:  # torch.load's errors for damaged bytes are no documented set: zip reader
        # (RuntimeError, OSError EINVAL), pickle, EOF, KeyError, UnicodeDecodeError ...
        raise rundir.RunError(f"{path} is not a readable har checkpoint: {why_unreadable(e)}; {remedy}") from None
    weights = ck.get("model") if isinstance(ck, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise rundir.RunError(f"{path} is not a readable har checkpoint: no \"model\" weights in it; {remedy}")
    return ck


def load_weights(model: nn.Module, ck: dict, path: Path, remedy: str = "retrain or restore it") -> nn.Module:
    """`model` with the checkpoint's weights; RunError naming the file when a name is missing or
    extra or a shape differs (another model's checkpoint, or a tampered one)."""
    want = model.state_dict()
    got = ck["model"]
    missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
    wrong = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            what = f"{k} has shape {tuple(got[k].shape)}, this run's model {tuple(want[k].shape)}"
        else:
            what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        more = len(missing) + len(extra) + len(wrong) - 1
        raise rundir.RunError(f"{path} does not fit this run's model ({what}{f' and {more} more' if more else ''}); "
                              f"{remedy}")
    model.load_state_dict(got)
    return model
