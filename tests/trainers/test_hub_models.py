"""Hugging Face video transformers fine-tuned end to end (`har train-e2e videomae|vjepa2|timesformer
--pretrained FOLDER`): tiny models saved with `save_pretrained` (no download), trained through the
same loop with layer-wise lr decay, warm-up, label smoothing and drop path; predict from the run alone."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import har, save_folder, write_colour_dataset

from pipeline.stages import backbones
from trainers.models import video_models as M

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A colour dataset in a store of 6-frame 40 x 48 clips (the tiny models take 4 frames of 32 px:
    resampled and resized inside), and a folder per family."""
    w = tmp_path_factory.mktemp("hub")
    root = write_colour_dataset(w / "videos", groups=3, clips=2, frames=12)
    assert har("extract", "folder", "--root", root, "--frames", 6, "--size", "40x48", "--out", w / "frames.zarr",
               "--workers", 1).returncode == 0
    for name in ("videomae", "vjepa2", "timesformer"):
        save_folder(name, w / name)
    return w


@pytest.mark.parametrize("name", ["videomae", "vjepa2", "timesformer"])
def test_every_parameter_of_a_hub_model_gets_a_gradient_and_the_weights_are_the_folders(work, name):
    import transformers as tf

    model = M.build(name, 3, pretrained=str(work / name), frames=6, size=40).train()
    ref = getattr(tf, backbones.get(name).clip.model_class).from_pretrained(work / name)
    got = model.net.encoder.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("predictor."):   # V-JEPA 2's predictor is dropped: classification reads the encoder
            assert torch.equal(got[k], v), k
    clips = torch.randint(0, 256, (2, 6, 40, 40, 3), dtype=torch.uint8)
    loss = torch.nn.functional.cross_entropy(model(clips), torch.tensor([0, 2]))
    loss.backward()
    assert not any(".predictor." in n for n, _ in model.named_parameters())
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_a_fine_tuned_videomae_trains_predicts_without_its_folder_and_says_what_it_resampled(work, tmp_path):
    folder = tmp_path / "videomae"
    shutil.copytree(work / "videomae", folder)
    run = tmp_path / "run"
    r = har("train-e2e", "videomae", "--frames", work / "frames.zarr", "--pretrained", folder, "--epochs", 3,
            "--batch-size", 4, "--lr", 1e-3, "--layer-decay", 0.75, "--warmup-epochs", 1, "--label-smoothing", 0.1,
            "--crop", 40, "--workers", 0, "--out", run)
    assert r.returncode == 0, r.stderr
    assert "resampled to 4" in r.stderr and "crops of 40 are resized to it inside the model" in r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"] == "videomae" and m["test"]["videos"] > 0
    card = json.loads((run / "lineage.json").read_text())["predict"]
    assert card["hub"]["mean"] == [0.3, 0.4, 0.5] and card["hub"]["config"]["model_type"] == "videomae"
    shutil.rmtree(folder)  # predict rebuilds the network from the card, then best.pt: the folder is not needed
    video = sorted((work / "videos" / "Red").glob("*.avi"))[0]
    r = har("predict", video, "--run", run, "--json")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)["predictions"][0]["top"]
    assert top[0]["class"] in ("Red", "Green", "Blue") and abs(sum(t["probability"] for t in top) - 1) < 1e-4
    # Grad-CAM on the tokens as a (T', H', W') grid; the ONNX file gives har predict's logits
    r = har("explain", run, video, "--out", tmp_path / "x")
    assert r.returncode == 0 and "gradcam at net.tokens" in " ".join(r.stdout.split()), r.stdout + r.stderr
    assert list((tmp_path / "x").glob("*.gradcam.png"))
    r = har("export", run, "--out", tmp_path / "m.onnx", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_logit_diff_vs_predict"] < 1e-4


@pytest.mark.parametrize("name", ["vjepa2", "timesformer"])
def test_explain_and_export_of_a_fine_tuned_hub_model_with_resampled_frames_and_a_resized_crop(work, tmp_path, name):
    """Frames resampled (6 -> 4) and the crop resized (40 -> 32) inside the network: the resize is
    torch's antialiased bilinear written as matrices, so ONNX takes it and the logits agree."""
    run = tmp_path / name
    r = har("train-e2e", name, "--frames", work / "frames.zarr", "--pretrained", work / name, "--epochs", 1,
            "--batch-size", 4, "--crop", 40, "--workers", 0, "--out", run)
    assert r.returncode == 0, r.stderr
    video = sorted((work / "videos" / "Blue").glob("*.avi"))[0]
    maps = M.build(name, 3, pretrained=str(work / name), frames=6, size=40).net.grid
    assert maps == ((2 if name == "vjepa2" else 4), 4, 4)   # T' x H' x W' tokens
    r = har("explain", run, video, "--out", tmp_path / "x")
    assert r.returncode == 0 and "net.tokens" in r.stdout, r.stdout + r.stderr
    r = har("export", run, "--out", tmp_path / "m.onnx", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_logit_diff_vs_predict"] < 1e-4


def test_drop_path_where_the_model_has_it(work, tmp_path):
    r = har("train-e2e", "timesformer", "--frames", work / "frames.zarr", "--pretrained", work / "timesformer",
            "--epochs", 1, "--batch-size", 4, "--drop-path", 0.2, "--workers", 0, "--out", tmp_path / "ts")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "ts" / "lineage.json").read_text())["predict"]
    assert card["hub"]["config"]["model_type"] == "timesformer"
    model = M.build("timesformer", 3, pretrained=str(work / "timesformer"), frames=6, size=40, drop_path=0.2)
    rates = [float(getattr(layer.drop_path, "drop_prob", 0.0)) for layer in model.net.encoder.encoder.layer]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    r = har("train-e2e", "videomae", "--frames", work / "frames.zarr", "--pretrained", work / "videomae",
            "--drop-path", 0.1, "--out", tmp_path / "v")
    assert r.returncode == 2 and "--drop-path" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("pretrained, says", [
    ("{work}/vjepa2", "'vjepa2' model, not videomae's"),
    ("no-such-owner/no-such-model", "not in the Hugging Face cache"),
    ("../not/a/hub/id", "neither a folder nor a Hugging Face hub id"),
])
def test_a_wrong_pretrained_is_one_line(work, tmp_path, pretrained, says):
    r = har("train-e2e", "videomae", "--frames", work / "frames.zarr", "--pretrained", pretrained.format(work=work),
            "--out", tmp_path / "run", env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


def test_har_serve_answers_for_a_fine_tuned_hub_model_as_har_predict_does(work, tmp_path):
    """A served video foundation model (rebuilt from its run card: no folder needed) answers
    /api/predict with har predict's probabilities and /api/explain with Grad-CAM on its tokens."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from trainers.inference import predictor, server

    run = tmp_path / "run"
    assert har("train-e2e", "vjepa2", "--frames", work / "frames.zarr", "--pretrained", work / "vjepa2", "--epochs", 1,
               "--batch-size", 4, "--workers", 0, "--out", run).returncode == 0
    video = sorted((work / "videos" / "Green").glob("*.avi"))[0]
    want = predictor.load(run, "cpu")(video, 3)
    cfg = server.ServeConfig((run,), device="cpu", max_upload_mb=2, max_seconds=20)
    asgi, _ = server.create_app(cfg, server.load_runs(cfg))
    with TestClient(asgi, base_url="http://127.0.0.1") as c:
        r = c.post("/api/predict", files={"file": (video.name, video.read_bytes())}, data={"top": 3})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]["top"]
        assert [t["class"] for t in got] == [t["class"] for t in want["top"]]
        assert [t["probability"] for t in got] == pytest.approx([t["probability"] for t in want["top"]], abs=1e-6)
        r = c.post("/api/explain", files={"file": (video.name, video.read_bytes())})
        assert r.status_code == 200, r.text
        assert r.json()["layer"].endswith("tokens")


def test_layer_wise_decay_gives_each_transformer_layer_its_own_rate(work):
    """--layer-decay walks into the transformers encoder: embeddings, each layer, then the new head."""
    model = M.build("videomae", 3, pretrained=str(work / "videomae"), frames=6, size=40)
    groups = M.layer_groups(model.net, "classifier")
    layers = model.net.encoder.encoder.layer
    for block in layers:   # every layer's parameters are one group of their own
        ids = {id(p) for p in block.parameters()}
        assert any({id(p) for p in g} == ids for g in groups)
    assert len(groups) >= len(layers) + 3   # embeddings, the layers, fc_norm, the classifier


def test_a_run_is_not_up_to_date_over_other_weights_in_the_same_folder_and_evaluates_without_it(work, tmp_path):
    """The fingerprint holds the weights' digest and the processor (a folder refilled is another
    run); a finished run evaluates from its card alone (no folder, no network)."""
    import transformers as tf

    folder = tmp_path / "ckpt"
    shutil.copytree(work / "videomae", folder)
    args = ("train-e2e", "videomae", "--frames", work / "frames.zarr", "--pretrained", folder, "--epochs", 1,
            "--batch-size", 4, "--workers", 0)
    assert har(*args, "--out", tmp_path / "a").returncode == 0
    assert "up to date" in har(*args, "--out", tmp_path / "a").stdout
    torch.manual_seed(99)   # other weights, same architecture, same path
    tf.VideoMAEModel(tf.VideoMAEConfig.from_pretrained(folder)).save_pretrained(folder)
    again = har(*args, "--out", tmp_path / "a")
    assert again.returncode == 2 and "holds another run" in again.stderr, again   # another fingerprint, refused
    shutil.rmtree(folder)
    r = har("evaluate", tmp_path / "a", "--json")
    assert r.returncode == 0, r.stderr


def test_a_runs_recorded_config_does_not_hold_the_installed_transformers_version(work):
    """transformers writes its own version into every config dict; a run's facts (its card and its
    fingerprint) leave it out, so upgrading transformers does not make a finished run another run."""
    from trainers.models import hub_models

    clip = M.Clip(6, 40)
    facts = hub_models.facts("videomae", str(work / "videomae"), clip)
    assert "transformers_version" not in facts["config"] and facts["config"]["num_frames"] == 4


def test_joint_training_of_a_hub_model_is_one_line(work, tmp_path):
    r = har("train-e2e", "videomae", "--frames", work / "frames.zarr", "--frames", work / "frames.zarr",
            "--pretrained", work / "videomae", "--out", tmp_path / "j")
    assert r.returncode == 2 and "joint training of the Hugging Face video models is not supported" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
