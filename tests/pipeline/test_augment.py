"""Augmentation: the stored views' rotation and vertical flip (recorded, reproducible, drawn after
the older parameters so earlier recipes store what they stored), and the same set applied on the
fly to training clips of video models."""
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from pipeline.decoding import augment as A
from pipeline.core import lineage
from pipeline.decoding.recipe import Recipe
from trainers.data import clips as C


def _image(seed=0, size=48):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    img[20:28, 5:43] = 250          # a horizontal bar
    img[4:12, 30:40, 0] = 200       # a red patch top right
    return img


def test_default_recipes_keep_their_fingerprint_and_rotation_or_vflip_make_a_new_version():
    r = Recipe()
    later = ("rotate", "vflip", "hflip")
    before = lineage.fingerprint({k: v for k, v in asdict(r).items() if k not in later})
    assert r.fingerprint() == before
    # the store lineage hashes the same dict: stores of earlier versions stay current
    assert r.fingerprint_dict() == {k: v for k, v in asdict(r).items() if k not in later}
    assert len({r.fingerprint(), Recipe(rotate=15.0).fingerprint(), Recipe(vflip=True).fingerprint(),
                Recipe(hflip=False).fingerprint()}) == 4


def test_without_hflip_no_view_is_mirrored_and_every_other_draw_is_the_same():
    mirrored = 0
    for i in range(200):
        with_flip = A.params_for(3, f"v{i}.avi", 1, (240, 320), (112, 112), rotate=15.0, vflip=True)
        without = A.params_for(3, f"v{i}.avi", 1, (240, 320), (112, 112), rotate=15.0, vflip=True, hflip=False)
        assert not without.flip
        assert without == replace(with_flip, flip=False)
        mirrored += with_flip.flip
    assert 60 < mirrored < 140
    clips = torch.from_numpy(np.stack([np.stack([_image(s + t) for t in range(4)]) for s in range(8)]))
    flip = C.random_crop_flip(clips, 40, torch.Generator().manual_seed(2))
    keep = C.random_crop_flip(clips, 40, torch.Generator().manual_seed(2), hflip=False)
    mirrored = [i for i in range(8) if not torch.equal(flip[i], keep[i])]
    assert 0 < len(mirrored) < 8                                  # the same windows, only the mirror gone
    for i in range(8):
        assert torch.equal(flip[i], keep[i].flip(2) if i in mirrored else keep[i])
    assert torch.equal(C.augment(clips, 40, torch.Generator().manual_seed(2), hflip=False), keep)


def test_rotation_and_vflip_are_drawn_after_the_older_parameters_within_their_range():
    rots, flips = [], []
    for i in range(300):
        old = A.params_for(3, f"v{i}.avi", 1, (240, 320), (112, 112))
        new = A.params_for(3, f"v{i}.avi", 1, (240, 320), (112, 112), rotate=15.0, vflip=True)
        # crop box, flip and jitter unchanged: a recipe without them stores what it stored before
        assert new.as_array()[:8].tolist() == old.as_array()[:8].tolist()
        assert (old.rotation, old.vflip) == (0.0, False)
        rots.append(new.rotation)
        flips.append(new.vflip)
        assert new == A.params_for(3, f"v{i}.avi", 1, (240, 320), (112, 112), rotate=15.0, vflip=True)
    rots = np.array(rots)
    assert np.abs(rots).max() <= 15 and rots.min() < -10 and rots.max() > 10
    assert abs(rots.std() - 15 / np.sqrt(3)) < 1.5          # uniform in +-15
    assert 0.4 < np.mean(flips) < 0.6
    assert A.params_for(3, "v.avi", 0, (240, 320), (112, 112), rotate=15.0, vflip=True).rotation == 0.0  # clean view


def test_apply_rotates_about_the_centre_counter_clockwise_then_mirrors():
    img = _image()
    # a quarter turn of a square image is exact: counter-clockwise, as displayed
    np.testing.assert_array_equal(A.rotate(img, 90.0), np.rot90(img))
    box = A.centre_crop((48, 48), (48, 48))
    plain = A.apply(img, box, (48, 48))
    np.testing.assert_array_equal(A.apply(img, replace(box, vflip=True), (48, 48)), plain[::-1])
    turned = A.apply(img, replace(box, rotation=12.5), (48, 48))
    np.testing.assert_array_equal(turned, A.rotate(plain, 12.5))
    assert turned.shape == plain.shape and not np.array_equal(turned, plain)
    # mirrored corners, never black ones (black corners would mark the augmented views)
    assert turned[0, 0].max() > 0 or plain[0, 0].max() == 0


def test_recipe_and_training_refuse_rotations_out_of_range():
    from trainers.training.config import E2EConfig

    for bad in (-1.0, 181.0, float("nan")):
        with pytest.raises(ValueError, match="--rotate"):
            Recipe(rotate=bad).validate()
    with pytest.raises(ValueError, match="--vflip"):
        Recipe(vflip="yes").validate()
    with pytest.raises(ValueError, match="--hflip"):
        Recipe(hflip="no").validate()
    for bad in (dict(rotate=180.0), dict(rotate=-5.0), dict(jitter=1.0), dict(vflip=1), dict(hflip=0)):
        with pytest.raises(ValueError, match=f"--{next(iter(bad))}"):
            E2EConfig(model="small-c3d", **bad).check_values()


def test_on_the_fly_augmentation_is_seeded_and_without_options_is_the_crop_and_flip_it_was():
    clips = torch.from_numpy(np.stack([np.stack([_image(s + t) for t in range(4)]) for s in range(6)]))  # (6, 4, 48, 48, 3)
    base = C.random_crop_flip(clips, 40, torch.Generator().manual_seed(1))
    assert torch.equal(C.augment(clips, 40, torch.Generator().manual_seed(1)), base)
    a = C.augment(clips, 40, torch.Generator().manual_seed(1), rotate=15.0, vflip=True, jitter=0.3)
    b = C.augment(clips, 40, torch.Generator().manual_seed(1), rotate=15.0, vflip=True, jitter=0.3)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == base.shape
    assert not torch.equal(a, base)
    # one transform per clip, the same for all its frames: frame 0 and frame 1 of a clip move together
    moved = C.augment(clips[:, :1].repeat(1, 2, 1, 1, 1), 40, torch.Generator().manual_seed(1), rotate=15.0,
                      vflip=True, jitter=0.3)
    assert torch.equal(moved[:, 0], moved[:, 1])


def test_on_the_fly_rotation_and_jitter_are_the_stored_views_transforms():
    img = _image()
    for deg in (15.0, -7.5):
        ref = A.rotate(img, deg).astype(int)
        out = C.rotate_clips(torch.from_numpy(img)[None, None], torch.tensor([deg], dtype=torch.float64))[0, 0].numpy()
        assert np.abs(ref - out).mean() < 1.5                               # bilinear, up to rounding
        assert np.abs(A.rotate(img, -deg).astype(int) - out).mean() > 5     # and in the same direction
    f = np.array([1.2, 0.8, 1.3])
    out = C.jitter_clips(torch.from_numpy(img)[None, None], torch.from_numpy(f)[None])[0, 0].numpy()
    assert np.abs(A._jitter(img, *f).astype(int) - out).max() <= 1
