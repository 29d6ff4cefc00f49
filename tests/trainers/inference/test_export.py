"""`har export`: a run as one model file (ONNX, TorchScript) that gives `har predict`'s logits
from uint8 frames, carries its classes and input in its metadata, loads without har, and is
written only where har may write it."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
from helpers import har, needs_export as needs

from pipeline.stages import backbones
from pipeline.core import outputs
from trainers.inference import export as E
from trainers.inference import export_formats as EF
from trainers.inference import predictor

ATOL = 1e-4
# LSTM on resized ResNet-18 features, on stored-size ones, on Lite0's real ImageNet features (its own
# policy: bicubic, (x - 127) / 128); small-c3d
RUNS = ("head", "head_stored", "head_lite", "video")
# every format of the resized head and the video model; the stored-size head once (it differs by no resize)
CASES = [("head", "onnx"), ("head", "torchscript"), ("head_stored", "torchscript"), ("head_lite", "onnx"), ("video", "onnx"),
         ("video", "torchscript")]
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Grow / Shrink, 4 groups x 1 clip; a 4-frame 48x64 store; a small-c3d run, and LSTM heads on
    random-init ResNet-18 features made with the weights' resize (256 then a 224 crop) and
    with --resize stored. Trained an epoch or two: export needs runs, not good ones."""
    w = tmp_path_factory.mktemp("export")
    env = {"HAR_HOME": str(w / "home")}

    def ok(*args):
        r = har(*args, env=env)
        assert r.returncode == 0, r.stderr

    ok("synth", w / "syn", "--classes", 2, "--groups", 4, "--clips", 1, "--frames", 16)
    ok("extract", "synthetic", "--root", w / "syn", "--frames", 4, "--size", "48x64", "--out", w / "f.zarr",
       "--workers", 1)
    ok("train-e2e", "small-c3d", "--frames", w / "f.zarr", "--epochs", 1, "--out", w / "video", "--workers", 1)
    ok("features", "--store", w / "f.zarr", "--backbone", "resnet18", "--weights", "none", "--out", w / "feat.zarr")
    ok("features", "--store", w / "f.zarr", "--backbone", "resnet18", "--weights", "none", "--resize", "stored",
       "--out", w / "feat_s.zarr")
    ok("train-head", "lstm", "--features", w / "feat.zarr", "--epochs", 2, "--out", w / "head")
    ok("train-head", "lstm", "--features", w / "feat_s.zarr", "--epochs", 2, "--out", w / "head_stored")
    ok("features", "--store", w / "f.zarr", "--backbone", "efficientnet_lite0", "--out", w / "feat_lite.zarr")
    ok("train-head", "lstm", "--features", w / "feat_lite.zarr", "--epochs", 2, "--out", w / "head_lite")
    return w


@pytest.fixture(scope="module")
def exported(work):
    """(run, format) -> ExportResult, each exported once to the run's default path."""
    done = {}

    def get(run: str, fmt: str) -> E.ExportResult:
        needs(fmt)
        if (run, fmt) not in done:
            done[run, fmt] = E.export(work / run, fmt)
        return done[run, fmt]
    return get


def videos(w):
    return sorted((w / "syn").glob("*/*.avi"))


@pytest.fixture(scope="module")
def predictors(work):
    """run -> its `har predict` (predictor.load), loaded once."""
    done = {}

    def get(run: str) -> predictor.Predictor:
        if run not in done:
            done[run] = predictor.load(work / run, "cpu")
        return done[run]
    return get


@pytest.fixture(scope="module")
def clips(work, predictors):
    """Real clips: every other synthetic video (both classes) decoded and sampled as `har predict`
    does, (K, T, H, W, 3) uint8."""
    from pipeline.decoding import reader

    recipe = predictors("video").recipe
    return np.concatenate([reader.read_video(v, v.name, recipe).frames for v in videos(work)[::2]])


@pytest.fixture(scope="module")
def reference(predictors, clips):
    """run -> `har predict`'s logits of `clips` (its score), float32 (K, C)."""
    done = {}

    def get(run: str) -> np.ndarray:
        if run not in done:
            with torch.inference_mode():
                done[run] = predictors(run).score(clips).float().numpy()
        return done[run]
    return get


# ---- the numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("run, fmt", CASES)
def test_exported_logits_equal_har_predicts(work, exported, clips, reference, run, fmt):
    """fp32 logits of the file (ONNX Runtime / torch.jit) = `predictor.load(run).score` on the same
    uint8 clips, atol 1e-4, as one batch and clip by clip (the batch axis is free)."""
    r = exported(run, fmt)
    assert r.path == (work / run / "export" / f"model{SUFFIX[fmt]}").resolve() and r.path.is_file()
    assert r.max_diff <= ATOL
    load = EF.FORMATS.get(fmt).load(r.path)
    ref = reference(run)
    got = load(clips)
    assert got.dtype == np.float32 and got.shape == (len(clips), 2)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(load(clips[1:2]), ref[1:2], atol=ATOL, rtol=0)
    print(f"{run} {fmt}: max |diff| {np.abs(got - ref).max():.2g} over {len(clips)} clips")


@pytest.mark.parametrize("run", RUNS)
def test_metadata_names_classes_input_and_the_run(work, exported, run):
    for fmt in [f for r, f in CASES if r == run]:
        meta = EF.read_meta(exported(run, fmt).path)
        assert meta["classes"] == ["Grow", "Shrink"]
        i = meta["input"]
        assert (i["layout"], i["dtype"], i["channels"], i["frames"], i["height"], i["width"]) == \
               ("BTHWC", "uint8", "RGB", 4, 48, 64)
        assert i["normalisation"]["in_graph"] is True and len(i["normalisation"]["mean"]) == 3
        assert meta["har_run"] == str((work / run).resolve())
        assert meta["har_version"] and meta["recipe"]["frames"] == 4
        assert meta["task"] == ("video-model" if run == "video" else "head")
        if run == "video":
            assert meta["model"] == "small-c3d" and i["preprocess"]["crop"]["height"] == 48
        else:
            lite = run == "head_lite"
            assert (meta["backbone"], meta["head"]) == ("efficientnet_lite0" if lite else "resnet18", "lstm")
            assert i["normalisation"]["mean"] == pytest.approx([127 / 255] * 3 if lite else [0.485, 0.456, 0.406])
            resize = i["preprocess"]["resize_to"]
            assert resize == ([256, 341] if run != "head_stored" else None)
            if resize:
                assert i["preprocess"]["interpolation"] == ("bicubic" if lite else "bilinear")


def test_the_head_graph_cuts_frames_as_the_chain_does(work, clips):
    """The exported resize and crop (two matrix products, rounded) = the chain's to_input
    (torchvision's antialiased resize and centre crop) on real clips."""
    from trainers.inference import explain

    module, _, _ = E.build(work / "head")
    chain = explain.load(work / "head", "cpu").chain
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float()
    with torch.inference_mode():
        cut = module.cut(x)
    ref = torch.cat([chain.to_input(c) for c in clips])
    assert cut.shape == ref.shape == (len(clips), 3, 4, 224, 224)
    assert torch.equal(cut, ref)


def test_exported_files_load_and_run_without_har(work, exported, clips, reference, tmp_path):
    """A fresh Python (no site hooks, so not har's editable install; only the package folders on
    sys.path) from an empty folder: `pipeline` and `trainers` cannot be imported; every file loads
    with its own runtime, its metadata read by that runtime, and gives har predict's logits."""
    files = [str(exported(run, fmt).path) for run, fmt in CASES if fmt != "onnx" or HAVE_ONNX]
    np.save(tmp_path / "clips.npy", clips)
    code = r"""
import importlib.util, json, sys
sys.path[:0] = json.loads(sys.argv[1])
assert [m for m in ("pipeline", "trainers", "cli", "clikit") if importlib.util.find_spec(m)] == []
import numpy as np
clips = np.load("clips.npy")
out = {}
for i, path in enumerate(sys.argv[2:]):
    if path.endswith(".onnx"):
        import onnxruntime as ort
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = s.get_modelmeta().custom_metadata_map
        classes, inp, task = json.loads(meta["classes"]), json.loads(meta["input"]), meta["task"]
        logits = s.run(["logits"], {"frames": clips})[0]
    else:
        import torch
        extra = {"classes.json": "", "input.json": "", "har.json": ""}
        m = torch.jit.load(path, _extra_files=extra)
        classes, inp = json.loads(extra["classes.json"]), json.loads(extra["input.json"])
        task = json.loads(extra["har.json"])["task"]
        with torch.inference_mode():
            logits = m(torch.from_numpy(clips)).numpy()
    assert list(clips.shape[1:]) == [inp["frames"], inp["height"], inp["width"], 3]
    np.save(f"logits{i}.npy", logits)
    out[path] = {"classes": classes, "task": task}
print(json.dumps({"result": out, "har": sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "trainers"))}))
"""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, json.dumps(paths), *files], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["har"] == []
    for i, path in enumerate(files):
        assert doc["result"][path]["classes"] == ["Grow", "Shrink"]
        run = next(run for run in RUNS if f"/{run}/export/" in path)
        np.testing.assert_allclose(np.load(tmp_path / f"logits{i}.npy"), reference(run), atol=ATOL, rtol=0)


@pytest.mark.parametrize("run, fmt", [("head", "onnx"), ("video", "torchscript")])
def test_check_gives_har_predicts_top1_on_real_videos(work, exported, predictors, run, fmt):
    path = exported(run, fmt).path
    some = videos(work)[::3]  # both classes
    got = E.check(path, some, work / run)
    pred = predictors(run)
    assert len(got) == len(some) and {r["predict_top1"] for r in got} <= {"Grow", "Shrink"}
    for r in got:
        assert r["top1"] == r["predict_top1"] == pred(r["video"])["top"][0]["class"]
        assert r["max_diff"] <= ATOL and r["clips"] == 1


# ---- where it writes, and what it refuses --------------------------------------------------------------

def test_the_run_stays_a_run_with_its_export_folder(work, exported):
    exported("video", "torchscript")
    assert (work / "video" / "export").is_dir()
    assert outputs.is_run_dir(work / "video")


def test_an_export_replaces_only_its_own_kind(work, exported, tmp_path):
    first = E.export(work / "video", "torchscript", tmp_path / "m.pt")
    assert not first.replaced
    again = E.export(work / "video", "torchscript", tmp_path / "m.pt")
    assert again.replaced and EF.read_meta(tmp_path / "m.pt")["task"] == "video-model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left


@pytest.mark.parametrize("make, out, fmt, match", [
    (None, "m.onnx", "torchscript", r"does not end in \.pt, the suffix of --format torchscript"),
    (None, "m.pt", "onnx", r"does not end in \.onnx"),
    (None, "m", "torchscript", r"does not end in \.pt"),
    ("text", "m.pt", "torchscript", "is a file that is not a har torchscript export"),
    ("zip", "m.pt", "torchscript", "is a file that is not a har torchscript export"),
    ("folder", "m.pt", "torchscript", "is a folder"),
    ("text", "m.onnx", "onnx", "is a file that is not a har onnx export"),
])
def test_refused_outputs_name_the_path_and_leave_it_alone(work, tmp_path, make, out, fmt, match):
    needs(fmt)
    target = tmp_path / out
    if make == "text":
        target.write_text("my notes")
    elif make == "zip":
        import zipfile

        with zipfile.ZipFile(target, "w") as z:
            z.writestr("archive/data.pkl", b"not a model")
    elif make == "folder":
        target.mkdir()
    with pytest.raises(ValueError, match=match):
        E.export(work / "video", fmt, target)
    if make == "text":
        assert target.read_text() == "my notes"


def test_a_har_export_of_another_format_is_not_replaced(work, exported, tmp_path):
    """A har ONNX file renamed .pt is not a TorchScript export: refused, kept."""
    needs("onnx")
    src = exported("video", "onnx").path
    fake = tmp_path / "renamed.pt"
    fake.write_bytes(src.read_bytes())
    with pytest.raises(ValueError, match="not a har torchscript export"):
        E.export(work / "video", "torchscript", fake)
    assert fake.read_bytes() == src.read_bytes()


def test_never_into_a_run_a_store_or_over_a_runs_files(work):
    best = (work / "video" / "best.pt").read_bytes()
    cases = [(work / "video" / "best.pt", "not a har torchscript export"),
             (work / "video" / "model.pt", "inside the run folder"),
             (work / "video" / "tensorboard" / "model.pt", "inside the run folder"),
             (work / "f.zarr" / "model.pt", "an input of the run"),
             (work / "feat.zarr" / "sub" / "model.pt", "a har features store")]
    for out, match in cases:
        with pytest.raises(ValueError, match=match):
            E.export(work / "video", "torchscript", out)
    assert (work / "video" / "best.pt").read_bytes() == best
    assert not (work / "feat.zarr" / "sub").exists() and not (work / "video" / "model.pt").exists()


def test_a_failed_check_writes_nothing_and_keeps_the_old_file(work, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    E.export(work / "video", "torchscript", out)
    before = out.read_bytes()

    def differs(*a, **k):
        raise E.ExportError("the exported model's logits differ")
    monkeypatch.setattr(E, "compare", differs)
    with pytest.raises(E.ExportError, match="differ"):
        E.export(work / "video", "torchscript", out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_unknown_format_lists_the_allowed(work):
    with pytest.raises(ValueError, match="unknown export format 'tflite'; allowed: onnx, torchscript"):
        E.export(work / "video", "tflite")


def test_onnx_without_the_extra_says_what_to_install(work, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec: None, as when not installed
    with pytest.raises(E.ExportError) as e:
        E.export(work / "video", "onnx")
    msg = str(e.value)
    assert "\n" not in msg and "onnxruntime" in msg and "pip install 'har[export]'" in msg


def test_not_a_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        E.export(tmp_path / "nothing", "torchscript")
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="not a finished har run"):
        E.export(tmp_path / "notes", "torchscript")


# ---- the command ---------------------------------------------------------------------------------------

def test_cli_exports_and_says_where(work, tmp_path):
    code, out, err = har("export", work / "video", "--format", "torchscript", "--out", tmp_path / "c3d.pt")
    assert code == 0, err
    assert "c3d.pt" in out and "(batch, 4, 48, 64, 3)" in out
    assert EF.read_meta(tmp_path / "c3d.pt")["classes"] == ["Grow", "Shrink"]
    code, out, err = har("export", work / "video", "--format", "torchscript", "--out", tmp_path / "c3d.pt", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["replaced"] is True and doc["format"] == "torchscript" and doc["max_logit_diff_vs_predict"] <= ATOL


def test_cli_default_format_is_onnx_in_the_run(work, exported):
    needs("onnx")
    code, _, err = har("export", work / "video")
    assert code == 0, err
    assert EF.read_meta(work / "video" / "export" / "model.onnx")["task"] == "video-model"


@pytest.mark.parametrize("args, match", [
    (["--format", "tflite"], "unknown export format 'tflite'; allowed: onnx, torchscript"),
    (["--format", "torchscript", "--out", "m.onnx"], r"does not end in .pt"),
])
def test_cli_bad_requests_exit_2_with_one_line(work, tmp_path, args, match):
    import re

    code, _, err = har("export", work / "video", *args, cwd=tmp_path)
    assert code == 2
    assert re.search(match, err) and len(err.strip().splitlines()) == 1


def test_a_run_uses_the_input_policy_its_store_recorded(work, clips, reference, tmp_path):
    """predict (and so serve), explain and export rebuild the policy from the run's card, not
    from today's registry: a card whose recorded mean differs gives other logits, everywhere the
    same; a damaged policy is one line, exit 2."""
    import json
    import shutil

    from trainers.inference import explain

    run = tmp_path / "run"
    shutil.copytree(work / "head_lite", run)
    lin = json.loads((run / "lineage.json").read_text())
    assert lin["predict"]["input"] == backbones.get("efficientnet_lite0").input.as_dict()
    lin["predict"]["input"]["mean"] = [100.0, 127.0, 160.0]
    (run / "lineage.json").write_text(json.dumps(lin))
    p = predictor.load(run, "cpu")
    with torch.inference_mode():
        got = p.score(clips).float().numpy()
    assert np.abs(got - reference("head_lite")).max() > 1e-3
    module, _, _ = E.build(run)
    with torch.inference_mode():
        np.testing.assert_allclose(module(torch.from_numpy(clips)).numpy(), got, atol=ATOL, rtol=0)
    chain = explain.load(run, "cpu").chain
    assert chain.encode[0].net.mean.flatten().tolist() == [100.0, 127.0, 160.0]
    lin["predict"]["input"] = {"size": "224", "resize": 256}
    (run / "lineage.json").write_text(json.dumps(lin))
    code, out, err = har("predict", videos(work)[0], "--run", run)
    assert code == 2 and "input policy" in err and len(err.strip().splitlines()) == 1, err
