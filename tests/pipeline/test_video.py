"""Frame exactness: stored frame k must be decoded frame frame_idx[k], whatever the container."""
from pathlib import Path

import numpy as np
import pytest
from helpers import CODECS, indexed_frames, read_index, write_audio_only, write_indexed, write_vfr

from conftest import shared_data
from pipeline.decoding import video
from pipeline.decoding.reader import read_video
from pipeline.decoding.recipe import Recipe


@pytest.mark.parametrize("suffix, codec, options, what", CODECS, ids=[c[3] for c in CODECS])
def test_decoded_frames_carry_their_own_index(tmp_path, suffix, codec, options, what):
    path = write_indexed(tmp_path / f"v{suffix}", 60, codec, options)
    frames = video.decode_all(path)
    assert [read_index(f) for f in frames] == list(range(60))


def test_b_frames_are_really_there(tmp_path):
    import av

    for suffix, codec, options, _ in CODECS[:2]:
        path = write_indexed(tmp_path / f"b{suffix}", 40, codec, options)
        with av.open(str(path)) as c:
            kinds = {int(f.pict_type) for f in c.decode(video=0)}
        assert int(av.video.frame.PictureType.B) in kinds, f"{codec}: no B-frames, the test would not test reordering"


def test_variable_frame_rate(tmp_path):
    path = write_vfr(tmp_path / "vfr.mp4", 80)
    assert [read_index(f) for f in video.decode_all(path)] == list(range(80))


@pytest.mark.parametrize("sampling, clips, stride", [("uniform", 1, 1), ("random-uniform", 1, 1),
                                                     ("clip", 1, 2), ("multiclip", 3, 1)])
@pytest.mark.parametrize("suffix, codec, options, what", CODECS, ids=[c[3] for c in CODECS])
def test_extracted_samples_are_the_indexed_frames(tmp_path, sampling, clips, stride, suffix, codec, options, what):
    path = write_indexed(tmp_path / f"v{suffix}", 57, codec, options)
    recipe = Recipe(sampling=sampling, frames=8, clips=clips, stride=stride, height=32, width=48, views=1)
    v = read_video(path, "v", recipe)
    frames, idx, n, fps = v.frames, v.frame_idx, v.num_frames, v.fps
    assert n == 57 and fps == pytest.approx(25)
    assert frames.shape == (recipe.samples, 8, 32, 48, 3)
    # the clean view keeps the whole 96x64 frame (same aspect), so every bit block is readable
    for s in range(clips):
        assert [read_index(f) for f in frames[s]] == idx[s].tolist()


def test_vfr_and_shorter_than_t(tmp_path):
    for path, n in ((write_vfr(tmp_path / "vfr.mp4", 45), 45), (write_indexed(tmp_path / "short.avi", 5), 5)):
        v = read_video(path, "v", Recipe(frames=16, height=32, width=48))
        frames, idx = v.frames, v.frame_idx
        assert v.num_frames == n
        assert [read_index(f) for f in frames[0]] == idx[0].tolist()
    assert idx[0].tolist() == [0, 1, 2, 3, 4] + [4] * 11  # the repeats are visible in frame_idx


@pytest.mark.parametrize("name, frames", [
    ("v_ApplyEyeMakeup_g01_c01.avi", 164),
    ("v_BaseballPitch_g01_c01.avi", 107),
    ("AdvancedBoxingTechniquesandExercises_punch_u_nm_np1_ba_med_23.avi", 172),  # header says 173
    ("Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0.avi", 89),  # header says 90
    ("decord_video_90.mov", 3),
    ("torchcodec_var_fps_video.mp4", 300),
    ("moviepy_big_buck_bunny_432_433.webm", 24),  # no count in the header
    ("decord_corrupted.mp4", 49),                 # one broken packet of 50
])
def test_real_clips_count(name, frames):
    path = shared_data() / "videos" / name
    assert video.count_frames(path) == frames


@pytest.mark.parametrize("name", ["AdvancedBoxingTechniquesandExercises_punch_u_nm_np1_ba_med_23.avi",
                                  "decord_corrupted.mp4", "torchcodec_var_fps_video.mp4",
                                  "moviepy_big_buck_bunny_432_433.webm"])
def test_real_clips_stored_frames_equal_decoded_frames(name):
    """Header off by one (HMDB51), corrupt packet, VFR, no header count: stored == decoded[frame_idx]."""
    from pipeline.decoding import augment

    path = shared_data() / "videos" / name
    recipe = Recipe(frames=16, height=64, width=64)
    v = read_video(path, name, recipe)
    frames, idx, n = v.frames, v.frame_idx, v.num_frames
    by_index: dict[int, np.ndarray] = {}
    total = video.scan(path, lambda k: True, lambda k, f: by_index.__setitem__(k, augment.clean(f, (64, 64))))
    assert n == total
    assert idx[0, -1] == n - 1  # uniform reaches the true last frame, not the header's
    np.testing.assert_array_equal(frames[0], np.stack([by_index[k] for k in idx[0]]))


def test_rotation_is_applied():
    path = shared_data() / "videos" / "decord_video_90.mov"
    frames = video.decode_all(path)
    assert frames.shape[1:3] == (568, 320)  # stored 568x320 landscape, displayed portrait


@pytest.mark.parametrize("make, reason", [
    (lambda d: (d / "empty.avi").write_bytes(b"") and d / "empty.avi" or d / "empty.avi", "empty file"),
    (lambda d: (d / "text.mp4").write_text("not a video at all\n" * 50) and d / "text.mp4", "not a readable container"),
    (lambda d: write_audio_only(d / "audio.m4a"), "no video stream"),
])
def test_bad_files_raise_video_error(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(video.VideoError, match=reason):
        read_video(path, "x", Recipe())


def test_truncated_file_fails_with_reason(tmp_path):
    path = write_video_long(tmp_path / "full.avi")
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(video.VideoError, match="truncated"):
        read_video(cut, "cut", Recipe())


def write_video_long(path: Path) -> Path:
    return video.write_video(path, indexed_frames(120), codec="mpeg4", options={"qscale": "2"})


# ---- partial decoding: only the GOPs that hold a sampled frame ----------------------------------

SPARSE = [(s, c, dict(o, g="12"), w) for s, c, o, w in CODECS]  # a keyframe every 12 frames
MORE = SPARSE + [
    (".mkv", "libx264", {"bf": "3", "preset": "veryfast", "crf": "12", "g": "12", "x264-params": "open-gop=1"},
     "H.264 open GOPs (recovery-point keyframes)"),
    (".avi", "libx264", {"bf": "0", "preset": "veryfast", "crf": "12", "g": "12"}, "H.264 Annex B in AVI"),
    (".mpg", "mpeg2video", {"g": "12", "bf": "2", "qscale": "3"}, "MPEG-2 with open GOPs"),
    (".webm", "libvpx", {"g": "12", "crf": "10", "b": "1M"}, "VP8 in WebM"),
    (".avi", "mjpeg", {"strict": "-1", "qscale": "3"}, "MJPEG (every frame a keyframe)"),
    (".webm", "libvpx-vp9", {"g": "24", "crf": "20", "b": "0", "auto-alt-ref": "1", "lag-in-frames": "16",
                             "deadline": "good", "cpu-used": "8"}, "VP9 with hidden alt-ref frames"),
]


@pytest.mark.parametrize("suffix, codec, options, what", MORE, ids=[c[3] for c in MORE])
def test_partial_decoding_gives_the_same_frames_as_decoding_everything(tmp_path, suffix, codec, options, what):
    path = write_indexed(tmp_path / f"v{suffix}", 100, codec, options, noise=24)
    everything = video.decode_all(path)
    plan = video.packet_plan(path)
    assert plan is not None and plan.frames == len(everything) == 100
    rng = np.random.default_rng(0)
    for want in ([0], [99], [37], [11, 12, 13], sorted(rng.choice(100, 16, replace=False).tolist())):
        got: dict[int, np.ndarray] = {}
        sent = video.scan_sparse(path, plan, want, lambda k, f: got.__setitem__(k, video.frame_rgb(f)))
        assert sent is not None and sent <= max(want) + 1 + 12  # never past the last wanted frame's GOP
        assert sorted(got) == sorted(set(want))
        for k in want:
            np.testing.assert_array_equal(got[k], everything[k])


def test_partial_decoding_skips_the_gops_without_a_wanted_frame(tmp_path):
    # H.264 with B-frames, closed GOPs of 12: frame 30 needs only GOP 2 (frames 24..35), up to it
    path = write_indexed(tmp_path / "v.mp4", 100, *SPARSE[1][1:3], noise=24)
    plan = video.packet_plan(path)
    assert plan is not None and len(plan.gops) - 1 == 9
    got: dict[int, int] = {}
    sent = video.scan_sparse(path, plan, [30], lambda k, f: got.__setitem__(k, read_index(video.frame_rgb(f))))
    assert got == {30: 30}
    assert sent <= 12
    # VFR: frames are located by timestamp rank, not by time
    vfr = write_vfr(tmp_path / "vfr.mp4", 60, noise=24, gop=12)
    plan = video.packet_plan(vfr)
    got.clear()
    assert video.scan_sparse(vfr, plan, [50, 7], lambda k, f: got.__setitem__(k, read_index(video.frame_rgb(f))))
    assert got == {7: 7, 50: 50}


def test_extraction_is_the_same_with_or_without_partial_decoding(tmp_path, monkeypatch):
    recipe = Recipe(sampling="multiclip", frames=8, clips=2, height=32, width=48, views=1)
    for suffix, codec, options, _ in SPARSE:
        path = write_indexed(tmp_path / f"v{suffix}", 75, codec, options, noise=24)
        sparse = read_video(path, "v", recipe)
        with monkeypatch.context() as m:
            m.setattr(video, "packet_plan", lambda p: None)
            full = read_video(path, "v", recipe)
        assert sparse.num_frames == full.num_frames == 75
        np.testing.assert_array_equal(sparse.frame_idx, full.frame_idx)
        np.testing.assert_array_equal(sparse.frames, full.frames)
        assert [read_index(f) for f in sparse.frames[0]] == sparse.frame_idx[0].tolist()


@pytest.mark.parametrize("name", ["v_ApplyEyeMakeup_g01_c01.avi",  # packed B-frames: 6-byte placeholders
                                  "AdvancedBoxingTechniquesandExercises_punch_u_nm_np1_ba_med_23.avi"])
def test_packed_bitstream_xvid_is_decoded_in_full(name):
    """Their placeholder packets decode to no frame: packets cannot stand in for frames."""
    assert video.packet_plan(shared_data() / "videos" / name) is None


def test_a_real_ucf_clip_with_short_gops_is_decoded_partially():
    path = shared_data() / "videos" / "v_BaseballPitch_g01_c01.avi"  # MPEG-4 SP, 9 keyframes
    plan = video.packet_plan(path)
    assert plan is not None and plan.frames == 107 and len(plan.gops) - 1 == 9
    everything = video.decode_all(path)
    got: dict[int, np.ndarray] = {}
    sent = video.scan_sparse(path, plan, [3, 60], lambda k, f: got.__setitem__(k, video.frame_rgb(f)))
    assert sent < 107 / 2
    for k in (3, 60):
        np.testing.assert_array_equal(got[k], everything[k])


@pytest.mark.parametrize("pts, key, gops", [
    ([0, 1, 2, 3, 4, 5], [1, 0, 0, 1, 0, 0], [0, 3, 6]),              # no B-frames, GOPs of 3
    ([0, 3, 1, 2, 4, 7, 5, 6], [1, 0, 0, 0, 1, 0, 0, 0], [0, 4, 8]),  # closed GOPs with B-frames
    ([1, 4, 2, 3, 7, 5, 6], [1, 0, 0, 0, 1, 0, 0], [0, 7]),            # open GOP: B-frames 5, 6 lead keyframe 7
    ([0, 10, 20, 90, 95], [1, 0, 0, 1, 0], [0, 3, 5]),                # variable frame rate: ranks, not times
    ([0, 1, 2], [0, 1, 0], None),                                     # first packet not a keyframe
    ([1, 0, 2], [1, 0, 0], None),                                     # keyframe not shown first
    ([0, 1, 1], [1, 0, 0], None),                                     # repeated timestamp
])
def test_packet_plan_table(pts, key, gops):
    plan = video.plan_of(pts, [bool(k) for k in key])
    if gops is None:
        assert plan is None
    else:
        assert plan.gops.tolist() == gops and plan.frames == len(pts)
        assert sorted(plan.rank.tolist()) == list(range(len(pts)))


@pytest.mark.parametrize("wanted, send", [
    ([0], [1, 0, 0, 0, 0, 0, 0, 0]),
    ([1], [1, 1, 1, 0, 0, 0, 0, 0]),   # B-frame 1 comes after P-frame 3 in decode order
    ([3], [1, 1, 0, 0, 0, 0, 0, 0]),
    ([5], [0, 0, 0, 0, 1, 1, 1, 0]),   # the first GOP is skipped
    ([2, 6], [1, 1, 1, 1, 1, 1, 1, 1]),
    ([4, 4], [0, 0, 0, 0, 1, 0, 0, 0]),
])
def test_packets_decoded_for_wanted_frames(wanted, send):
    plan = video.plan_of([0, 3, 1, 2, 4, 7, 5, 6], [True, False, False, False, True, False, False, False])
    assert plan.packets_for(wanted).astype(int).tolist() == send


def test_codecs_not_known_to_restart_at_keyframes_are_decoded_in_full(tmp_path):
    path = write_indexed(tmp_path / "v.flv", 30, "flv", {"g": "12"}, noise=24)  # Sorenson H.263
    assert video.packet_plan(path) is None
    v = read_video(path, "v", Recipe(frames=8, height=32, width=48))
    assert [read_index(f) for f in v.frames[0]] == v.frame_idx[0].tolist()


def test_keyframe_flags_are_checked_against_the_bitstream(tmp_path):
    """An MP4 whose index calls every MPEG-4 frame a keyframe: trusting it would decode P-frames
    without their references (grey smears, no error). The VOP headers say which are I-frames."""
    import av

    src = write_indexed(tmp_path / "p.avi", 60, "mpeg4", {"g": "12", "qscale": "2"}, noise=24)
    lying = tmp_path / "all_key.mp4"
    with av.open(str(src)) as i, av.open(str(lying), "w") as o:
        out = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(video=0):
            if p.size:
                p.is_keyframe, p.stream = True, out
                o.mux(p)
    with av.open(str(lying)) as c:
        assert all(p.is_keyframe for p in c.demux(video=0) if p.size)
    plan = video.packet_plan(lying)
    assert len(plan.gops) - 1 == 5  # the real I-VOPs: frames 0, 12, 24, 36, 48
    got: dict[int, int] = {}
    assert video.scan_sparse(lying, plan, [30, 59], lambda k, f: got.__setitem__(k, read_index(video.frame_rgb(f))))
    assert got == {30: 30, 59: 59}


def test_partial_decoding_gives_up_at_a_broken_packet():
    """decord_corrupted.mp4: packet 30 of 50 does not decode. Asked for frame 30, partial decoding
    hands the video back to the full path instead of guessing."""
    path = shared_data() / "videos" / "decord_corrupted.mp4"
    plan = video.packet_plan(path)
    assert plan is not None and plan.frames == 50
    assert video.scan_sparse(path, plan, [30], lambda k, f: None) is None
    got: dict[int, int] = {}
    # B-frames: frame 5 is packet 7 in decode order (0 4 2 1 3 8 6 5 ...); nothing past it is sent
    assert video.scan_sparse(path, plan, [5], lambda k, f: got.__setitem__(k, f.pts)) == 8
    assert got == {5: 5 * 1024}


def test_the_extract_stage_decodes_through_the_reader():
    """har extract's per-video decoder is the pipeline's reader (one function, patchable by this name)."""
    from pipeline.decoding import reader
    from pipeline.stages import extract

    assert extract.extract_video is reader.read_video


@pytest.mark.parametrize("suffix, codec, options, what", CODECS[:2], ids=[c[3] for c in CODECS[:2]])
def test_clean_frames_are_the_samples_clean_view(tmp_path, suffix, codec, options, what):
    """A streamed decode (the timeline's) gives every frame's index and time, and for the wanted
    frames exactly the clean view read_video stores; the others are not converted."""
    from pipeline.decoding import reader

    path = write_indexed(tmp_path / f"v{suffix}", 30, codec, options)
    recipe = Recipe(frames=6, height=32, width=48)
    v = read_video(path, "v", recipe)
    wanted = set(v.frame_idx[0].tolist())
    got = list(reader.clean_frames(path, (32, 48), wanted.__contains__))
    assert [k for k, _, _ in got] == list(range(30))
    assert all(t is not None for _, t, _ in got) and [t for _, t, _ in got] == sorted(t for _, t, _ in got)
    assert all((img is None) == (k not in wanted) for k, _, img in got)
    by_index = {k: img for k, _, img in got}
    for t, k in enumerate(v.frame_idx[0].tolist()):
        np.testing.assert_array_equal(by_index[k], v.frames[0, t])
