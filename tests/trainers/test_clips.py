"""The end-to-end data path: clips come from the frame store exactly as stored, one per video
per epoch, reproducibly; crops and flips are right on any device."""
import numpy as np
import pytest
import torch

from pipeline.stages.extract import ExtractConfig, Recipe, extract
from pipeline.stores.store import StoreReader
from trainers.data import clips as C
from trainers.data import views


@pytest.fixture(scope="module")
def frame_store(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("clips") / "frames.zarr"
    recipe = Recipe(sampling="multiclip", frames=4, clips=2, height=40, width=48, views=1)
    return extract(ExtractConfig("synthetic", recipe, root=synthetic_root, out=out, scheduler="synchronous")).store


def test_loader_yields_the_stored_clips_in_order_with_labels(frame_store):
    cs = views.open_view(frame_store, "frames")
    videos = np.flatnonzero(cs.ok)[:6]
    items = C.eval_items(cs, videos)
    assert items.shape == (12, 2) and set(items[:, 1]) == {0, 1}  # 2 clean clips per video
    with StoreReader(frame_store) as r:
        stored = r.read("frames")
    got = [(x, y) for x, y in C.loader(cs, items, batch_size=5, workers=2)]
    clips = torch.cat([x for x, _ in got]).numpy()
    labels = torch.cat([y for _, y in got]).numpy()
    np.testing.assert_array_equal(clips, stored[items[:, 0], items[:, 1]])
    np.testing.assert_array_equal(labels, cs.labels[items[:, 0]])


def test_training_items_one_augmented_sample_per_video_reproducible_per_epoch(frame_store):
    cs = views.open_view(frame_store, "frames")
    videos = np.flatnonzero(cs.ok)
    a, b = C.train_items(cs, videos, 0, 1), C.train_items(cs, videos, 0, 1)
    np.testing.assert_array_equal(a, b)
    assert sorted(a[:, 0]) == sorted(videos)                      # each video once
    assert (cs.view_index[a[:, 0], a[:, 1]] == 1).all()           # an augmented view
    assert set(cs.clip_index[a[:, 0], a[:, 1]]) == {0, 1}         # of either clip
    assert not np.array_equal(a, C.train_items(cs, videos, 0, 2))  # another epoch, another order


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_stream_gives_each_epoch_exactly_its_own_batches(frame_store, workers):
    """One iterator across epochs (prefetching over the boundary) yields what a fresh per-epoch
    loader yields, short last batches included; a skipped or unfinished epoch restarts it right."""
    cs = views.open_view(frame_store, "frames")
    videos = np.flatnonzero(cs.ok)

    def items_for(e):
        return C.train_items(cs, videos, 0, e)

    def per_epoch(e):
        return [(x, y) for x, y in C.loader(cs, items_for(e), batch_size=5, workers=0)]

    assert len(videos) % 5  # a short last batch in every epoch
    stream = C.EpochStream(cs, items_for, batch_size=5, workers=workers)
    try:
        for e in (0, 1, 2, 4):  # 4: a skipped epoch restarts the iterator there
            got, want = list(stream.epoch(e)), per_epoch(e)
            assert len(got) == len(want)
            for (x, y), (wx, wy) in zip(got, want):
                assert torch.equal(x, wx) and torch.equal(y, wy)
        part = stream.epoch(5)
        next(part)  # leave epoch 5 unfinished: asking for 6 must not continue inside 5
        got, want = list(stream.epoch(6)), per_epoch(6)
        assert all(torch.equal(x, wx) for (x, _), (wx, _) in zip(got, want)) and len(got) == len(want)
    finally:
        stream.close()


def test_random_crop_flip_cuts_real_windows_and_mirrors():
    clips = torch.arange(2 * 3 * 6 * 8 * 3, dtype=torch.int32).view(2, 3, 6, 8, 3)
    g = torch.Generator().manual_seed(0)
    out = C.random_crop_flip(clips, 4, g)
    assert out.shape == (2, 3, 4, 4, 3)
    for i in range(2):
        found = False
        for top in range(3):
            for left in range(5):
                window = clips[i, :, top:top + 4, left:left + 4]
                found |= torch.equal(out[i], window) or torch.equal(out[i], window.flip(2))
        assert found
    again = C.random_crop_flip(clips, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="--crop 9 is larger than the stored frames"):
        C.random_crop_flip(clips, 9, g)


def test_three_crops_span_the_longer_side():
    clips = torch.zeros(1, 2, 6, 10, 3)
    crops = C.centre_crops(clips, 6, three=True)
    assert len(crops) == 3 and all(c.shape == (1, 2, 6, 6, 3) for c in crops)
    assert C.centre_crops(clips, 4)[0].shape == (1, 2, 4, 4, 3)


def test_a_missing_store_is_refused(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        views.open_view(tmp_path / "none.zarr", "frames")
