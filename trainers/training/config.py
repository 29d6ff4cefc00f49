"""Every training setting, as frozen dataclasses: what a run's config.json holds.

    LoopConfig       what the loop needs whatever it trains (epochs, optimizer, schedule, seed, device)
    HeadTrainConfig  + a sequence head and its options (HeadConfig): trained on features
    E2EConfig        + a video model, its crop and loader: trained end to end on clips

Light on purpose (no torch, no numpy): the command line takes its defaults and help from here.
Each config checks its own values (`check_values`: ValueError naming the value and what is
allowed) against the registries, which are imported only then.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from pipeline.core.device import DEVICES, resolve as resolve_device
from pipeline.core.registry import Registry
from trainers.models.head_config import HeadConfig   # light: a dataclass; re-exported for the CLI
from trainers.training import limits
from trainers.training.optim import OPTIMIZERS, SCHEDULERS

TRAIN_VIEWS = Registry.of("train views", {"augmented": "a random augmented view (clean if none)", "all": "every view",
                                          "clean": "the clean view only"})  # which stored view an epoch draws per video
PRECISIONS = Registry.of("precision", {"auto": "bf16 autocast where native, else fp32", "fp32": "", "bf16": ""})
MEMORY_FORMATS = Registry.of("memory format", ("auto", "channels-last", "contiguous"))


@dataclass(frozen=True)
class LoopConfig:
    """What the training loop needs, whatever it trains (a head on features, a video model on clips)."""
    split: str | None = None       # None: the store's default (group-disjoint where groups exist)
    epochs: int = 30
    batch_size: int = 32           # videos per step
    accumulate: int = 1            # optimizer step every N batches: effective batch N x batch_size
    train_views: str = "augmented" # which stored view an epoch draws per video: augmented | all | clean
    optimizer: str = "adam"        # adam (the seed studies) | adamw (decoupled weight decay)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "plateau"     # plateau: ReduceLROnPlateau on val accuracy, as the seeds
    lr_factor: float = 0.5         # plateau: multiply by this after `lr_patience` flat epochs
    lr_patience: int = 3
    gamma: float = 0.95            # exponential: lr *= gamma per epoch
    class_weighted: bool = False   # cross-entropy weighted by inverse class frequency in train
    patience: int = 10             # early stopping: epochs without val accuracy improving by min_delta
    min_delta: float = 0.001
    val_window: int = 1            # best checkpoint and early stopping by validation accuracy (ties: loss)
                                   # averaged over the last N epochs: steadier on small validation sets
    seed: int = 0
    device: str = "auto"           # auto: cuda when present
    precision: str = "auto"        # auto: bf16 autocast on cuda and on CPUs with native bf16 (avx512_bf16,
                                   # AMX: 1.4x faster for lstm), else fp32; fp32 | bf16 to choose
    label_smoothing: float = 0.0   # cross-entropy against (1 - e) one-hot + e uniform (Szegedy et al. 2016)
    warmup_epochs: float = 0.0     # the learning rate rises linearly from 0 over this many epochs, per step
    mix: str = "proportional"      # joint training on several stores: how batches mix them (trainers.training.joint)

    # whole-number settings: (field, lowest, highest)
    WHOLE = (("epochs", 1, 1_000_000), ("batch_size", 1, 1 << 20), ("accumulate", 1, 1 << 20),
             ("lr_patience", 0, 1_000_000), ("patience", 1, 1_000_000), ("val_window", 1, 1_000_000),
             ("seed", -(2**63), 2**63 - 1))
    # real settings: (field, above, at least, below); every one finite
    # lr and weight decay below 1e6: Adam's first step is lr / 0.1, which near float32's largest value
    # (3.4e38) no longer converts to a float32 tensor (found by tests/promises/test_cli_fuzz.py)
    REAL = (("lr", 0.0, None, 1e6), ("weight_decay", None, 0.0, 1e6), ("min_delta", None, 0.0, None),
            ("lr_factor", 0.0, None, 1.0), ("gamma", 0.0, None, None), ("label_smoothing", None, 0.0, 1.0),
            ("warmup_epochs", None, 0.0, 1e6))

    def check_values(self) -> None:
        """Every setting in its allowed set or range, whatever machine this is: ValueError naming
        the value and what is allowed (nan and inf are never allowed)."""
        checks = ((self.optimizer, OPTIMIZERS.names(), "optimizer"), (self.scheduler, SCHEDULERS.names(), "scheduler"),
                  (self.device, DEVICES, "device"), (self.precision, PRECISIONS, "precision"),
                  (self.train_views, TRAIN_VIEWS, "train-views"))
        from trainers.data.mixing import MIXES

        checks += ((self.mix, MIXES.names(), "mix"),)
        for value, allowed, name in checks:
            if value not in allowed:
                raise ValueError(f"--{name} {value!r} is not supported; allowed: {', '.join(allowed)}")
        for name, lo, hi in self.WHOLE:
            limits.whole(name, getattr(self, name), lo, hi)
        for name, above, at_least, below in self.REAL:
            limits.real(name, getattr(self, name), above=above, at_least=at_least, below=below)
        if not (self.split is None or isinstance(self.split, str)):
            raise ValueError(f"--split {self.split!r} is not a split name; allowed: a name the store lists, or none")
        if not isinstance(self.class_weighted, bool):
            raise ValueError(f"--class-weighted {self.class_weighted!r} is not supported; allowed: true, false")
        limits.finite(self)

    def validate(self) -> None:
        """check_values, and the device asked for is here."""
        self.check_values()
        resolve_device(self.device)

    # settings that change how fast a run goes, never what it computes: left out of its fingerprint,
    # so changing them resumes (or finds up to date) the same run
    EXECUTION_ONLY = ()
    CPU_BF16 = True   # may precision auto pick bf16 on a CPU with native bf16?
    # this class's own settings added after runs existed, at the value that does what runs did
    # before them: left out of the fingerprint there, so a finished run of an earlier version stays
    # up to date. Each subclass declares its own; `added_later` gathers them along the classes.
    ADDED_LATER = {"label_smoothing": 0.0, "warmup_epochs": 0.0, "mix": "proportional", "val_window": 1}

    def as_dict(self) -> dict:
        return asdict(self)

    def fingerprint_dict(self) -> dict:
        def neutral(cls, k, v) -> bool:
            later = added_later(cls)
            return k in later and v == later[k]
        out = {k: v for k, v in self.as_dict().items() if k not in self.EXECUTION_ONLY and not neutral(type(self), k, v)}
        if isinstance(out.get("head_options"), dict):   # the head's settings added later, too
            out["head_options"] = {k: v for k, v in out["head_options"].items() if not neutral(HeadConfig, k, v)}
        return out



def added_later(cls: type) -> dict:
    """The settings of config class `cls` added after runs existed, with their neutral values: its
    own ADDED_LATER and those of the classes it extends."""
    out: dict = {}
    for c in reversed(cls.__mro__):
        out.update(c.__dict__.get("ADDED_LATER", {}))
    return out


@dataclass(frozen=True)
class HeadTrainConfig(LoopConfig):
    """A sequence head trained on cached features. Its loop defaults were chosen by leave-one-group-out
    on har synth, an independent temporal generator and both on real (EfficientNet-Lite0) features
    (BENCHMARKS.md, "train-head's defaults"): a 40-epoch cosine schedule in batches of 16 beat 30
    epochs of plateau in batches of 32 for lstm and attention on all four, and early stopping is off
    (patience = epochs): one epoch's accuracy on 24 validation videos is too noisy to end a run on."""
    epochs: int = 40
    batch_size: int = 16
    scheduler: str = "cosine"
    patience: int = 40
    head: str = "lstm"
    head_options: HeadConfig = field(default_factory=HeadConfig)

    def check_values(self) -> None:
        from trainers.models import heads

        heads.check_options(self.head, self.head_options)
        super().check_values()

    def resolved(self) -> HeadTrainConfig:
        """`--temporal-input auto` made the head's default (heads.default_temporal_input): what a run
        trains with and records in config.json."""
        from trainers.models import heads

        if self.head_options.temporal_input != "auto":
            return self
        return replace(self, head_options=replace(self.head_options,
                                                  temporal_input=heads.default_temporal_input(self.head)))


@dataclass(frozen=True)
class E2EConfig(LoopConfig):
    """A video model trained from clips. Defaults for 3D CNNs on small datasets."""
    batch_size: int = 8            # clips per step (see --accumulate for a larger effective batch)
    lr: float = 1e-4
    model: str = "r2plus1d_18"
    pretrained: str = "none"       # none | kinetics400 (torchvision's video ResNets) | imagenet (2D-based, i3d) |
                                   # a save_pretrained folder or hub id (videomae, vjepa2, timesformer)
    crop: int | None = None        # training crop (random) and test crop (centred); default: the model's
                                   # input size, at most the stored frame size
    three_crop: bool = False       # test time: three crops along the longer side, averaged
    workers: int | None = None     # DataLoader worker processes reading the store; None: min(8, cores - 1), >= 2
    memory_format: str = "auto"    # auto (channels-last on CUDA) | channels-last | contiguous
    # fine-tuning a pretrained network (trainers.models.video_models.layer_groups): the new output layer learns at
    # lr, the layers below at lr x backbone_lr_mult x layer_decay^(layers above them)
    backbone_lr_mult: float = 1.0  # e.g. 0.1: the pretrained trunk learns 10x slower than the new classifier
    layer_decay: float = 1.0       # layer-wise lr decay (BEiT/MViT/Swin fine-tuning: 0.65-0.9); 1: off
    drop_path: float | None = None # stochastic depth at the last block (mvit, swin3d); None: the model's own
    # on-the-fly augmentation of every training clip besides the random crop
    # (trainers.data.clips.augment: the set `har extract` stores as views)
    hflip: bool | None = None      # a coin-flip horizontal mirror; off where left/right is part of the label;
                                   # None: as the store's views (on unless extracted with --no-hflip)
    rotate: float = 0.0            # a rotation uniform in +-rotate degrees (e.g. 15); 0: none
    vflip: bool = False            # a coin-flip vertical mirror
    jitter: float = 0.0            # brightness, contrast, saturation factors uniform in 1 +- jitter; 0: none
    EXECUTION_ONLY = ("workers",)  # the loader's worker count changes speed, not results (tested)
    ADDED_LATER = {"backbone_lr_mult": 1.0, "layer_decay": 1.0, "drop_path": None, "rotate": 0.0, "vflip": False,
                   "jitter": 0.0, "hflip": None}   # as LoopConfig.ADDED_LATER
    # precision auto stays fp32 on CPUs: torch 2.14.1's oneDNN bf16 conv3d weight gradient reads
    # memory it never wrote for some shapes (256 channels at 2x4x4, AVX512-BF16, even on 1 thread):
    # runs differed and about 1 in 10 went NaN. --precision bf16 still asks for it.
    CPU_BF16 = False

    def check_values(self) -> None:
        from trainers.models import video_models

        spec = video_models.get(self.model)
        if spec.hub and not (isinstance(self.pretrained, str) and 0 < len(self.pretrained) <= 4096):
            raise ValueError(f"--pretrained {self.pretrained!r:.80}: {self.model} takes a save_pretrained FOLDER, "
                             "a Hugging Face HUB_ID or none")
        if not spec.hub and self.pretrained not in ("none", *spec.pretrained):
            raise ValueError(f"--pretrained {self.pretrained!r} is not available for {self.model}; allowed: "
                             f"{', '.join(('none', *spec.pretrained))}")
        if self.crop is not None:
            limits.whole("crop", self.crop, 8, 4096)  # the largest stored frame (har extract --size)
        if self.workers is not None:
            limits.whole("workers", self.workers, 0, 1024)
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"--memory-format {self.memory_format!r} is not known; allowed: {', '.join(MEMORY_FORMATS)}")
        if not isinstance(self.three_crop, bool):
            raise ValueError(f"--three-crop {self.three_crop!r} is not supported; allowed: true, false")
        limits.real("rotate", self.rotate, at_least=0.0, below=180.0)
        limits.real("jitter", self.jitter, at_least=0.0, below=1.0)
        for name in ("vflip", "hflip"):
            if not isinstance(getattr(self, name), bool) and not (name == "hflip" and self.hflip is None):
                raise ValueError(f"--{name} {getattr(self, name)!r} is not supported; allowed: true, false")
        limits.real("backbone_lr_mult", self.backbone_lr_mult, above=0.0, below=1e3)
        limits.real("layer_decay", self.layer_decay, above=0.0, below=None)
        if self.layer_decay > 1.0:
            raise ValueError(f"--layer-decay {self.layer_decay!r} is out of range; allowed: 0 < layer-decay <= 1")
        if self.drop_path is not None:
            limits.real("drop_path", self.drop_path, above=None, at_least=0.0, below=1.0)
            if spec.drop_path is None:
                able = [n for n in video_models.VIDEO_MODELS.names() if video_models.get(n).drop_path is not None]
                raise ValueError(f"--drop-path is not available for {self.model} (it has no stochastic depth); "
                                 f"allowed for: {', '.join(able)}")
        super().check_values()


