"""Property: whatever values a user types, every command exits with a code from the one table
(0, 2, 3; never 1, the bug code) and never prints a traceback (hypothesis over CLI arguments)."""
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import har

ALLOWED = {0, 2, 3}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))

# values that are valid and small, and values that are not: zero, negative, huge, non-finite, text
NUMBERS = st.one_of(st.integers(-3, 6), st.sampled_from([10 ** 9, 10 ** 12, -(10 ** 12), 2 ** 63]))
WEIRD = st.sampled_from(["", "nan", "inf", "-inf", "1e999", "-0", "abc", "../..", "/", "0x10", "1" * 30, " 3"])
VALUES = st.one_of(NUMBERS.map(str), WEIRD, st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.text(max_size=6))


def invoke(args, cwd=None):
    """The CLI in this process, in `cwd` (a fuzzed relative --out must not land in the repository)."""
    res = har(*args, cwd=cwd)
    text = res.stdout + res.stderr
    assert res.returncode in ALLOWED, (args, res.returncode, text[-2000:])
    assert "Traceback" not in text, (args, text[-2000:])
    return res


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import reversed_pair_features, write_feature_store

    from pipeline.datasets.synth import SynthConfig, generate

    base = tmp_path_factory.mktemp("fuzz")
    generate(base / "data", SynthConfig(classes=2, groups=2, clips=1, frames=10))
    feats, labels, groups = reversed_pair_features(videos_per_class=6, groups=3, frames=4, dim=8)
    write_feature_store(base / "features.zarr", feats, labels, groups, ["A", "B", "C", "D"])
    return base


EXTRACT_OPTIONS = ["--frames", "--views", "--clips", "--stride", "--size", "--threads", "--seed", "--sampling",
                   "--format", "--recipe", "--out"]


@SETTINGS
@given(option=st.sampled_from(EXTRACT_OPTIONS), value=VALUES)
def test_extract_arguments_never_traceback(tiny, tmp_path_factory, option, value):
    here = tmp_path_factory.mktemp("x")
    args = ["extract", "synthetic", "--root", tiny / "data", "--scheduler", "synchronous", "--frames", "2",
            "--size", "16"]
    if option != "--out":
        args += ["--out", here / "s.zarr"]
    invoke([*args, option, value], cwd=here)


TRAIN_OPTIONS = ["--lr", "--min-delta", "--weight-decay", "--dropout", "--hidden", "--layers", "--heads",
                 "--batch-size", "--patience", "--epochs", "--split", "--optimizer", "--scheduler", "--device",
                 "--train-views", "--precision"]


@SETTINGS
@given(option=st.sampled_from(TRAIN_OPTIONS), value=VALUES)
def test_train_head_arguments_never_traceback(tiny, tmp_path_factory, option, value):
    here = tmp_path_factory.mktemp("run")
    args = ["train-head", "mean", "--features", tiny / "features.zarr", "--out", here / "r", "--device", "cpu"]
    if option != "--epochs":
        args += ["--epochs", "2"]
    invoke([*args, option, value], cwd=here)


@SETTINGS
@given(command=st.sampled_from(["status", "evaluate", "predict-run", "predict-video"]), value=VALUES)
def test_reading_commands_never_traceback(tiny, command, value):
    if command == "status":
        invoke(["status", value])
    elif command == "evaluate":
        invoke(["evaluate", value or "x"])
    elif command == "predict-run":
        invoke(["predict", tiny / "data" / "Grow" / sorted(p.name for p in (tiny / "data" / "Grow").iterdir())[0],
                "--run", value or "x"])
    else:
        invoke(["predict", value or "x", "--run", Path("runs") / "none"])
