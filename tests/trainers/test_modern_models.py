"""The torchvision video models with Kinetics-400 weights (s3d, mvit_v1_b, mvit_v2_s, swin3d_t/s/b):
each trains from the command line on a tiny store (random initialisation, every fine-tuning option)
and its run reads back to the same metrics. A file of its own so the test workers share the load."""
import json

import pytest
from helpers import har

from test_e2e import MODERN
from trainers.models import video_models
from trainers.runs import runner


@pytest.mark.parametrize("model", MODERN)
def test_modern_video_models_train_and_evaluate_from_the_command_line(frames, tmp_path, model):
    tuning = ["--label-smoothing", 0.1, "--warmup-epochs", 0.5, "--layer-decay", 0.8, "--backbone-lr-mult", 0.5]
    if video_models.get(model).drop_path is not None:
        tuning += ["--drop-path", 0.1]
    r = har("train-e2e", model, "--frames", frames, "--epochs", 1, "--batch-size", 4, "--workers", 0, "--crop", 32,
            "--optimizer", "adamw", *tuning, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["model"] == model and m["crop"] == 32 and m["test"]["videos"] > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["label_smoothing"], config["layer_decay"]) == (0.1, 0.8)
    assert runner.evaluate_run(tmp_path / "run")["top1"] == pytest.approx(m["test"]["top1"])   # read back
