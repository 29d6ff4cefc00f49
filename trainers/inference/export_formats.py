"""The file formats `har export` writes (`FORMATS`), each able to write a traced model with har's
metadata, to tell its own files from others' by that metadata (nothing in a file is run to read
it), and to load one back for the check against `har predict`:

    onnx         ONNX (opset 17, TorchScript-based exporter) for ONNX Runtime and others; needs
                 pip install 'har[export]' (onnx, onnxruntime). The metadata is the model's
                 `metadata_props` (lists and objects as JSON).
    torchscript  TorchScript (torch.jit.load, also from C++ libtorch); the metadata is the
                 archive's extra files classes.json, input.json and har.json, read as the zip it is.

What the graph holds and where a file may be written: trainers.inference.export.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.registry import Registry

EXTRA = "pip install 'har[export]'"
OPSET = 17          # ONNX Runtime >= 1.14, TensorRT 8.6, OpenVINO 2023: LayerNormalization (attention heads)
INPUT_NAME, OUTPUT_NAME = "frames", "logits"


class ExportError(ValueError):
    """A run or an output path har cannot export to; the message says why and what to do."""


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    write: Callable[[nn.Module, torch.Tensor, dict, Path], None]   # (module, example, metadata, path)
    meta: Callable[[Path], dict | None]                             # har's metadata of a file; None: not har's
    load: Callable[[Path], Callable[[np.ndarray], np.ndarray]]      # file -> uint8 clips -> logits
    needs: tuple[str, ...] = ()                                     # modules it imports (the extra)


def need(fmt: Format) -> None:
    """ExportError naming the extra when a module the format needs is not installed."""
    import importlib.util

    missing = [m for m in fmt.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"--format {fmt.name} needs {' and '.join(missing)}, not installed here: {EXTRA}")


@contextlib.contextmanager
def _tracing():
    """No gradients; transformer layers on their plain path (their fused inference kernel,
    aten::_transformer_encoder_layer_fwd, has no ONNX form and would be traced into TorchScript
    as a call); quiet: the TorchScript-based ONNX exporter's deprecation notice (it is the one that
    needs no onnxscript) and the tracer's notes on Python ints that are constants on purpose
    (the run's T, H, W)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _write_onnx(module: nn.Module, example: torch.Tensor, meta: dict, path: Path) -> None:
    import onnx

    buf = io.BytesIO()
    with _tracing():
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    model = onnx.load_model_from_string(buf.getvalue())
    model.producer_name, model.producer_version = "har", meta["har"]["har_version"]
    model.doc_string = meta["har"]["about"]
    flat = {"classes": meta["classes"], "input": meta["input"], **meta["har"]}
    for key, value in flat.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _onnx_meta(path: Path) -> dict | None:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError):  # not ONNX at all
        return None
    props = {p.key: p.value for p in model.metadata_props}
    if "har_version" not in props or "har_run" not in props:
        return None
    out = {}
    for key, value in props.items():  # lists and objects are JSON; names and versions plain text
        try:
            out[key] = json.loads(value) if value[:1] in ("[", "{") else value
        except ValueError:
            out[key] = value
    return out


def _load_onnx(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda frames: session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(frames, np.uint8)})[0]


EXTRA_FILES = ("classes.json", "input.json", "har.json")


def _write_torchscript(module: nn.Module, example: torch.Tensor, meta: dict, path: Path) -> None:
    with _tracing():
        traced = torch.jit.trace(module, (example,), check_trace=False)
        extra = {"classes.json": json.dumps(meta["classes"]), "input.json": json.dumps(meta["input"]),
                 "har.json": json.dumps(meta["har"])}
        torch.jit.save(traced, str(path), _extra_files=extra)


def _torchscript_meta(path: Path) -> dict | None:
    """The extra files of a TorchScript archive, read as the zip it is (nothing of it is run)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if not any(n.endswith("/data.pkl") for n in names):
                return None
            extra = {f: json.loads(z.read(n)) for n in names for f in EXTRA_FILES if n.endswith("/extra/" + f)}
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return None
    har = extra.get("har.json")
    if not (isinstance(har, dict) and "har_version" in har and "har_run" in har):
        return None
    return {"classes": extra.get("classes.json"), "input": extra.get("input.json"), **har}


def _load_torchscript(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's notice that torch.export is newer
        module = torch.jit.load(str(path), map_location="cpu")

    def score(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(frames, np.uint8))).numpy()
    return score


FORMATS: Registry[Format] = Registry("export format")
FORMATS.add("onnx", Format("onnx", ".onnx", _write_onnx, _onnx_meta, _load_onnx, ("onnx", "onnxruntime")),
            f"ONNX opset {OPSET} for ONNX Runtime and others ({EXTRA})")
FORMATS.add("torchscript", Format("torchscript", ".pt", _write_torchscript, _torchscript_meta, _load_torchscript),
            "TorchScript for torch.jit.load (Python or C++ libtorch)")


def read_meta(path: Path) -> dict | None:
    """har's metadata of an exported file, by its suffix's format (flat: classes, input, har_run,
    har_version, task, ..., lists and objects decoded); None when it is not one of har's exports."""
    try:
        fmt = format_of(path)
    except ExportError:
        return None
    return fmt.meta(Path(path)) if Path(path).is_file() else None


def format_of(path: Path) -> Format:
    """The format whose suffix `path` has (ExportError naming the allowed suffixes)."""
    for name in FORMATS:
        if FORMATS.get(name).suffix == Path(path).suffix:
            return FORMATS.get(name)
    raise ExportError(f"{path} is not a model file har exports; allowed suffixes: "
                      f"{', '.join(FORMATS.get(n).suffix for n in FORMATS)}")
