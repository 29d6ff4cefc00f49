"""`har demo`: the whole chain on har's own synthetic dataset, no download: synth -> extract ->
features (EfficientNet-Lite0's real ImageNet weights, installed with har) -> train `lstm` and
`mean` -> reports. A few minutes on 2 CPU cores.

The synthetic classes come in time-reversed pairs (Grow / Shrink, ...): a head that reads the
order of the frames tells them apart, the bag of frames (`mean`) cannot. The chain is the one a
user runs by hand; `say` gets one line per step, `train` runs each training job (the command
line passes its live epoch table).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.stages import backbones
from pipeline.core import resources
from pipeline.stages import extract as E
from pipeline.stages import features as F
from pipeline.decoding import recipe as R
from pipeline.datasets import synth as S
from trainers.training import head_task
from trainers.runs import runner

BACKBONE = "efficientnet_lite0"  # its ImageNet weights install with har: real features, offline
WEIGHTS = ("imagenet", "none")
HEADS = ("lstm", "mean")


def run(out_dir: Path, workers: int | None = None, say: Callable[[str], None] = print,
        train: Callable[[Callable], runner.RunResult] = lambda job: job(None),
        weights: str = "imagenet") -> dict[str, runner.RunResult]:
    """Every step into `out_dir` (a rerun finds each one up to date); the run of each head.
    `weights`: imagenet (Lite0's, installed with har) or none (a random initialisation, marked)."""
    if weights not in WEIGHTS:
        raise ValueError(f"--weights {weights!r} is not supported by the demo; allowed: {', '.join(WEIGHTS)}")
    root = Path(out_dir) / "synthetic"
    cfg = S.SynthConfig()
    say(f"1/4 synth: {cfg.classes} classes x {cfg.groups} groups x {cfg.clips} clips -> {root}")
    S.generate(root, cfg)
    say("2/4 extract: uniform 16 frames, 112 px")
    res = E.extract(E.ExtractConfig("synthetic", R.named_recipe("default", views=0), root=root, workers=workers))
    state = "up to date" if res.up_to_date else f"{res.decoded} decoded in {res.seconds:.1f} s"
    ratio = res.store_bytes / res.source_bytes if res.source_bytes else float("nan")
    say(f"  frame store: {res.store}\n  {res.ok} videos ok, {len(res.failed)} failed, {state}; "
        f"{resources.human(res.store_bytes)} = {ratio:.2f}x the source videos")
    label = "ImageNet weights (installed with har)" if weights == "imagenet" else "RANDOM weights (--weights none)"
    say(f"3/4 features: {BACKBONE}, {label}, its own input policy ({backbones.get(BACKBONE).input.size} px)")
    fres = F.features(F.FeatureConfig(backbone=BACKBONE, weights=weights, store=res.store))
    say(f"  feature store: {fres.store} "
        f"({'up to date' if fres.up_to_date else f'{fres.frames:,} frames in {fres.seconds:.1f} s'})")
    results = {}
    for i, head in enumerate(HEADS):
        say(f"4/4 train-head {head} on the group-disjoint split ({i + 1}/{len(HEADS)})")
        jb = head_task.job(head_task.HeadRunConfig(head_task.HeadTrainConfig(head=head), features=fres.store))  # the defaults
        # one folder per fingerprint: a demo folder of an earlier har keeps its runs, and this one trains beside them
        folder = Path(out_dir) / "runs" / f"{head}-{runner.fingerprint(jb)[:10]}"
        results[head] = train(lambda on_epoch, jb=jb, folder=folder: runner.execute(jb, folder, on_epoch))
    return results
