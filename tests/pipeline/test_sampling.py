import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.decoding import sampling as S


@pytest.mark.parametrize("n, t, expected", [
    (16, 16, list(range(16))),
    (31, 4, [0, 10, 20, 30]),
    (100, 5, [0, 25, 50, 74, 99]),   # linspace 24.75 -> 25, 74.25 -> 74
    (3, 5, [0, 1, 2, 2, 2]),         # shorter than T: last frame repeated, visible
    (1, 3, [0, 0, 0]),
    (10, 1, [4]),                    # one frame: the middle
])
def test_uniform_table(n, t, expected):
    assert S.uniform(n, t).tolist() == [expected]


@pytest.mark.parametrize("n, t, stride, expected", [
    (20, 4, 1, [8, 9, 10, 11]),      # room 16 -> start 8
    (20, 4, 3, [5, 8, 11, 14]),      # span 10, room 10 -> start 5
    (5, 8, 1, [0, 1, 2, 3, 4, 4, 4, 4]),
    (7, 3, 4, [0, 4, 6]),            # span 9 > 7: start 0, clamped to the last frame
])
def test_centre_clip_table(n, t, stride, expected):
    assert S.clip(n, t, stride).tolist() == [expected]


@pytest.mark.parametrize("n, t, k, stride, expected", [
    (100, 4, 3, 1, [[0, 1, 2, 3], [48, 49, 50, 51], [96, 97, 98, 99]]),
    (10, 4, 2, 2, [[0, 2, 4, 6], [3, 5, 7, 9]]),
    (3, 4, 2, 1, [[0, 1, 2, 2], [0, 1, 2, 2]]),
    (50, 8, 1, 1, [[21, 22, 23, 24, 25, 26, 27, 28]]),
])
def test_multiclip_table(n, t, k, stride, expected):
    assert S.multiclip(n, t, k, stride).tolist() == expected


def test_random_uniform_one_per_segment_and_seeded():
    a = S.sample_indices("random-uniform", 100, 10, seed=7)
    b = S.sample_indices("random-uniform", 100, 10, seed=7)
    c = S.sample_indices("random-uniform", 100, 10, seed=8)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert all(10 * i <= x < 10 * (i + 1) for i, x in enumerate(a[0]))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5000), t=st.integers(1, 64), k=st.integers(1, 6), stride=st.integers(1, 4),
       seed=st.integers(0, 2**32))
def test_every_strategy_in_range_sorted_and_shaped(n, t, k, stride, seed):
    for strategy in S.STRATEGIES:
        clips = k if strategy == "multiclip" else 1
        for sd in (None, seed):
            idx = S.sample_indices(strategy, n, t, clips, stride, sd)
            assert idx.shape == (clips, t) and idx.dtype == np.int32
            assert idx.min() >= 0 and idx.max() <= n - 1
            assert (np.diff(idx, axis=1) >= 0).all()
            if n >= t and strategy in ("uniform", "random-uniform"):
                assert len(np.unique(idx)) == t  # no repeats when the video is long enough


@pytest.mark.parametrize("args, message", [
    (("uniform", 0, 4), "at least 1 frame"),
    (("uniform", 10, 0), "frames per sample"),
    (("zigzag", 10, 4), "allowed: uniform, random-uniform, clip, multiclip"),
    (("clip", 10, 4, 1, 0), "stride must be >= 1"),
    (("uniform", 10, 4, 3), "needs --sampling multiclip"),
])
def test_bad_arguments_name_the_value(args, message):
    with pytest.raises(ValueError, match=message):
        S.sample_indices(*args)


def test_seed_for_is_stable_across_processes():
    """Python's hash() is salted per process; seeds (and so stores) must not be."""
    import subprocess
    import sys

    from pipeline.core.lineage import seed_for

    code = "from pipeline.core.lineage import seed_for; print(seed_for(0, 'a/b.avi', 'view', 1))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(h), "PATH": ""}).stdout.strip() for h in (1, 2)}
    assert outs == {str(seed_for(0, "a/b.avi", "view", 1))}
    assert seed_for(0, "a") != seed_for(1, "a")
