"""Frozen video foundation models from Hugging Face `transformers` (VideoMAE, V-JEPA 2,
TimeSformer; the extra `.[video-models]`): clips in, one feature vector per temporal token out.

Where weights come from (`--weights`):
- a folder written by `save_pretrained` (config.json + model.safetensors or a .bin, loaded by
  transformers with `weights_only`; never remote code);
- a hub id (`MCG-NJU/videomae-base-finetuned-kinetics`) resolved in the Hugging Face cache
  (`HF_HOME`), downloaded into it where the network allows; offline and missing, one line naming
  the id and where the files go;
- `imagenet` (the command's default) means the backbone's default hub id; `none` a seeded random
  initialisation of the family's base configuration (transformers' config defaults), for speed
  figures and tests.

The input policy is the folder's processor config (`video_preprocessor_config.json`, else
`preprocessor_config.json`) read as data into har's `InputPolicy` (shorter side resized,
antialiased, centre square, rescale, mean/std: what transformers' torchvision processors do), or
the family's processor defaults when the folder has none; the feature store records it, and every
later use of a run rebuilds it from there, as for the image backbones.

The stored clip's T frames are resampled (nearest, evenly spaced) to the model's frames per clip
F; the last hidden state (B, tokens, D) is averaged over space, giving (B, F / tubelet, D): the
features keep time, so every head reads them. The lineage records F, the tubelet, the frame
positions taken and the token count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core import lineage
from pipeline.stages import backbones
from pipeline.stages.backbones import WeightsError, WeightsInfo
from pipeline.stages.input_policy import SHORTER_SIDE, SQUARE, InputPolicy, Preprocess

EXTRA = "pip install 'har[video-models]'"
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
WEIGHT_FILES = ("*.safetensors", "*.bin")
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's numbers, as processor configs write them
MAX_CONFIG_BYTES = 1 << 20


def transformers():
    """The `transformers` module, or one line naming the pip command."""
    try:
        import transformers as tf
    except ImportError:
        raise WeightsError(f"video backbones need Hugging Face transformers, which is not installed here; run `{EXTRA}`") from None
    tf.logging.set_verbosity_error()  # its load report is read below (missing weights refused), not printed
    tf.logging.disable_progress_bar()
    return tf


def read_config(path: Path) -> dict:
    """A JSON config file as a dict (at most MAX_CONFIG_BYTES); WeightsError in one line otherwise."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise WeightsError(f"{path} is {path.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        d = json.loads(path.read_text())
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path} is not a JSON config ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(d, dict):
        raise WeightsError(f"{path} holds a {type(d).__name__}, not a JSON object")
    return d


# ---- where the weights are ---------------------------------------------------------------------

def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") and all(c.isalnum() or c in "-_." for c in p)
                                   for p in parts)


def folder_for(name: str, weights: str, flag: str = "--weights") -> tuple[Path, str]:
    """(folder, kind) holding `weights` for backbone `name`: kind 'folder' or 'hub'. A hub id is
    looked up in the Hugging Face cache first, then downloaded where the network allows. `flag`:
    the option that named it, in messages."""
    spec = backbones.get(name)
    hub_id = spec.weights if weights == "imagenet" else weights
    path = Path(weights).expanduser()
    if weights != "imagenet" and path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise WeightsError(f"{flag} {weights!r} is not a save_pretrained folder of {name} "
                               "(config.json and the weights in it); allowed: a folder, a hub id, imagenet, none")
        return path.resolve(), "folder"
    if not _looks_like_hub_id(hub_id):
        raise WeightsError(f"{flag} {weights!r} is neither a folder nor a Hugging Face hub id (owner/name); "
                           f"allowed for {name}: a save_pretrained folder, a hub id, imagenet (= {spec.weights}), none")
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", *WEIGHT_FILES]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns, local_files_only=True)), "hub"
    except Exception:
        pass
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns)), "hub"
    except Exception:
        raise WeightsError(f"{name}: {hub_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and cannot be "
                           f"downloaded here; on a machine with internet run `hf download {hub_id}` and copy that cache "
                           f"(HF_HOME), or pass {flag} FOLDER (a save_pretrained folder)") from None


_DIGESTS: dict[tuple, str] = {}   # (path, size, mtime_ns, ctime_ns, inode) -> sha256: a GB checkpoint hashed once


def _file_sha256(path: Path) -> str:
    """A file's sha256, hashed once per process while the file stays (a fine-tuning run starts by
    reading the same folder for its facts, its fingerprint and its weights). Size, mtime, ctime and
    inode, as lineage.source_fingerprints: a copy that keeps the mtime (cp -p) changes the others."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = lineage.file_sha256(path)
    return _DIGESTS[key]


def folder_sha256(folder: Path) -> str:
    """One digest of what makes the model: config.json and every weights file, by name."""
    files = sorted({f for pattern in WEIGHT_FILES for f in folder.glob(pattern)})
    if not files:
        raise WeightsError(f"{folder} holds no weights (*.safetensors or *.bin) beside its config.json")
    parts = [f"config.json:{_file_sha256(folder / 'config.json')}"]
    parts += [f"{f.name}:{_file_sha256(f)}" for f in files]
    return lineage.fingerprint(parts)


def folder_config(name: str, folder: Path, option: str = "--backbone") -> dict:
    """The folder's config.json, checked to be a model of backbone `name`'s family (`option`: where
    the user chooses the family, in the message)."""
    config = read_config(folder / "config.json")
    model_type = backbones.get(name).clip.model_type
    if config.get("model_type") != model_type:
        raise WeightsError(f"{folder} holds a {config.get('model_type')!r} model, not {name}'s ({model_type!r}); "
                           f"choose the {option} of that family")
    return config


# ---- the input policy --------------------------------------------------------------------------

def read_policy(folder: Path | None, name: str, model_size: int) -> tuple[InputPolicy, str]:
    """(policy, where it came from): the folder's processor config as har's InputPolicy, or the
    family's processor defaults (their crop set to the model's input side, the resize scaled with
    it: 224 of 256 -> 32 of 37). A processor har cannot follow exactly is one line, never a guess."""
    spec = backbones.get(name)
    found = [folder / f for f in PROCESSOR_FILES if folder is not None and (folder / f).is_file()]
    if not found:
        d = spec.input
        r = spec.clip.resize_ratio
        resize = max(model_size, model_size * r[0] // r[1] if r else round(model_size * d.resize / d.size))
        return (InputPolicy(model_size, resize, d.interpolation, d.value_range, d.mean, d.std, crop_offset="floor"),
                f"{spec.clip.model_class.replace('Model', '')} processor defaults")
    path = found[0]
    d = read_config(path)

    def bad(what: str) -> WeightsError:
        return WeightsError(f"{path}: {what}; har follows processors that resize the shorter side (or the whole "
                            "frame to a square), cut a centre square and rescale/normalise")

    def side(v, key, what):
        """(pixels, whether it is a height = width square)"""
        if isinstance(v, int) and not isinstance(v, bool):
            return v, what == "crop_size"
        if isinstance(v, dict) and key in v and len(v) == 1:
            return v[key], False
        if isinstance(v, dict) and set(v) == {"height", "width"} and v["height"] == v["width"]:
            return v["height"], True
        raise bad(f"{what} {v!r:.80} is not one side or a square")

    if d.get("do_resize", True) is not True:
        raise bad("do_resize must be true")
    rule = SHORTER_SIDE
    if spec.clip.resize_ratio:   # V-JEPA 2's processor derives its resize from the crop, whatever `size` says
        size = side(d.get("crop_size", spec.input.size), "height", "crop_size")[0]
        resize = size * spec.clip.resize_ratio[0] // spec.clip.resize_ratio[1]
    else:
        resize, square = side(d.get("size", {"shortest_edge": spec.input.resize}), "shortest_edge", "size")
        if square:   # {"height": s, "width": s}: the whole frame squashed to s x s, as transformers resizes it
            rule = SQUARE
        if d.get("do_center_crop", True) is True:
            size = side(d.get("crop_size", spec.input.size), "height", "crop_size")[0]
        elif square:   # no crop: the squashed square is the input
            size = resize
        else:
            raise bad("without do_center_crop the frame keeps its aspect ratio: the model takes a square")
    resample = d.get("resample", 2)
    if resample not in RESAMPLE:
        raise bad(f"resample {resample!r} is not one of {sorted(RESAMPLE)} (bilinear, bicubic)")
    rescale = d.get("rescale_factor", 1 / 255) if d.get("do_rescale", True) else 1.0
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0 < rescale < 1e6:
        raise bad(f"rescale_factor {rescale!r} is not a positive number")
    normalise = d.get("do_normalize", True)
    record = {"size": size, "resize": resize, "interpolation": RESAMPLE[resample], "rule": rule, "crop_offset": "floor",
              "value_range": [0.0, 255.0 * rescale],
              "mean": d.get("image_mean", list(spec.input.mean)) if normalise else [0.0] * 3,
              "std": d.get("image_std", list(spec.input.std)) if normalise else [1.0] * 3}
    for k in ("mean", "std"):  # one number for all channels, as processors allow
        if isinstance(record[k], (int, float)) and not isinstance(record[k], bool):
            record[k] = [record[k]] * 3
    try:
        return InputPolicy.from_dict(record), path.name
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


# ---- the model ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipShape:
    """What a clip becomes: F frames taken from the stored T, tokens of `tubelet` frames, T' = F / tubelet."""
    frames_per_clip: int
    tubelet: int
    size: int
    dim: int

    @property
    def positions(self) -> int:
        return self.frames_per_clip // self.tubelet

    @staticmethod
    def frame_positions(stored: int, wanted: int) -> np.ndarray:
        """Which of `stored` frames make a clip of `wanted`: evenly spaced, nearest (repeats when
        fewer are stored, skips when more). E.g. 8 of 16: [0 2 4 6 9 11 13 15]."""
        return np.rint(np.linspace(0, stored - 1, wanted)).astype(np.int64)


def load(name: str, weights: str = "imagenet", config=None):
    """(model, ClipShape, WeightsInfo, folder or None): the bare encoder, eval mode, frozen, on the CPU.
    `config`: the folder's config as a run changed it (fine-tuning's drop path), built with the weights."""
    tf = transformers()
    spec = backbones.get(name)
    c = spec.clip
    if weights == "none":
        config = getattr(tf, c.config_class)()
        torch.manual_seed(0)
        model = getattr(tf, c.model_class)(config)
        info, folder = WeightsInfo("none", f"random init (seed 0) of {c.config_class}() defaults", None), None
    else:
        folder, kind = folder_for(name, weights)
        folder_config(name, folder)
        sha = folder_sha256(folder)
        try:
            model, report = getattr(tf, c.model_class).from_pretrained(str(folder), local_files_only=True,
                                                                      output_loading_info=True, config=config)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
            raise WeightsError(f"{folder} does not load as {c.model_class}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
        missing = [k for k in report.get("missing_keys", [])   # a pooler, V-JEPA 2's predictor: never run here
                   if "pooler" not in k and not k.startswith(c.unused)]
        if missing or report.get("mismatched_keys"):
            raise WeightsError(f"{folder}: its weights do not fill {c.model_class} ({len(missing)} missing, e.g. "
                               f"{(missing or [str(report.get('mismatched_keys'))])[0]!r:.80}); har never encodes with "
                               "untrained layers")
        info = WeightsInfo(kind, spec.weights if weights == "imagenet" else (weights if kind == "hub" else str(folder)),
                           sha)
    cfg = model.config
    shape = ClipShape(int(getattr(cfg, c.frames_key)), int(getattr(cfg, c.tubelet_key)) if c.tubelet_key else 1,
                      int(getattr(cfg, c.size_key)), int(cfg.hidden_size))
    if shape.frames_per_clip % shape.tubelet:
        raise WeightsError(f"{name}: {shape.frames_per_clip} frames per clip is not a multiple of its tubelet {shape.tubelet}")
    model.eval().requires_grad_(False)
    return model, shape, info, folder


def token_grid(hidden: torch.Tensor, t: int, gh: int, gw: int, time_major: bool) -> torch.Tensor:
    """The grid tokens of a last hidden state, (B, N, D) -> (B, D, T', H', W'): stored time-major
    (T' H' W': VideoMAE, V-JEPA 2) or space-major (H' W' T': TimeSformer)."""
    if time_major:
        return hidden.unflatten(1, (t, gh, gw)).permute(0, 4, 1, 2, 3)
    return hidden.unflatten(1, (gh, gw, t)).permute(0, 4, 3, 1, 2)


class Tokens(torch.nn.Module):
    """The encoder as a function of normalised clips (B, F, 3, S, S) -> (B, T', D): the last hidden
    state without the tokens before the grid, laid out as (B, D, T', H', W') by the `tokens` layer
    (an identity: where Grad-CAM reads a map of tokens), averaged over space."""

    def __init__(self, model: torch.nn.Module, spec: backbones.ClipSpec, shape: ClipShape):
        super().__init__()
        self.model, self.input_name, self.forward_kw = model, spec.input_name, dict(spec.forward)
        self.cls, self.time_major, self.positions = spec.cls_tokens, spec.time_major, shape.positions
        self.side = shape.size // model.config.patch_size   # H' = W' (square inputs)
        self.tokens = torch.nn.Identity()

    def forward(self, x):
        hidden = self.model(**{self.input_name: x}, **self.forward_kw).last_hidden_state[:, self.cls:]
        grid = token_grid(hidden, self.positions, self.side, self.side, self.time_major)
        # (B, T', D) with B read off the input: the ONNX exporter loses the batch size inside the
        # transformer's reshapes and folded the next layers' shapes to the example's batch
        return self.tokens(grid).mean((3, 4)).transpose(1, 2).reshape(x.shape[0], self.positions, -1)


class ClipFeatures(torch.nn.Module):
    """Normalised clips as the chain holds them, (B, 3, T, S, S) -> (B, T', D): the clip's frames
    taken as the features stage takes them (`ClipShape.frame_positions`), then `Tokens`."""

    def __init__(self, tokens: Tokens, frames_per_clip: int):
        super().__init__()
        self.net, self.frames = tokens, frames_per_clip

    def forward(self, x):
        take = torch.as_tensor(ClipShape.frame_positions(int(x.shape[2]), self.frames), device=x.device)
        return self.net(x.index_select(2, take).transpose(1, 2))


class ClipEncoder:
    """A loaded video backbone on a device: encode_clips(uint8 (K, T, H, W, 3)) -> float16 (K, T', D)."""

    def __init__(self, cfg):  # cfg: features.EncoderConfig
        spec = backbones.get(cfg.backbone)
        if cfg.resize != "weights":
            raise WeightsError(f"--resize {cfg.resize}: {cfg.backbone} sees clips at the size its weights were "
                               "trained at; allowed for video backbones: weights")
        model, self.shape, self.weights, folder = load(cfg.backbone, cfg.weights)
        if cfg.policy is not None:
            self.policy, self.policy_source = cfg.policy, "recorded"
        else:
            self.policy, self.policy_source = read_policy(folder, cfg.backbone, self.shape.size)
        if self.policy.size != self.shape.size:
            raise WeightsError(f"{cfg.backbone}: the processor crops {self.policy.size} px but the model takes "
                               f"{self.shape.size} px ({spec.clip.size_key} in config.json)")
        self.dim = self.shape.dim
        self.preprocess = Preprocess(self.policy, True)
        self.device = torch.device(cfg.device)
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        self.clips_per_batch = max(1, cfg.batch_size // self.shape.frames_per_clip)
        if cfg.device == "cpu":
            from pipeline.core.cluster import torch_threads

            torch.set_num_threads(torch_threads())
        self.net = Tokens(model, spec.clip, self.shape).to(self.device)
        self.run = torch.compile(self.net) if cfg.compile else self.net   # --compile, as for the image backbones

    def positions(self, stored_frames: int) -> int:
        return self.shape.positions

    def spread(self, importance: np.ndarray, stored_frames: int) -> np.ndarray:
        """A value per temporal token -> a value per stored frame: each token's shared among the
        stored frames it was made from (frames not taken get 0), so the totals stay the same."""
        s = self.shape
        out = np.zeros(stored_frames, np.float32)
        taken = s.frame_positions(stored_frames, s.frames_per_clip)   # a frame may be taken more than once
        for j, frame in enumerate(taken):   # each token's value in equal parts to the frames it was made from
            out[frame] += importance[j // s.tubelet] / s.tubelet
        return out

    def record(self, stored_frames: int) -> dict:
        """What the lineage says of the clip: frames taken, tubelet, positions, the policy's source."""
        s = self.shape
        return {"stored_frames": stored_frames, "frames_per_clip": s.frames_per_clip, "tubelet": s.tubelet,
                "positions": s.positions, "frame_positions": s.frame_positions(stored_frames, s.frames_per_clip).tolist(),
                "pooling": "last hidden state, mean over space", "processor": self.policy_source}

    def encode_clips(self, clips: np.ndarray) -> np.ndarray:
        k, t = clips.shape[:2]
        take = self.shape.frame_positions(t, self.shape.frames_per_clip)
        out = []
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            for i in range(0, k, self.clips_per_batch):
                part = np.ascontiguousarray(clips[i:i + self.clips_per_batch][:, take])  # (B, F, H, W, 3)
                b, f = part.shape[:2]
                x = torch.from_numpy(part).reshape(b * f, *part.shape[2:]).permute(0, 3, 1, 2)
                if cuda:
                    x = x.pin_memory().to(self.device, non_blocking=True)
                x = self.preprocess(x)
                x = x.reshape(b, f, *x.shape[1:])
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    y = self.run(x)
                out.append(y.float().to("cpu").numpy().astype(np.float16))
        return np.concatenate(out)


def cost(name: str) -> dict:
    """Parameters and GFLOPs of one clip of the default checkpoint's shape (the family's base
    configuration, built on the meta device: nothing computed, no weights needed)."""
    from torch.utils.flop_counter import FlopCounterMode

    tf = transformers()
    spec = backbones.get(name)
    c = spec.clip
    config = getattr(tf, c.config_class)()
    with torch.device("meta"):
        model = getattr(tf, c.model_class)(config)
        f, s = int(getattr(config, c.frames_key)), int(getattr(config, c.size_key))
        clip = torch.zeros(1, f, 3, s, s)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**{c.input_name: clip}, **dict(c.forward))
    encoder = [p.numel() for n, p in model.named_parameters() if not n.startswith("predictor.")]  # V-JEPA 2's predictor is not run
    return {"name": name, "params": sum(encoder), "gflops": counter.get_total_flops() / 1e9, "input": f"{f}x{s}x{s} clip",
            "pretrained": ("HUB_ID", "FOLDER", "none"), "about": f"{backbones.BACKBONES.about(name)} ({spec.weights})"}
