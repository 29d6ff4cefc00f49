"""`har predict` on long videos (a timeline of sliding windows) and on whole folders (--csv)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from helpers import colour_frames, har

from pipeline.decoding.video import write_video
from trainers.inference import predictor, timeline


def test_windows_cover_the_video_and_end_at_its_last_frame():
    t = timeline.Timing(2.0, 1.0)
    w = timeline.plan(250, 25.0, t)
    assert w[0] == (0, 50) and all(e - s == 50 for s, e in w)
    assert [s for s, _ in w[:3]] == [0, 25, 50]
    assert w[-1] == (200, 250)                          # 250 - 50 falls on the stride: no extra window
    assert timeline.plan(260, 25.0, t)[-1] == (210, 260)  # the tail gets a window ending at the last frame
    assert timeline.plan(30, 25.0, t) == [(0, 30)]        # shorter than a window: the whole video
    assert timeline.plan(100, 25.0, timeline.Timing(2.0))[1] == (25, 75)  # default stride: half the window
    assert timeline.plan(0, 25.0, t) == []


@pytest.mark.parametrize("window, stride", [(0, None), (-1, None), (float("nan"), None), (2, 0), (7200, None),
                                            (2, 3), (3600, 1)])
def test_bad_window_or_stride_is_refused(window, stride):
    with pytest.raises(ValueError, match="out of range"):
        timeline.Timing(window, stride).validate()


def test_window_sampling_is_the_recipes_own_shifted_to_the_window():
    from pipeline.decoding.recipe import Recipe

    r = Recipe(sampling="multiclip", frames=4, clips=2, stride=2)
    idx = timeline.window_indices(r, 100, 150)
    from pipeline.decoding import sampling

    assert idx.shape == (2, 4)
    np.testing.assert_array_equal(idx, sampling.multiclip(50, 4, 2, 2) + 100)


def test_segments_merge_equal_labels_and_cut_halfway_between_window_centres():
    starts, ends = np.array([0.0, 1, 2, 3]), np.array([2.0, 3, 4, 5])
    seg = timeline.segments(starts, ends, ["A", "A", "B", "B"], np.array([0.9, 0.7, 0.6, 0.8]), 5.0)
    assert [(s["label"], s["start"], s["end"], s["windows"]) for s in seg] == [("A", 0.0, 2.5, 2), ("B", 2.5, 5.0, 2)]
    assert seg[0]["probability"] == pytest.approx(0.8)
    assert timeline.segments(starts, ends, [], np.array([]), 5.0) == []


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """4 s of Red then 6 s of Blue at 25 fps: the cut at 4.0 s."""
    path = tmp_path_factory.mktemp("long") / "red_then_blue.avi"
    write_video(path, np.concatenate([colour_frames("Red", 100, 7), colour_frames("Blue", 150, 8)]), fps=25)
    return path


def test_timeline_switches_label_within_one_window_of_the_cut(colour_run, long_video, tmp_path):
    run, _ = colour_run
    r = har("predict", long_video, "--run", run, "--window", 1, "--stride", 0.5, "--out", tmp_path / "tl", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["predictions"][0]
    assert doc["duration"] == pytest.approx(10.0) and doc["fps"] == pytest.approx(25.0)
    wins = doc["windows"]
    assert len(wins) == 19 and wins[0]["start"] == 0 and wins[-1]["end"] == pytest.approx(10.0)
    assert all(w["end"] - w["start"] == pytest.approx(1.0) for w in wins)
    assert all(len(w["top"]) == 3 for w in wins)  # --top 5 of 3 classes
    labels = [s["label"] for s in doc["segments"]]
    assert labels == ["Red", "Blue"], doc["segments"]
    cut = doc["segments"][0]["end"]
    assert abs(cut - 4.0) <= 1.0, cut
    assert doc["segments"][1]["start"] == cut and doc["segments"][1]["end"] == pytest.approx(10.0)
    for w in wins:  # a window wholly on one side of the cut is that side's class
        if w["end"] <= 4.0 or w["start"] >= 4.0:
            assert w["top"][0]["class"] == ("Red" if w["end"] <= 4.0 else "Blue"), w
    files = doc["files"]
    assert {os.path.basename(f) for f in files.values()} == {f"red_then_blue.timeline.{x}" for x in ("json", "csv", "png")}
    with open(files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 19 and rows[0]["class1"] == "Red" and rows[-1]["class1"] == "Blue"
    assert json.loads((tmp_path / "tl" / "red_then_blue.timeline.json").read_text())["segments"] == doc["segments"]
    from PIL import Image

    assert Image.open(files["png"]).size[0] > 600
    # the text form: one line per segment
    r = har("predict", long_video, "--run", run, "--window", 1, "--out", tmp_path / "tl")
    assert r.returncode == 0 and "Red" in r.stdout and "Blue" in r.stdout and "2 windows" not in r.stdout


def test_timeline_streams_windows_before_the_video_is_decoded(colour_run, long_video):
    """Windows are scored as decoding reaches them: the first is handed out while most of the video is
    still undecoded, and no more windows are held than overlap one frame."""
    run, _ = colour_run
    p = predictor.load(run, "cpu")
    seen: dict = {}
    gen = timeline.stream(long_video, p.recipe, timeline.Timing(1.0, 0.5), seen)
    s, e, frames = next(gen)
    assert (s, e) == (0, 25) and frames.shape == (1, 8, 32, 32, 3)
    assert seen["frames"] <= 30  # 25 frames in the window, a few more decoded at most
    rest = list(gen)
    assert len(rest) == 18 and seen["frames"] == 250
    np.testing.assert_array_equal(frames, timeline_frames(p, long_video, 0, 25))


def test_windows_shorter_than_the_clip_repeat_frames_as_the_recipe_pads(colour_run, long_video):
    """0.2 s windows are 5 frames, fewer than the run's 8: frames repeat (the sampler pads), and
    every window still comes out once."""
    run, _ = colour_run
    p = predictor.load(run, "cpu")
    got = list(timeline.stream(long_video, p.recipe, timeline.Timing(0.2, 0.1)))
    assert [(s, e) for s, e, _ in got][:3] == [(0, 5), (3, 8), (5, 10)] and len(got) == len(set(s for s, _, _ in got))
    assert all(f.shape == (1, 8, 32, 32, 3) for _, _, f in got)


def timeline_frames(p, path, start, end):
    """The same window cut out of the whole video and sampled as extract does (reference)."""
    from pipeline.decoding import augment, video

    idx = timeline.window_indices(p.recipe, start, end)
    got = {}
    video.scan(path, lambda k: k in set(idx.ravel()), lambda k, fr: got.__setitem__(k, augment.clean(fr, (32, 32))))
    return np.stack([[got[int(k)] for k in row] for row in idx])


def test_timeline_of_a_truncated_video_is_refused_as_predict_refuses_it(colour_run, long_video, tmp_path):
    run, _ = colour_run
    cut = tmp_path / "cut.avi"
    data = long_video.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 5])
    whole = har("predict", cut, "--run", run)
    windowed = har("predict", cut, "--run", run, "--window", 1, "--out", tmp_path / "tl")
    assert whole.returncode == windowed.returncode == 3
    assert "truncated" in whole.stderr and "truncated" in windowed.stderr, windowed.stderr


def test_timeline_times_come_from_timestamps_in_a_variable_frame_rate_video(colour_run, tmp_path):
    """100 Red frames 40 ms apart (4 s), then 50 Blue frames 200 ms apart (10 s): the timeline is
    14 s long and Blue lasts to its end, though index / average rate would say otherwise."""
    from fractions import Fraction

    run, _ = colour_run
    pts = [i * 40 for i in range(100)] + [4000 + i * 200 for i in range(50)]
    v = write_video(tmp_path / "vfr.mkv", np.concatenate([colour_frames("Red", 100, 3), colour_frames("Blue", 50, 4)]),
                    pts=pts, time_base=Fraction(1, 1000))
    r = har("predict", v, "--run", run, "--window", 1, "--stride", 0.5, "--out", tmp_path / "tl", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["predictions"][0]
    assert doc["duration"] == pytest.approx(14.0, abs=0.25)
    assert doc["segments"][0]["label"] == "Red" and 3.5 <= doc["segments"][0]["end"] <= 5.0
    assert doc["segments"][-1]["end"] == pytest.approx(14.0, abs=0.25)
    assert all(w["top"][0]["class"] != "Red" for w in doc["windows"] if w["start"] >= 4.0)
    assert doc["windows"][-1]["end"] == pytest.approx(14.0, abs=0.25)
    assert all(b["start"] >= a["start"] for a, b in zip(doc["windows"], doc["windows"][1:]))


def test_folder_predict_writes_a_row_per_video_and_goes_on_past_bad_files(colour_run, tmp_path):
    run, root = colour_run
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    goods = sorted(root.glob("*/*_g01_c01.avi"))
    for g in goods:
        (folder / "sub" / g.name).write_bytes(g.read_bytes())
    (folder / "broken.avi").write_bytes(b"RIFF not really a video")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video: not walked")
    (folder / ".hidden.avi").write_bytes(b"x")
    outside = tmp_path / "outside.avi"
    outside.write_bytes(goods[0].read_bytes())
    (folder / "link.avi").symlink_to(outside)  # leads out of the folder: not read
    out = tmp_path / "p.csv"
    r = har("predict", folder, "--run", run, "--csv", out, "--top", 2)
    assert r.returncode == 3, r.stderr  # finished, some failed
    assert "link.avi" in r.stderr and "outside" in r.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["video", "clips", "error", "class1", "probability1", "class2", "probability2"]
    by = {os.path.basename(x["video"]): x for x in rows}
    assert set(by) == {"broken.avi", "empty.mp4"} | {g.name for g in goods}
    assert by["empty.mp4"]["error"] and by["broken.avi"]["error"] and by["broken.avi"]["class1"] == ""
    for g in goods:
        row = by[g.name]
        assert row["error"] == "" and row["class1"] == g.parent.name and float(row["probability1"]) > 0.5
    assert not list(tmp_path.glob(".p.csv.*"))  # the temporary file became p.csv
    # the same on a local Dask cluster of 2 workers: the same rows
    out2 = tmp_path / "p2.csv"
    r = har("predict", folder, "--run", run, "--csv", out2, "--top", 2, "--workers", 2)
    assert r.returncode == 3, r.stderr
    with open(out2, newline="") as f:
        rows2 = list(csv.DictReader(f))
    key = lambda x: x["video"]  # noqa: E731
    assert sorted(rows2, key=key) == sorted(rows, key=key)
    # its own CSV is replaced on a rerun; anything else is refused
    assert har("predict", folder / "sub", "--run", run, "--csv", out).returncode == 0
    other = tmp_path / "mine.csv"
    other.write_text("name,score\nx,1\n")
    r = har("predict", folder / "sub", "--run", run, "--csv", other)
    assert r.returncode == 2 and "not a CSV of har predict" in r.stderr
    assert other.read_text() == "name,score\nx,1\n"


def test_predict_is_the_command_as_one_library_call(colour_run, tmp_path):
    """predictor.predict(PredictJob): a note for each file skipped, each row as it is done (done of
    total, after its CSV rows), the rows in the order found, the CSV in place once every video is."""
    run, root = colour_run
    folder = tmp_path / "in"
    folder.mkdir()
    goods = sorted(root.glob("*/*_g01_c01.avi"))
    for g in goods:
        (folder / g.name).write_bytes(g.read_bytes())
    (folder / "broken.avi").write_bytes(b"RIFF not really a video")
    outside = tmp_path / "outside.avi"
    outside.write_bytes(goods[0].read_bytes())
    (folder / "link.avi").symlink_to(outside)  # leads out of the folder: skipped, with a note
    notes, seen = [], []
    job = predictor.PredictJob(videos=(folder,), run_dir=run, top=2, csv=tmp_path / "p.csv", device="cpu")
    res = predictor.predict(job, on_row=lambda r, done, total: seen.append((done, total)), on_note=notes.append)
    assert len(notes) == 1 and "link.avi" in notes[0]
    n = len(goods) + 1
    assert seen == [(i, n) for i in range(1, n + 1)]
    assert [os.path.basename(r["video"]) for r in res.rows] == sorted(["broken.avi", *(g.name for g in goods)])
    assert res.failed == 1 and res.timing is None and res.csv == tmp_path / "p.csv"
    with open(res.csv, newline="") as f:
        assert len(list(csv.DictReader(f))) == n
    with pytest.raises(ValueError, match="--top 0 must be >= 1"):
        predictor.predict(predictor.PredictJob(videos=(folder,), run_dir=run, top=0))


def test_predict_refuses_bad_options_with_one_line(colour_run, long_video, tmp_path):
    run, _ = colour_run
    cases = [(["--stride", 1], "--stride needs --window"), (["--window", 0], "out of range"),
             (["--out", tmp_path / "x"], "--out is where --window"), (["--csv", tmp_path / "a.txt"], "does not end in .csv"),
             (["--csv", long_video], "is one of the videos"), (["--workers", 0], "--workers 0")]
    for extra, msg in cases:
        r = har("predict", long_video, "--run", run, *extra)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
    r = har("predict", tmp_path / "nothing_here", "--run", run)
    assert r.returncode == 2 and "no such video file or folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = har("predict", tmp_path / "empty", "--run", run)
    assert r.returncode == 2 and "no video files" in r.stderr
    # the timeline folder is an output of its own: never a folder of other files
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.tex").write_text("mine")
    r = har("predict", long_video, "--run", run, "--window", 1, "--out", keep)
    assert r.returncode == 2 and "not a har timeline folder" in r.stderr
    assert sorted(p.name for p in keep.iterdir()) == ["thesis.tex"]


# ---- the same file twice, a failure half-way, a window too short, a FIFO (issue 28) ---------------

@pytest.mark.parametrize("workers", [None, 1])
def test_the_same_video_given_twice_is_two_rows_named_as_given(colour_run, tmp_path, workers):
    """`v.avi w.avi` with w a link to v, `v.avi ../d/v.avi`, `v.avi v.avi`: a row per argument,
    each naming the video as given (rows kept by position, never by a resolved path)."""
    run, root = colour_run
    d = tmp_path / "d"
    d.mkdir()
    (d / "v.avi").write_bytes(sorted(root.glob("Red/*.avi"))[0].read_bytes())
    (d / "w.avi").symlink_to("v.avi")
    given = ["v.avi", "w.avi", "../d/v.avi", "v.avi"]
    extra = ["--workers", workers] if workers else []
    (d / "out.csv").write_text(",".join(timeline.csv_header(1, False)) + "\nold.avi,1,,Blue,0.9\n")  # an earlier one
    r = har("predict", *given, "--run", run, "--csv", "out.csv", "--top", 1, *extra, cwd=d)
    assert r.returncode == 0, r.stderr
    with open(d / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(x["video"] for x in rows) == sorted(given)  # any order: rows are written as they come
    assert all(x["error"] == "" and x["class1"] == "Red" for x in rows), rows
    r = har("predict", *given, "--run", run, "--top", 1, "--json", *extra, cwd=d)
    assert r.returncode == 0, r.stderr
    assert [p["video"] for p in json.loads(r.stdout)["predictions"]] == given  # in the order given


def test_timeline_files_of_the_same_name_twice_get_stems_by_position(colour_run, long_video, tmp_path):
    run, _ = colour_run
    other = tmp_path / "other"
    other.mkdir()
    (other / long_video.name).symlink_to(long_video)
    r = har("predict", long_video, other / long_video.name, "--run", run, "--window", 2, "--out", tmp_path / "tl",
            "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["predictions"]
    assert [p["video"] for p in got] == [str(long_video), str(other / long_video.name)]
    assert [os.path.basename(p["files"]["json"]) for p in got] == ["red_then_blue.timeline.json",
                                                                    "red_then_blue_.timeline.json"]


@pytest.mark.parametrize("stop, code", [(RuntimeError("a bug between two videos"), 1), (KeyboardInterrupt(), 130)])
def test_the_csv_is_replaced_only_after_every_video_is_done(colour_run, tmp_path, monkeypatch, stop, code):
    run, root = colour_run
    videos = sorted(root.glob("*/*_g01_c01.avi"))
    out = tmp_path / "out.csv"
    assert har("predict", videos[0], "--run", run, "--csv", out).returncode == 0
    before = out.read_bytes()
    real, calls = predictor.Predictor.predict, []

    def second_stops(self, path, top=5, timing=None):
        calls.append(path)
        if len(calls) == 2:
            raise stop
        return real(self, path, top, timing)

    monkeypatch.setattr(predictor.Predictor, "predict", second_stops)
    r = har("predict", *videos, "--run", run, "--csv", out)
    assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert out.read_bytes() == before  # the earlier CSV, whole
    assert [p.name for p in tmp_path.iterdir() if p.name != "har_home"] == ["out.csv"]  # no temporary file left


@pytest.mark.parametrize("window, fps, frames", [(0.32, 25, 8), (1, 29.97, 30), (0.5, 0, 13), (0.1, 120, 12),
                                                 (3600, 25, 90000)])
def test_a_window_of_enough_frames_passes(window, fps, frames):
    assert timeline.check_window(timeline.Timing(window), fps, "v.avi") == frames


@pytest.mark.parametrize("window, fps, message", [
    (0.001, 25, "a window of 0.001 s is 0.025 frames of v.avi (one frame every 0.04 s at 25 fps); allowed: at least "
                "8 frames, 0.32 s or more"),
    (0.3, 25, "is 7.5 frames"),
    (0.1, 0, "(one frame every 0.04 s at 25 fps, assumed)"),
    (0.05, 60, "is 3 frames of v.avi (one frame every 0.01667 s at 60 fps); allowed: at least 8 frames, 0.1333 s"),
])
def test_a_window_of_fewer_frames_than_the_minimum_is_refused(window, fps, message):
    assert timeline.MIN_WINDOW_FRAMES == 8
    with pytest.raises(ValueError) as e:
        timeline.check_window(timeline.Timing(window), fps, "v.avi")
    assert message in str(e.value)


@pytest.mark.parametrize("window", [0.001, 0.2])
def test_predict_refuses_a_window_shorter_than_the_minimum_before_any_work(colour_run, long_video, tmp_path, window):
    run, _ = colour_run
    r = har("predict", long_video, "--run", run, "--window", window, "--out", tmp_path / "tl", "--csv", tmp_path / "w.csv")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    for part in (f"a window of {window:g} s", str(long_video), "one frame every 0.04 s at 25 fps", "at least 8 frames"):
        assert part in lines[0], lines[0]
    assert not (tmp_path / "tl").exists() and not (tmp_path / "w.csv").exists()


def test_a_fifo_is_not_a_regular_file(colour_run, tmp_path):
    """Given directly: one line saying what it is (not "no such file"); in a folder: skipped with a
    note, the other videos classified. Never opened: reading a FIFO blocks."""
    run, root = colour_run
    folder = tmp_path / "in"
    folder.mkdir()
    fifo = folder / "pipe.avi"
    os.mkfifo(fifo)
    r = har("predict", fifo, "--run", run)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in r.stderr and "no such" not in r.stderr
    good = sorted(root.glob("Green/*.avi"))[0]
    (folder / good.name).write_bytes(good.read_bytes())
    r = har("predict", folder, "--run", run, "--json")
    assert r.returncode == 0, r.stderr
    assert [os.path.basename(p["video"]) for p in json.loads(r.stdout)["predictions"]] == [good.name]
    assert "pipe.avi: not a regular file: a FIFO (named pipe); skipped" in r.stderr
